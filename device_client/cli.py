"""splitasr-device: the device side of SplitASR on the command line.

    splitasr-device train --manifest me.jsonl --out me.safetensors   # the server trains it
    splitasr-device --server HOST:PORT enroll --adapter me.safetensors
    splitasr-device transcribe talk.wav
    splitasr-device stream talk.wav --realtime      # or: stream --mic
    splitasr-device status

Settings: flags, then ``SPLITASR_DEVICE_*`` variables (SERVER, TOKEN, TLS, ROOT_CERT, ADAPTER,
CONFIG), then the config file (see ``splitasr_device.config``). With an adapter configured,
``transcribe`` and ``stream`` enroll it first (uploading only when the server lacks it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
from pathlib import Path

import grpc

from .audio import microphone
from .client import SplitASRClient
from .config import DeviceConfig, load_config
from .errors import DeviceError, UsageError
from .opus import DEFAULT_BITRATE
from .progress import ProgressBar
from .results import EnrollResult, StreamUpdate


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("splitasr")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def _plain(text: str) -> str:
    """Help text without reStructuredText markup (``x`` reads as x)."""
    return re.sub(r":[a-z]+:`", "`", text).replace("`", "")


class _Parser(argparse.ArgumentParser):
    def format_help(self) -> str:
        return _plain(super().format_help())


def _add_globals(parser: argparse.ArgumentParser, after_command: bool) -> None:
    """The connection and output options; after the command their defaults are SUPPRESS, so an
    option given there overrides the one before it and an absent one leaves it alone."""
    default = {"default": argparse.SUPPRESS} if after_command else {}
    parser.add_argument("--server", help="HOST:PORT of the gRPC API (default 127.0.0.1:50051)", **default)
    parser.add_argument("--token", help="API key (env SPLITASR_DEVICE_TOKEN)", **default)
    parser.add_argument("--tls", action="store_const", const=True, help="connect with TLS", **default)
    parser.add_argument("--root-cert", type=Path, help="PEM CA certificate for TLS (implies --tls)", **default)
    parser.add_argument("--adapter", type=Path, help="this device's adapter file (.safetensors)", **default)
    parser.add_argument("--config", type=Path, help="INI config file (default ~/.config/splitasr/device.ini)",
                        **default)
    parser.add_argument("--json", action="store_true", help="print JSON", **default)
    parser.add_argument("-v", "--verbose", action="store_true", help="log retries and reconnects", **default)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="splitasr-device", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-V", "--version", action="version", version=f"splitasr-device {_version()}")
    _add_globals(parser, after_command=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # the same options also after the command: splitasr-device transcribe talk.wav --server HOST:PORT
    common = argparse.ArgumentParser(add_help=False)
    _add_globals(common, after_command=True)

    train = sub.add_parser("train", parents=[common], help="have the server train this device's adapter from "
                                                           "recordings (then enroll it)")
    train.add_argument("--manifest", type=Path, required=True,
                       help="NeMo JSONL: one line per recording, audio_filepath (relative to the manifest) and text")
    train.add_argument("--out", type=Path, help="adapter file to write (default: --adapter / SPLITASR_DEVICE_ADAPTER)")
    train.add_argument("--kind", default="", help="lora (default), glora or saml")
    train.add_argument("--rank", type=int, default=0, help="LoRA rank (default: the server's, 8)")
    train.add_argument("--targets", default="", help="layers to adapt: decoder (default), all, attn, ...")
    train.add_argument("--epochs", type=int, default=0, help="most epochs (default 10; stops early on the dev share)")
    train.add_argument("--dev", type=float, help="share held out for early stopping (default 0.2; 0 = none)")
    train.add_argument("--seed", type=int, help="seed of the dev draw and the initialisation (default 0)")
    train.add_argument("--name", help="also keep the adapter on the server under this name (default: the server "
                                      "keeps nothing)")
    train.add_argument("--quiet", action="store_true", help="no progress display")

    enroll = sub.add_parser("enroll", parents=[common], help="make sure the server holds this device's adapter")
    enroll.add_argument("--name", help="adapter name on the server (default: from the file name)")

    for name, help_text in (("transcribe", "transcribe a whole file"), ("stream", "stream audio, print live text")):
        p = sub.add_parser(name, parents=[common], help=help_text)
        p.add_argument("--language", help="ISO language code (multilingual backbones)")
        p.add_argument("--no-adapter", action="store_true", help="use the plain backbone")
        if name == "transcribe":
            p.add_argument("file", type=Path)
            p.add_argument("--vad-filter", action=argparse.BooleanOptionalAction, default=None,
                           help="drop long silences before decoding (default: the server's setting)")
        else:
            p.add_argument("file", type=Path, nargs="?")
            p.add_argument("--mic", action="store_true", help="stream from the microphone (needs sounddevice)")
            p.add_argument("--seconds", type=float, help="stop the microphone after this long")
            p.add_argument("--realtime", action="store_true", help="send a file at the pace of speech")
            p.add_argument("--no-interim", action="store_true", help="final results only")
            p.add_argument("--codec", choices=("linear16", "opus"), default="linear16",
                           help="how audio travels: raw 16-bit PCM (default) or Ogg Opus, about a tenth of "
                                "the bytes (needs: pip install \"splitasr[opus]\")")
            p.add_argument("--opus-bitrate", type=int, default=DEFAULT_BITRATE, metavar="BIT/S",
                           help=f"Opus target bitrate in bit/s, 6000..256000 (default {DEFAULT_BITRATE})")

    sub.add_parser("status", parents=[common], help="server health and whether this device's adapter is enrolled")
    sub.add_parser("list", parents=[common], help="list your adapters on the server")
    delete = sub.add_parser("delete", parents=[common], help="delete one of your adapters")
    delete.add_argument("name")
    return parser


def _print(args: argparse.Namespace, value: object, text: str) -> None:
    if args.json:
        print(json.dumps(dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value, default=str))
    else:
        print(text)


def _enrolled(client: SplitASRClient, config: DeviceConfig, args: argparse.Namespace) -> EnrollResult | None:
    if getattr(args, "no_adapter", False) or config.adapter is None:
        return None
    return client.enroll(config.adapter)


def _show_update(args: argparse.Namespace, update: StreamUpdate) -> None:
    if args.json:
        print(json.dumps(dataclasses.asdict(update)), flush=True)
    elif update.is_final:
        clear = "\r\x1b[K" if sys.stderr.isatty() else ""  # wipe the interim line shown on stderr
        print(f"{clear}[{update.start:7.2f} -> {update.end:7.2f}] {update.text}", flush=True)
    elif sys.stderr.isatty():
        print(f"\r\x1b[K... {update.text}", end="", file=sys.stderr, flush=True)


def _train(client: SplitASRClient, config: DeviceConfig, args: argparse.Namespace) -> None:
    out = args.out or config.adapter
    if out is None:
        raise DeviceError("train needs --out FILE (or --adapter / SPLITASR_DEVICE_ADAPTER)")
    bar = None if args.quiet or args.json else ProgressBar()
    try:
        result = client.train(args.manifest, out, kind=args.kind, rank=args.rank, targets=args.targets,
                              epochs=args.epochs, dev=args.dev, seed=args.seed, name=args.name, on_event=bar)
    finally:
        if bar is not None:
            bar.close()
    dev = (f"; dev {result.dev_metric.upper()} {result.dev_before:.3f} -> {result.dev_after:.3f}"
           if result.dev_before is not None and result.dev_after is not None else "")
    kept = f", stored on the server as {result.stored_as}" if result.stored_as else ""
    _print(args, result, f"wrote {result.path} ({result.kind}, {result.size} bytes, sha256 {result.sha256}){kept}"
                         f"{dev}; in {result.seconds:.0f} s")


def run(args: argparse.Namespace, config: DeviceConfig) -> int:
    with SplitASRClient(config.server, config.token, config.tls, config.root_cert) as client:
        if args.command == "train":
            _train(client, config, args)
        elif args.command == "enroll":
            if config.adapter is None:
                raise UsageError("enroll needs --adapter FILE (or SPLITASR_DEVICE_ADAPTER)")
            result = client.enroll(config.adapter, args.name)
            done = f"uploaded {result.uploaded_bytes} bytes" if result.uploaded_bytes else "already on the server"
            _print(args, result, f"enrolled {result.name} (sha256 {result.sha256}): {done}")
        elif args.command == "transcribe":
            result = client.transcribe(args.file, _enrolled(client, config, args), args.language,
                                       vad_filter=args.vad_filter)
            _print(args, result, result.text)
        elif args.command == "stream":
            if args.mic == (args.file is not None):
                raise UsageError("stream needs a FILE or --mic (one of them)")
            source = microphone(seconds=args.seconds) if args.mic else args.file
            for update in client.stream(source, realtime=args.realtime, adapter=_enrolled(client, config, args),
                                        language=args.language, interim_results=not args.no_interim,
                                        codec=args.codec, opus_bitrate=args.opus_bitrate):
                _show_update(args, update)
        elif args.command == "status":
            status = client.status(config.adapter)
            enrolled = (f"enrolled as {status.enrolled_as.name}" if status.enrolled_as
                        else "not enrolled" if status.adapter_sha256 else "no adapter configured")
            _print(args, status, f"server {status.server}: {status.health}; adapter: {enrolled}")
        elif args.command == "list":
            adapters = client.list_adapters()
            _print(args, [dataclasses.asdict(a) for a in adapters],
                   "\n".join(f"{a.name}\t{a.kind}\t{a.size}\t{a.sha256}" for a in adapters))
        elif args.command == "delete":
            _print(args, client.delete_adapter(args.name), f"deleted {args.name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_config({"server": args.server, "token": args.token, "tls": args.tls,
                              "root_cert": args.root_cert, "adapter": args.adapter}, config_file=args.config)
        return run(args, config)
    except DeviceError as exc:  # UsageError: 2, the command line or settings; else 1, the work failed
        print(f"splitasr-device: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except grpc.RpcError as exc:
        print(f"splitasr-device: error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
