"""``splitasr rescorer``: train and evaluate a LoRB N-best rescorer (BERT + LoRA, MWER training).

``train`` decodes the N-best lists of a manifest with the backbone (and optionally a personal adapter),
caches them as JSON next to ``--out`` and trains the rescorer's LoRA and head on them; ``--text-file``
trains from domain sentences alone. ``eval`` scores a manifest's first-pass and rescored WER.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..evaluation import attach_adapter, rescored_report
from .transcribe import add_backbone_args, load_backbone

EPILOG = """examples:
  splitasr rescorer train --manifest me/train.jsonl --dev-manifest me/dev.jsonl --out me-rescorer.safetensors
  splitasr rescorer train --manifest me/train.jsonl --adapter me.safetensors --nbest 4 --out me-rescorer.safetensors
  splitasr rescorer train --text-file my-domain.txt --dev-manifest me/dev.jsonl --out me-rescorer.safetensors
  splitasr rescorer eval --manifest me/test.jsonl --rescorer me-rescorer.safetensors --json
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("rescorer", help="train / evaluate an N-best rescorer", description=__doc__,
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="train a rescorer on N-best lists or domain text")
    t.add_argument("--manifest", type=Path, action="append", default=[], help="training JSONL manifest (repeatable)")
    t.add_argument("--text-file", type=Path, help="domain sentences, one per line: synthesize competing hypotheses")
    t.add_argument("--dev-manifest", type=Path, action="append", default=[],
                   help="dev JSONL manifest: early stopping and the fusion weights (λ, β) are tuned on it")
    t.add_argument("--out", type=Path, required=True, help="rescorer file to write (.safetensors)")
    _common(t)
    t.add_argument("--rank", type=int, default=4, help="LoRA rank (default 4)")
    t.add_argument("--alpha", type=float, help="LoRA alpha (default 2 × rank)")
    t.add_argument("--targets", default="attn,ffn", help="encoder linears: attn, ffn, qv presets or globs (default attn,ffn)")
    t.add_argument("--pooling", choices=["mean", "cls"], default="mean", help="pooled output the head reads")
    t.add_argument("--epochs", type=int, default=8)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--lists-per-step", type=int, default=8, help="N-best lists per training step (default 8)")
    t.add_argument("--correlation-weight", type=float, default=0.1, help="weight of the correlation regularizer")
    t.add_argument("--patience", type=int, default=3, help="epochs without dev improvement before stopping")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--compare-full", type=int, default=0, metavar="STEPS",
                   help="also time STEPS steps of LoRA and of full fine-tuning (fresh processes) for the summary")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=run_train)
    e = sub.add_parser("eval", help="first-pass versus rescored WER on a manifest")
    e.add_argument("--manifest", type=Path, required=True)
    e.add_argument("--rescorer", type=Path, required=True, help="rescorer file (.safetensors)")
    e.add_argument("--cache", type=Path, help="N-best cache JSON (default: none)")
    e.add_argument("--details", action="store_true", help="include every utterance's choice")
    _common(e)
    e.set_defaults(func=run_eval)


def _common(p: argparse.ArgumentParser) -> None:
    add_backbone_args(p)
    p.add_argument("--adapter", type=Path, help="personal ASR adapter used to decode the N-best lists")
    p.add_argument("--nbest", type=int, default=4, help="hypotheses per utterance (default 4)")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _lists(args: argparse.Namespace, backbone, manifests: list[Path], cache: Path | None, slot: int) -> tuple[list, bool]:
    from ..datasets.manifest import load_manifest
    from ..rescoring.data import cache_key, cached_lists, decode_lists

    utterances = [u for m in manifests for u in load_manifest(m)]
    if not utterances:
        return [], False
    adapter_sha = _sha256(args.adapter)
    produce = lambda: decode_lists(backbone, utterances, args.nbest, slot=slot, quiet=args.json)
    if cache is None:
        return produce(), False
    return cached_lists(cache, cache_key(backbone.name, adapter_sha, args.nbest, utterances), produce)


def _sha256(path: Path | None) -> str | None:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest() if path else None


def _setup(args: argparse.Namespace):
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    backbone = load_backbone(args)
    slot = 1 if args.adapter and attach_adapter(backbone, args.adapter) else 0
    return backbone, slot


