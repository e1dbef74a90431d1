"""``splitasr bench``: benchmarks that print one JSON object (compare ratios measured in one run)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="run a benchmark", description=__doc__)
    sub = p.add_subparsers(dest="bench", required=True)
    rtf = sub.add_parser("rtf", help="real-time factor versus faster-whisper on the same weights")
    rtf.add_argument("--backbone", default="tiny.en")
    rtf.add_argument("--audio-dir", type=Path, help="folder of audio files (default: the real-speech fixtures)")
    rtf.add_argument("--repeats", type=int, default=3)
    rtf.add_argument("--threads", type=int, help="CPU threads for both runtimes (default: torch's)")
    rtf.add_argument("--json", action="store_true", help="print only the JSON object")
    rtf.set_defaults(func=run_rtf)
    stream = sub.add_parser("stream", help="gRPC streaming latency, bandwidth and device footprint")
    stream.add_argument("--backbone", default="tiny.en")
    stream.add_argument("--audio-dir", type=Path, help="folder of .flac/.wav files (default: the real-speech fixtures)")
    stream.add_argument("--threads", type=int, help="CPU threads for the backbone (default: torch's)")
    stream.add_argument("--json", action="store_true", help="print only the JSON object")
    stream.set_defaults(func=run_stream)
    live = sub.add_parser("realtime", help="Realtime API (WebSocket) final latency next to gRPC's, page size")
    live.add_argument("--backbone", default="tiny.en")
    live.add_argument("--sessions", type=int, default=8, help="concurrent sessions per transport (default 8)")
    live.add_argument("--rounds", type=int, default=2, help="clips each session streams (default 2)")
    live.add_argument("--repeats", type=int, default=1, help="alternating passes of both transports")
    live.add_argument("--audio-dir", type=Path, help="folder of .flac/.wav files (default: the real-speech fixtures)")
    live.add_argument("--threads", type=int, help="CPU threads for the backbone (default: torch's)")
    live.add_argument("--json", action="store_true", help="print only the JSON object")
    live.set_defaults(func=run_realtime)
    mt = sub.add_parser("multitenant", help="batched distinct adapters vs no adapter vs PEFT set_adapter")
    mt.add_argument("--n", type=int, default=16, help="concurrent requests (and distinct adapters)")
    mt.add_argument("--rank", type=int, default=8)
    mt.add_argument("--targets", default="all", help="adapter target preset")
    mt.add_argument("--backbone", default="tiny.en")
    mt.add_argument("--max-batch-size", type=int, default=16)
    mt.add_argument("--repeats", type=int, default=2, help="alternating rounds of (a) and (b); best kept")
    mt.add_argument("--json", action="store_true", help="print only the JSON object")
    mt.set_defaults(func=run_multitenant)
    q = sub.add_parser("quant", help="WER, memory and speed of fp32 vs int8 vs NF4 backbones, with an adapter")
    q.add_argument("--backbone", action="append", dest="backbones",
                   help="backbone to measure (repeatable; default tiny.en)")
    q.add_argument("--modes", default="none,int8,nf4", help="quantizations, comma-separated (default all three)")
    q.add_argument("--manifest", action="append", default=[], metavar="NAME=PATH",
                   help="JSONL manifest to score, named (repeatable; default real=the real-speech fixtures)")
    q.add_argument("--adapter", action="append", default=[], metavar="BACKBONE=FILE",
                   help="adapter file also scored on that backbone (repeatable)")
    q.add_argument("--adapter-modes", help="quantizations that score the adapter, comma-separated (default: all)")
    q.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    q.add_argument("--batch-size", type=int, default=8)
    q.add_argument("--json", action="store_true", help="print only the JSON object")
    q.set_defaults(func=run_quant)


def _emit(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
    else:
        width = max(map(len, result))
        for k, v in result.items():
            print(f"{k:<{width}}  {v}")


def run_rtf(args: argparse.Namespace) -> int:
    from ..bench import rtf
    from ..config import Settings

    kwargs = {"audio_dir": args.audio_dir} if args.audio_dir else {}
    result = rtf.run(backbone=args.backbone, repeats=args.repeats, threads=args.threads,
                     cache_dir=Settings().backbone_cache_dir, **kwargs)
    _emit(result, args.json)
    return 0


def run_multitenant(args: argparse.Namespace) -> int:
    from ..bench import multitenant
    from ..config import Settings

    result = multitenant.run(n=args.n, rank=args.rank, targets=args.targets, backbone=args.backbone,
                             max_batch_size=args.max_batch_size, repeats=args.repeats,
                             cache_dir=Settings().cache_dir)
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return 0


def run_stream(args: argparse.Namespace) -> int:
    from ..bench import stream
    from ..config import Settings

    kwargs = {"audio_dir": args.audio_dir} if args.audio_dir else {}
    result = stream.run(backbone=args.backbone, threads=args.threads, cache_dir=Settings().cache_dir, **kwargs)
    _emit(result, args.json)
    return 0


def run_realtime(args: argparse.Namespace) -> int:
    from ..bench import realtime
    from ..config import Settings

    kwargs = {"audio_dir": args.audio_dir} if args.audio_dir else {}
    result = realtime.run(backbone=args.backbone, sessions=args.sessions, rounds=args.rounds, repeats=args.repeats,
                          threads=args.threads, cache_dir=Settings().cache_dir, **kwargs)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


def _pairs(values: list[str], flag: str) -> dict[str, Path]:
    from ..errors import InvalidInput

    out = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise InvalidInput(f"{flag} takes NAME=PATH, got {value!r}")
        out[name] = Path(path)
    return out


def run_quant(args: argparse.Namespace) -> int:
    from ..backbones.quantize import check_quantization
    from ..bench import quant
    from ..config import Settings

    modes = [check_quantization(m.strip()) for m in args.modes.split(",") if m.strip()]
    manifests = _pairs(args.manifest, "--manifest") or {"real": quant.REAL_SPEECH_MANIFEST}
    result = quant.run(backbones=args.backbones or ["tiny.en"], modes=modes, manifests=manifests,
                       adapters=_pairs(args.adapter, "--adapter"), cache_dir=Settings().backbone_cache_dir,
                       threads=args.threads, batch_size=args.batch_size,
                       adapter_modes=[check_quantization(m.strip()) for m in args.adapter_modes.split(",")]
                       if args.adapter_modes else None)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0
