"""``splitasr serve``: the REST server (OpenAI-compatible transcription) and the gRPC API, in one process."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="run the server", description=__doc__)
    p.add_argument("--host", help="bind address (default 127.0.0.1; env SPLITASR_HOST)")
    p.add_argument("--port", type=int, help="REST port (default 8000; env SPLITASR_PORT)")
    p.add_argument("--grpc-port", type=int, help="gRPC port (default 50051, 0 = off; env SPLITASR_GRPC_PORT)")
    p.add_argument("--backbone", help="tiny.en (default), base, a local directory or a hub id")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--quantize", choices=["none", "int8", "nf4"],
                   help="backbone weights: none (default), int8 or nf4 (env SPLITASR_QUANTIZE)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                   help="backbone weights' dtype: auto (default: float16 on CUDA, float32 on the CPU), or bfloat16 "
                        "(faster on CPUs with AMX / AVX-512 BF16) (env SPLITASR_DTYPE)")
    p.add_argument("--api-keys", dest="api_keys_file", help="file of 'TOKEN TENANT' lines (env SPLITASR_API_KEYS_FILE)")
    p.add_argument("--insecure", dest="allow_insecure_open", action="store_const", const=True,
                   help="allow a non-loopback bind with no API keys (anyone can use the server)")
    p.add_argument("--replicas", type=int, metavar="N",
                   help="serve N engine replicas on Ray Serve with adapter-affine routing: a local Ray cluster, "
                        "or the one RAY_ADDRESS names (default 0 = this one process; env SPLITASR_REPLICAS)")
    p.add_argument("--env-file", type=Path, metavar="FILE",
                   help="also read SPLITASR_* settings from FILE (environment variables win); no .env is read "
                        "unless named here")
    p.set_defaults(func=run)


def overrides(args: argparse.Namespace, *names: str) -> dict:
    """Command-line values that were given, to layer over the environment's settings."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import os

    from ..config import Settings, unknown_settings
    from ..errors import UsageError
    from ..observability import configure_logging
    from ..tenants import ApiKeys, is_loopback

    env_file = getattr(args, "env_file", None)
    if env_file is not None and not env_file.is_file():
        raise UsageError(f"--env-file {env_file}: no such file")
    settings = Settings(_env_file=env_file, **overrides(
        args, "host", "port", "grpc_port", "backbone", "device", "quantize", "dtype", "api_keys_file", "allow_insecure_open",
        "replicas"))
    configure_logging(settings.log_level, settings.log_format)
    for warning in unknown_settings(os.environ):
        logging.getLogger("splitasr").warning("%s", warning)
    keys = ApiKeys.load(settings.api_keys_file, settings.api_keys)
    logging.getLogger("splitasr").info("%s%s", keys.describe(), f" (settings also from {env_file})" if env_file else "")
    if keys.open:
        if not is_loopback(settings.host) and not settings.allow_insecure_open:
            raise UsageError(
                f"refusing to serve {settings.host} with no API keys: anyone could use it. Configure keys "
                "(--api-keys FILE or SPLITASR_API_KEYS_FILE), bind 127.0.0.1, or pass --insecure"
            )
        logging.getLogger("splitasr").warning(
            "no API keys configured: serving one open tenant %r (fine on loopback only)", "default"
        )
    if settings.replicas:
        return _run_replicas(args, settings)
    from ..api.rest.app import create_app  # heavy (torch): only once the settings are known to be valid

    app = create_app(settings, api_keys=keys)
    exit_zero_on_sigterm()
    asyncio.run(_serve(app, settings, keys))
    return 0


def _run_replicas(args: argparse.Namespace, settings) -> int:
    """The same server as N replicas on Ray Serve (:mod:`splitasr.scale`)."""
    from ..errors import UsageError

    try:
        from ..scale.launch import serve_replicas
    except ImportError as exc:
        raise UsageError(f"--replicas needs Ray Serve ({exc.name} is missing): "
                         'pip install -e ".[server,scale]"') from None
    serve_replicas(settings, settings.replicas)
    return 0


def exit_zero_on_sigterm() -> None:
    """A SIGTERM that uvicorn handled (drained, shut down) is a clean stop: exit 0, not 143.

    uvicorn traps SIGTERM while serving, shuts down gracefully, restores the previous handler and
    re-raises the signal; this handler is that previous one. Before uvicorn's trap is in place it
    ends start-up at once, which is also right (nothing is in flight yet).
    """
    import signal

    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _exit)


async def _serve(app, settings, keys) -> None:
    """uvicorn and grpc.aio in one event loop over one engine (the app's). On SIGINT/SIGTERM uvicorn
    begins its shutdown; gRPC stops first (calls and streams in progress get SHUTDOWN_GRACE_SECONDS),
    then REST requests get the same grace and the app's lifespan closes the engine."""
    import uvicorn

    from ..api.rest.protocol import uvicorn_config
    from ..api.rpc.server import create_grpc_server

    grpc_server = (create_grpc_server(settings, app.state.engine, keys, jobs=app.state.jobs)
                   if settings.grpc_port else None)

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            if grpc_server is not None:
                await grpc_server.stop(settings.shutdown_grace_seconds)
            await super().shutdown(sockets)

    server = Server(uvicorn_config(app, settings))
    if grpc_server is not None:
        await grpc_server.start(app.state.engine)
    try:
        await server.serve()
    finally:
        if grpc_server is not None:
            await grpc_server.stop(0)
