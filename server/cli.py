"""The ``splitasr`` command: one sub-command per module, each registering its own parser.

A command module exposes ``add_parser(subparsers)`` which adds its parser and sets
``func=callable(args) -> int``. Imports are lazy so ``splitasr --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="splitasr",
        description="Personalized speech recognition: one frozen backbone, one small adapter per user.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from .errors import SplitASRError

    try:
        return int(args.func(args) or 0)
    except SplitASRError as exc:
        print(f"splitasr {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        message = _settings_problem(exc)
        if message is None:
            raise
        print(f"splitasr {args.command}: error: {message}", file=sys.stderr)
        return 2


def _settings_problem(exc: Exception) -> str | None:
    """The message for invalid ``SPLITASR_*`` settings (pydantic's ValidationError of Settings), else None."""
    from pydantic import ValidationError

    from .config import Settings, describe_invalid_settings

    if isinstance(exc, ValidationError) and exc.title == Settings.__name__:
        return describe_invalid_settings(exc)
    return None


if __name__ == "__main__":
    sys.exit(main())
