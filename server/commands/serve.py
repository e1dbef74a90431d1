"""``splitasr serve``: the REST server (OpenAI-compatible transcription)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="run the server", description=__doc__)
    p.add_argument("--host", help="bind address (default 127.0.0.1; env SPLITASR_HOST)")
    p.add_argument("--port", type=int, help="REST port (default 8000; env SPLITASR_PORT)")
    p.add_argument("--backbone", help="tiny.en (default), base, a local directory or a hub id")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.set_defaults(func=run)


def overrides(args: argparse.Namespace, *names: str) -> dict:
    """Command-line values that were given, to layer over the environment's settings."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from ..api.rest.app import create_app
    from ..config import Settings

    settings = Settings(**overrides(args, "host", "port", "backbone", "device"))
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)
    return 0
