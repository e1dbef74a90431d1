"""``splitasr eval``: WER/CER (and JER/MER for Korean) of a backbone on a NeMo-style JSONL manifest."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .transcribe import add_adapter_arg, add_backbone_args, add_decoding_args, attach_adapter, load_backbone


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


def evaluate(backbone, utterances, *, beam: int = 1, language: str | None = None, batch_size: int = 8,
             normalizer: str = "whisper", slot: int = 0) -> dict:
    """Transcribe every utterance and score the corpus; returns the JSON report.

    ``slot``: the adapter slot every utterance uses (0 = the backbone alone).
    """
    from ..audio import SAMPLE_RATE_HZ, decode_audio
    from ..decoding import DecodingOptions, transcribe
    from ..metrics import score_all

    options = DecodingOptions(beam_size=beam, language=language)
    hyps: list[str] = []
    audio_seconds = 0.0
    start = time.perf_counter()
    for i in range(0, len(utterances), batch_size):
        batch = utterances[i : i + batch_size]
        audios = [decode_audio(u.audio_path) for u in batch]
        audio_seconds += sum(len(a) for a in audios) / SAMPLE_RATE_HZ
        hyps += [r.text for r in transcribe(backbone, audios, options, [slot] * len(batch) if slot else None)]
    wall = time.perf_counter() - start
    refs = [u.text for u in utterances]
    langs = {u.lang for u in utterances}
    if normalizer == "whisper" and langs <= {"en"}:
        from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

        norm = EnglishTextNormalizer({})
        refs, hyps_scored = [norm(r) for r in refs], [norm(h) for h in hyps]
    else:
        hyps_scored = hyps
    scores = score_all(refs, hyps_scored)
    report = {
        "backbone": backbone.name,
        "utterances": len(utterances),
        "audio_seconds": round(audio_seconds, 2),
        "wall_seconds": round(wall, 2),
        "rtf": round(wall / audio_seconds, 4) if audio_seconds else None,
        "beam": beam,
        "normalizer": normalizer,
        **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in scores.items()},
    }
    report["hypotheses"] = [{"ref": u.text, "hyp": h, "audio": str(u.audio_path)} for u, h in zip(utterances, hyps)]
    return report


def run(args: argparse.Namespace) -> int:
    from ..training.manifest import load_manifest

    utterances = load_manifest(args.manifest)[: args.limit]
    backbone = load_backbone(args)
    adapter = attach_adapter(backbone, args.adapter) if args.adapter else None
    if args.rescorer:
        return _print(_rescored(args, backbone, utterances, adapter), args)
    language = args.language
    langs = {u.lang for u in utterances}
    if language is None and backbone.multilingual and len(langs) == 1:
        language = next(iter(langs))  # the manifest says which language it is: no need to detect
    report = evaluate(backbone, utterances, beam=args.beam, language=language,
                      batch_size=args.batch_size, normalizer=args.normalizer, slot=1 if adapter else 0)
    if adapter:
        report["adapter"] = adapter
    return _print(report, args)


def _rescored(args: argparse.Namespace, backbone, utterances, adapter: dict | None) -> dict:
    """WER after rescoring each N-best list (``wer``), with the first pass and the oracle beside it."""
    from .rescorer import rescored_report

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