def run_train(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..rescoring.encoder import load_encoder
    from ..rescoring.fileformat import save_rescorer
    from ..rescoring.textonly import read_sentences, synthesize_lists
    from ..rescoring.train import RescorerTrainConfig, train_rescorer

    if not args.manifest and not args.text_file:
        raise UsageError("give --manifest (audio with references) and/or --text-file (domain sentences)")
    config = RescorerTrainConfig(rank=args.rank, alpha=args.alpha or 2.0 * args.rank, targets=args.targets,
                                 pooling=args.pooling, epochs=args.epochs, lr=args.lr,
                                 lists_per_step=args.lists_per_step, correlation_weight=args.correlation_weight,
                                 seed=args.seed, patience=args.patience, quiet=args.quiet or args.json)
    backbone, slot = _setup(args) if (args.manifest or args.dev_manifest) else (None, 0)
    stem = args.out.with_suffix("")
    train, cached = _lists(args, backbone, args.manifest, Path(f"{stem}.nbest-train.json"), slot) \
        if args.manifest else ([], False)
    dev, dev_cached = _lists(args, backbone, args.dev_manifest, Path(f"{stem}.nbest-dev.json"), slot) \
        if args.dev_manifest else ([], False)
    encoder = load_encoder()
    if args.text_file:
        train += synthesize_lists(read_sentences(args.text_file), encoder.tokenizer.get_vocab(), args.nbest, args.seed)
    result = train_rescorer(encoder, train, dev, config, asr_backbone=backbone.name if backbone else "")
    path = save_rescorer(args.out, result.rescorer)
    report = {"out": str(path), "file_bytes": path.stat().st_size, "encoder": encoder.name,
              "nbest_cached": {"train": cached, "dev": dev_cached},
              "lora_parameters": result.rescorer.lora.num_parameters(),
              "rescorer_parameters": result.rescorer.num_parameters(),
              "encoder_parameters": sum(p.numel() for n, p in encoder.model.named_parameters() if "lora_" not in n),
              **result.summary}
    report["trainable_fraction"] = round(report["rescorer_parameters"] / report["encoder_parameters"], 6)
    report["peak_rss_mib"] = _peak_rss_mib()
    if args.compare_full:
        import torch

        from ..rescoring.efficiency import compare
        from ..rescoring.train import trainable_lists

        report["lora_vs_full"] = compare(encoder.name, trainable_lists(train), config, args.compare_full,
                                         torch.get_num_threads())
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
        return 0
    f = report["fusion"]
    sys.stdout.write(
        f"rescorer     {report['out']} ({report['file_bytes'] / 1024:.0f} KiB)\n"
        f"parameters   {report['rescorer_parameters']:,} trained ({100 * report['trainable_fraction']:.2f} % of the "
        f"encoder's {report['encoder_parameters']:,})\n"
        f"training     {report['steps']} steps, kept epoch {report['best_epoch']}, {report['wall_seconds']:.1f} s, "
        f"peak RSS {report['peak_rss_mib']} MiB\n"
        f"dev WER      {report['dev_wer_before']:.4f} -> {report['dev_wer_after']:.4f} "
        f"(λ={f['weight']:g}, β={f['length_weight']:g}, tuned on {report['tuned_on']})\n")
    if "lora_vs_full" in report:
        c = report["lora_vs_full"]
        sys.stdout.write(f"vs full FT   {c['speedup']}x faster per step, {100 * c['memory_saving']:.0f} % less "
                         f"training memory growth\n")
    return 0


def _peak_rss_mib() -> float | None:
    """This process's peak resident set size so far (decoding included), from /proc; None elsewhere."""
    try:
        from ..rescoring.efficiency import status_mib

        return round(status_mib("VmHWM"), 1)
    except (OSError, RuntimeError):
        return None


def run_eval(args: argparse.Namespace) -> int:
    from ..datasets.manifest import load_manifest

    backbone, slot = _setup(args)
    utterances = load_manifest(args.manifest)
    report = {"manifest": str(args.manifest), "backbone": backbone.name, "adapter": str(args.adapter or ""),
              "rescorer": str(args.rescorer), "utterances": len(utterances),
              **rescored_report(backbone, utterances, args.rescorer, args.nbest, slot, args.cache, args.json,
                                 _sha256(args.adapter))}
    if not args.details:
        report.pop("hypotheses")
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
        return 0
    for key, value in report.items():
        if key != "hypotheses":
            print(f"{key:<16} {value}")
    for row in report.get("hypotheses", []):
        print(f"REF:      {row['ref']}\nFIRST:    {row['first_pass']}\nRESCORED: {row['rescored']}\n")
    return 0
