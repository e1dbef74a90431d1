"""The server's keepalive policy accepts the pings devices send (no GOAWAY ``too_many_pings``).

A real grpc server with the options `splitasr serve` gives it, and a client that pings twice a
second while idle; the control is gRPC's default policy, which takes such pings for abuse.
"""

from __future__ import annotations

import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from splitasr.api.rpc.server import keepalive_options
from splitasr.config import Settings

PING_MS = 500


class PeerHealth(health.HealthServicer):
    """Health checks that note the client's address (a new port: a new connection)."""

    def __init__(self) -> None:
        super().__init__()
        self.peers: list[str] = []

    def Check(self, request, context):
        self.peers.append(context.peer())
        return super().Check(request, context)


def _server(options: list) -> tuple[grpc.Server, int, PeerHealth]:
    server = grpc.server(futures.ThreadPoolExecutor(2), options=options)
    servicer = PeerHealth()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port, servicer


def _dropped_while_idle(port: int, servicer: PeerHealth, idle_s: float = 5.0) -> bool:
    """Whether the connection was closed while the client, between two calls, only pinged: the
    second call failed, or came over a new connection."""
    options = [("grpc.keepalive_time_ms", PING_MS), ("grpc.keepalive_timeout_ms", 2_000),
               ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        time.sleep(idle_s)
        try:
            stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        except grpc.RpcError as exc:  # the call that met the GOAWAY
            return exc.code() == grpc.StatusCode.UNAVAILABLE
    first, second = servicer.peers[-2:]
    return first != second


def test_frequent_client_pings_keep_the_connection():
    server, port, servicer = _server(keepalive_options(Settings(grpc_min_ping_interval_ms=200, _env_file=None)))
    try:
        assert not _dropped_while_idle(port, servicer)
    finally:
        server.stop(0)


def test_the_default_policy_drops_such_a_client():
    server, port, servicer = _server([])  # gRPC's defaults: a ping at most every 5 min without data
    try:
        assert _dropped_while_idle(port, servicer), "control: gRPC's default policy sends GOAWAY too_many_pings"
    finally:
        server.stop(0)
