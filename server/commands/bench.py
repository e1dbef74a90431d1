"""splitasr bench: benchmarks that print one JSON object (compare ratios measured in one run)."""

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
    rtf.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                     help="cuda: float16 with and without CUDA graphs and int8, against CTranslate2's "
                          "float16 and int8_float16")
    rtf.add_argument("--json", action="store_true", help="print only the JSON object")
    rtf.set_defaults(func=run_rtf)
    stream = sub.add_parser("stream", help="gRPC streaming latency, bandwidth and device footprint")
    stream.add_argument("--backbone", default="tiny.en")
    stream.add_argument("--audio-dir", type=Path, help="folder of .flac/.wav files (default: the real-speech fixtures)")
    stream.add_argument("--streams", default="8",
                        help="concurrent streams, or a comma-separated list of counts run one after another (default 8)")
    stream.add_argument("--codec", default="linear16",
                        help="linear16, opus, or both comma-separated (linear16,opus): each pass runs per codec")
    stream.add_argument("--opus-bitrate", type=int, help="bit/s for --codec opus (default: the device's, 24000)")
    stream.add_argument("--no-wer", action="store_true",
                        help="skip the WER pass (each fixture streamed alone per codec, against Recognize)")
    stream.add_argument("--no-rss", action="store_true", help="skip the device client's RSS measurement")
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
    mt.add_argument("--max-batch-rows", type=int, default=16)
    mt.add_argument("--repeats", type=int, default=2, help="alternating rounds of (a) and (b); best kept")
    mt.add_argument("--device", default="cpu", help="torch device of the server and the PEFT baseline (cpu, cuda)")
    mt.add_argument("--json", action="store_true", help="print only the JSON object")
    mt.set_defaults(func=run_multitenant)
    arr = sub.add_parser("arrivals", help="open-loop Poisson load: static vs continuous batching latency")
    arr.add_argument("--backbone", default="tiny.en")
    arr.add_argument("--rates", default="0.5,1,2", help="arrival rates in requests per second, comma-separated")
    arr.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals per rate and mode")
    arr.add_argument("--long-seconds", type=float, default=90.0, help="length of the long files")
    arr.add_argument("--threads", type=int, help="CPU threads for the backbone (default: torch's)")
    arr.add_argument("--json", action="store_true", help="print only the JSON object")
    arr.set_defaults(func=run_arrivals)
    routing = sub.add_parser("routing", help="adapter-affine (Ray Serve multiplexed) vs round-robin routing, "
                                             "simulated replicas: hit rate, cold loads per 1000 requests")
    routing.add_argument("--tenants", type=int, default=200)
    routing.add_argument("--replicas", type=int, default=4)
    routing.add_argument("--slots", type=int, default=16, help="adapter slots per replica")
    routing.add_argument("--requests", type=int, default=20000)
    routing.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of the tenant mix")
    routing.add_argument("--load", type=float, default=0.7, help="offered load as a share of capacity")
    routing.add_argument("--max-ongoing", type=int, default=64,
                         help="requests one replica takes at once (its queue; default 64, SPLITASR_MAX_QUEUED_REQUESTS)")
    routing.add_argument("--seed", type=int, default=0)
    routing.set_defaults(func=run_routing)
    vad = sub.add_parser("vad", help="the VAD filter: WER on real speech, time on a mostly silent hour")
    vad.add_argument("--backbone", default="tiny.en")
    vad.add_argument("--hours", type=float, default=1.0, help="length of the mostly silent file (default 1)")
    vad.add_argument("--pad-seconds", type=float, default=10.0,
                     help="silence added on both sides of each utterance for the padded WER (default 10)")
    vad.add_argument("--noise-dbfs", type=float, default=-70.0, help="white noise level of the silence (default -70)")
    vad.add_argument("--threads", type=int, help="CPU threads for the backbone (default: torch's)")
    vad.add_argument("--json", action="store_true", help="print only the JSON object")
    vad.set_defaults(func=run_vad)
    enroll = sub.add_parser("enroll", help="a training job from a synthetic speaker's recordings: time, WER, "
                                           "worker memory, serving latency meanwhile")
    enroll.add_argument("--speaker", default="cardio_nurse", help="built-in synthetic speaker (splitasr synth --list)")
    enroll.add_argument("--utterances", type=int, default=40, help="utterances uploaded to the job (default 40)")
    enroll.add_argument("--test", type=int, default=35, help="held-out sentences scored (default 35)")
    enroll.add_argument("--targets", action="append", help="target preset per job (repeatable; default decoder, all)")
    enroll.add_argument("--epochs", type=int, default=10, help="most epochs per job (default 10, early stopping)")
    enroll.add_argument("--threads", type=int, default=1, help="SPLITASR_TRAIN_THREADS of the worker (default 1)")
    enroll.add_argument("--backbone", default="tiny.en")
    enroll.add_argument("--json", action="store_true", help="print only the JSON object")
    enroll.set_defaults(func=run_enroll)
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
                     cache_dir=Settings().backbone_cache_dir, quiet=args.json, device=args.device, **kwargs)
    _emit(result, args.json)
    return 0


