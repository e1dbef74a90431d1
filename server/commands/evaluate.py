"""splitasr eval: WER/CER (and JER/MER for Korean) of a backbone on a NeMo-style JSONL manifest."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..evaluation import attach_adapter, evaluate, rescored_report
from .transcribe import add_adapter_arg, add_backbone_args, add_decoding_args, load_backbone


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="score transcripts against a manifest", description=__doc__)
    p.add_argument("--manifest", type=Path, required=True, help="JSONL: audio_filepath, text[, duration, lang]")
    add_backbone_args(p)
    add_adapter_arg(p)
    add_decoding_args(p)
    p.add_argument("--normalizer", choices=["whisper", "basic"], default="whisper",
                   help="whisper: Whisper's English normalizer (numbers, spellings) for English; "
                        "basic: case, punctuation and Unicode only")
    p.add_argument("--limit", type=int, help="score only the first N utterances")
    p.add_argument("--rescorer", type=Path,
                   help="rescore each utterance's N-best list with this rescorer (from `splitasr rescorer train`)")
    p.add_argument("--nbest", type=int, default=4, help="with --rescorer: hypotheses per utterance (default 4)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--details", action="store_true", help="include every utterance's hypothesis")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..datasets.manifest import load_manifest

    utterances = load_manifest(args.manifest)[: args.limit]
    backbone = load_backbone(args)
    adapter = attach_adapter(backbone, args.adapter) if args.adapter else None
    if args.rescorer:
        return _print(_rescored(args, backbone, utterances, adapter), args)
    language = args.language
    langs = {u.lang for u in utterances}
    if language is None and backbone.multilingual and len(langs) == 1:
        language = next(iter(langs))  # the manifest says which language it is: no need to detect
    report = evaluate(backbone, utterances, beam=args.beam, language=language, batch_size=args.batch_size,
                      normalizer=args.normalizer, slot=1 if adapter else 0, audio_ctx=args.audio_ctx,
                      quiet=args.json)
    if adapter:
        report["adapter"] = adapter
    return _print(report, args)


def _rescored(args: argparse.Namespace, backbone, utterances, adapter: dict | None) -> dict:
    """WER after rescoring each N-best list (``wer``), with the first pass and the oracle beside it."""

    report = {"backbone": backbone.name, "utterances": len(utterances), "rescorer": str(args.rescorer),
              **rescored_report(backbone, utterances, args.rescorer, args.nbest, 1 if adapter else 0)}
    report["wer"] = report["wer_rescored"]
    if adapter:
        report["adapter"] = adapter
    return report


def _print(report: dict, args: argparse.Namespace) -> int:
    if not args.details:
        report.pop("hypotheses")
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
        return 0
    for k, v in report.items():
        if k != "hypotheses":
            print(f"{k:<16} {v}")
    for row in report.get("hypotheses", []):
        print(f"REF: {row['ref']}\nHYP: {row.get('hyp', row.get('rescored'))}\n")
    return 0
