"""The standard gRPC health check (grpc.health.v1), without the grpcio-health-checking package.

The device install stays grpcio + protobuf; the two messages it needs have one field each, so they
are written and read here in protobuf's wire format (field 1: a string out, an enum back).
"""

from __future__ import annotations

import grpc

CHECK_METHOD = "/grpc.health.v1.Health/Check"
# grpc.health.v1.HealthCheckResponse.ServingStatus
STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def encode_request(service: str) -> bytes:
    """HealthCheckRequest{service}: field 1, wire type 2 (length-delimited)."""
    name = service.encode()
    return (b"\x0a" + _varint(len(name)) + name) if name else b""


def decode_status(data: bytes) -> str:
    """HealthCheckResponse -> status name; field 1 is a varint (wire type 0), 0 when absent."""
    if not data:
        return STATUS_NAMES[0]
    if data[0] != 0x08:
        raise ValueError("unexpected health response")
    value, shift = 0, 0
    for byte in data[1:]:
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return STATUS_NAMES.get(value, f"STATUS_{value}")


def check(channel: grpc.Channel, service: str = "", timeout: float = 5.0, metadata=None) -> str:
    """The serving status of ``service`` ("" = the whole server): SERVING, NOT_SERVING ..."""
    call = channel.unary_unary(CHECK_METHOD, request_serializer=encode_request, response_deserializer=decode_status)
    return call(service, timeout=timeout, metadata=metadata)