def run_multitenant(args: argparse.Namespace) -> int:
    from ..bench import multitenant
    from ..config import Settings

    result = multitenant.run(n=args.n, rank=args.rank, targets=args.targets, backbone=args.backbone,
                             max_batch_rows=args.max_batch_rows, repeats=args.repeats,
                             cache_dir=Settings().cache_dir, quiet=args.json, device=args.device)
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return 0


def run_arrivals(args: argparse.Namespace) -> int:
    from ..bench import arrivals
    from ..config import Settings

    rates = tuple(float(r) for r in args.rates.split(",") if r.strip())
    result = arrivals.run(rates=rates, duration=args.duration, long_seconds=args.long_seconds,
                          backbone=args.backbone, threads=args.threads, cache_dir=Settings().cache_dir)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


def run_stream(args: argparse.Namespace) -> int:
    from ..bench import stream
    from ..config import Settings

    kwargs = {"audio_dir": args.audio_dir} if args.audio_dir else {}
    if args.opus_bitrate:
        kwargs["opus_bitrate"] = args.opus_bitrate
    try:
        counts = tuple(int(n) for n in args.streams.split(",") if n.strip())
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise SystemExit(f"--streams must be positive counts such as 8 or 1,8; got {args.streams!r}")
    codecs = tuple(c.strip() for c in args.codec.split(",") if c.strip())
    if not codecs or set(codecs) - {"linear16", "opus"}:
        raise SystemExit(f"--codec must be linear16, opus or linear16,opus; got {args.codec!r}")
    result = stream.run(backbone=args.backbone, streams=counts, threads=args.threads, cache_dir=Settings().cache_dir,
                        rss=not args.no_rss, codecs=codecs, wer=not args.no_wer, **kwargs)
    _emit(result, args.json)
    return 0


def run_vad(args: argparse.Namespace) -> int:
    from ..bench import vad
    from ..config import Settings

    result = vad.run(backbone=args.backbone, cache_dir=Settings().backbone_cache_dir, hours=args.hours,
                     pad_seconds=args.pad_seconds, noise_dbfs=args.noise_dbfs, threads=args.threads, quiet=args.json)
    _emit(result, args.json)
    return 0


def run_enroll(args: argparse.Namespace) -> int:
    from ..bench import enroll
    from ..config import Settings

    result = enroll.run(speaker=args.speaker, utterances=args.utterances, test=args.test, targets=args.targets,
                        epochs=args.epochs, threads=args.threads, backbone=args.backbone,
                        cache_dir=Settings().cache_dir)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
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
    from ..errors import UsageError

    out = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"{flag} takes NAME=PATH, got {value!r}")
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
                       threads=args.threads, batch_size=args.batch_size, quiet=args.json,
                       adapter_modes=[check_quantization(m.strip()) for m in args.adapter_modes.split(",")]
                       if args.adapter_modes else None)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


def run_routing(args: argparse.Namespace) -> int:
    from ..bench.routing import run

    print(json.dumps(run(tenants=args.tenants, replicas=args.replicas, slots=args.slots, requests=args.requests,
                         zipf_s=args.zipf, load=args.load, max_ongoing=args.max_ongoing, seed=args.seed),
                     indent=1))
    return 0
