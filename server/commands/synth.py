"""splitasr synth: render synthetic personal speaker datasets (audio + NeMo JSONL manifests)."""

from __future__ import annotations

import argparse
import json
import sys

EPILOG = """\
examples:
  splitasr synth --list
  splitasr synth --out data/speakers                      # every built-in speaker, 80/10/10 split
  splitasr synth --out data/speakers --speaker cardio_nurse --train 60 --dev 10 --test 20 --seed 1
  splitasr synth --out data/mine --spec my_speaker.json   # a custom speaker (same fields as speakers.json)

needs the system programs espeak-ng, sox (and flite for flite voices):
  sudo apt-get install espeak-ng sox flite   (or scripts/install-system-deps.sh)
"""


def _size(text: str) -> int | float:
    """A split size: an integer count of sentences, or a fraction such as 0.8."""
    try:
        value: int | float = float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count or a fraction: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "synth",
        help="synthesize personal speaker datasets (espeak-ng/flite + sox) with JSONL manifests",
        description=(
            "Render the sentences of synthetic speakers (domain vocabulary, distinct voices and "
            "acoustic chains) to 16 kHz mono audio and write train/dev/test JSONL manifests. "
            "Reruns reuse files already rendered with the same settings."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", metavar="DIR", help="output folder (one sub-folder per speaker)")
    p.add_argument(
        "--speaker", metavar="ID", action="append", default=None,
        help="built-in speaker id (repeatable; default: all built-in speakers, or none when --spec is given)",
    )  # fmt: skip
    p.add_argument(
        "--spec", metavar="FILE", action="append", default=None,
        help="JSON file with custom speaker(s), same fields as the built-in speakers.json (repeatable)",
    )  # fmt: skip
    p.add_argument("--train", type=_size, metavar="N", help="train size: a count, or a fraction like 0.8")
    p.add_argument("--dev", type=_size, metavar="N", help="dev size: a count, or a fraction like 0.1")
    p.add_argument("--test", type=_size, metavar="N", help="test size: a count, or a fraction like 0.1")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0): same seed, same split")
    p.add_argument("--workers", type=int, default=2, help="parallel renders (default 2)")
    p.add_argument("--format", choices=("flac", "wav"), default="flac", help="audio format (default flac)")
    p.add_argument("--list", action="store_true", help="list the speakers and exit")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..datasets import synth
    from ..errors import UsageError

    specs = []
    for path in args.spec or ():
        specs.extend(synth.load_speaker_specs(path))
    if args.speaker or not specs:
        ids = args.speaker or [s.id for s in synth.list_speakers()]
        specs = [synth.get_speaker(i) for i in ids] + specs

    if args.list:
        rows = [s.summary() for s in specs]
        if args.json:
            print(json.dumps(rows, indent=2, ensure_ascii=False))
            return 0
        for r in rows:
            noise = "none" if r["noise"] == "none" else f"{r['noise']} @ {r['snr_db']:g} dB SNR"
            print(f"{r['id']}  ({r['language']}, {r['sentences']} sentences)  {r['description']}")
            print(f"    {r['engine']} voice={r['voice']} speed={r['speed']} wpm pitch={r['pitch']}")
            print(f"    room: {r['effects'] or '-'} | noise: {noise} | channel: {r['channel'] or '-'}")
        return 0

    if not args.out:
        raise UsageError("--out DIR is required (or use --list)")
    given = [args.train, args.dev, args.test]
    if all(v is None for v in given):
        splits: tuple[int | float, ...] = synth.DEFAULT_SPLITS
    elif any(v is None for v in given):
        raise UsageError("give all three of --train, --dev and --test, or none of them")
    else:
        splits = tuple(given)  # type: ignore[arg-type]

    result = synth.synthesize_all(
        args.out, speakers=specs, splits=splits, seed=args.seed, workers=args.workers,
        audio_format=args.format, quiet=args.json,
    )  # fmt: skip
    if args.json:
        print(json.dumps({k: {s: str(p) for s, p in v.items()} for k, v in result.items()}, indent=2))
        return 0
    from ..datasets.manifest import load_manifest

    print(f"{'speaker':<20} {'split':<6} {'utts':>5} {'minutes':>8}  manifest")
    for sid, manifests in result.items():
        for split, path in manifests.items():
            utts = load_manifest(path, check_files=False)
            minutes = sum(u.duration for u in utts) / 60
            print(f"{sid:<20} {split:<6} {len(utts):>5} {minutes:>8.2f}  {path}")
    sys.stdout.flush()
    return 0
