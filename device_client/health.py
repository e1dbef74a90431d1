"""The standard gRPC health check (grpc.health.v1), with the grpcio-health-checking package's stubs.

That package needs only grpcio and protobuf, which the device install has anyway.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(channel: grpc.Channel, service: str = "", timeout: float = 5.0, metadata=None) -> str:
    """The serving status of ``service`` ("" = the whole server): SERVING, NOT_SERVING ..."""
    stub = health_pb2_grpc.HealthStub(channel)
    response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout, metadata=metadata)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
