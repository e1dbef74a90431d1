"""``splitasr train``: train a personal adapter (lora, glora, saml) from JSONL manifests.

SAML trains in two stages: ``--stage pretrain`` on several speakers (repeat ``--manifest``) trains the
experts and the router; ``--stage adapt --init PRETRAINED.safetensors`` on one speaker trains the
router (and with ``--adapt-experts`` the experts too).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .transcribe import add_backbone_args, load_backbone

EPILOG = """examples:
  splitasr train --kind lora --manifest data/me/train.jsonl --dev-manifest data/me/dev.jsonl --out me.safetensors
  splitasr train --kind glora --rank 6 --gate lowrank --manifest train.jsonl --dev-manifest dev.jsonl --out me.safetensors
  splitasr train --kind saml --stage pretrain --experts 4 --rank 2 --manifest a/train.jsonl --manifest b/train.jsonl \\
      --dev-manifest a/dev.jsonl --dev-manifest b/dev.jsonl --out saml-base.safetensors
  splitasr train --kind saml --stage adapt --init saml-base.safetensors --adapt-experts \\
      --manifest me/train.jsonl --dev-manifest me/dev.jsonl --out me.safetensors
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a personal adapter", description=__doc__, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=["lora", "glora", "saml"], default="lora", help="adapter kind (default lora)")
    p.add_argument("--manifest", type=Path, action="append", required=True,
                   help="training JSONL manifest (repeat to pool several speakers)")
    p.add_argument("--dev-manifest", type=Path, action="append", default=[],
                   help="dev JSONL manifest for early stopping (repeatable); without one, every epoch runs")
    p.add_argument("--out", type=Path, required=True, help="adapter file to write (.safetensors)")
    add_backbone_args(p)
    p.add_argument("--rank", type=int, default=8, help="rank r (default 8)")
    p.add_argument("--alpha", type=float, help="LoRA alpha (default 2 × rank)")
    p.add_argument("--targets", default="all",
                   help="preset(s) or module globs, comma-separated: attn, cross, ffn, qv, encoder, decoder, all "
                        "(default all; decoder trains ~6x faster on a CPU, since the frozen encoder then runs "
                        "once per utterance, but adapts to the voice much less)")
    p.add_argument("--gate", choices=["lowrank", "output"], default="lowrank", help="glora gate position")
    p.add_argument("--experts", type=int, default=4, help="saml experts per layer (default 4)")
    p.add_argument("--top-k", type=int, help="saml: keep the k largest router weights")
    p.add_argument("--stage", choices=["train", "pretrain", "adapt"],
                   help="training stage (default: train for lora/glora; saml: pretrain, or adapt with --init)")
    p.add_argument("--init", type=Path, help="start from this adapter file (saml adapt: the pretrained mixture)")
    p.add_argument("--adapt-experts", action="store_true", help="saml adapt: train the experts as well as the router")
    p.add_argument("--epochs", type=int, default=10, help="maximum epochs (default 10)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW; default 2e-3)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=8, help="utterances per step (default 8)")
    p.add_argument("--micro-batch-size", type=int,
                   help="run each step in parts of this many utterances (same update, less memory; for encoder targets)")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation and shuffling (default 0)")
    p.add_argument("--patience", type=int, default=3,
                   help="stop after this many epochs without dev improvement (default 3; 0 = never)")
    p.add_argument("--casing", choices=["restore", "keep"], default="restore",
                   help="restore (default): learn normalised references in sentence case with a final period, "
                        "as Whisper writes; keep: learn them as written")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=run)


def _utterances(paths: list[Path]) -> list:
    from ..datasets.manifest import load_manifest

    return [u for path in paths for u in load_manifest(path)]


def run(args: argparse.Namespace) -> int:
    import torch

    from ..errors import UsageError
    from ..training.train import TrainConfig, train_adapter

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.kind != "saml" and (args.stage or "train") != "train":
        raise UsageError(f"--stage {args.stage} is for saml; {args.kind} has one stage (train)")
    if args.stage == "adapt" and args.init is None:
        raise UsageError("--stage adapt needs --init PRETRAINED.safetensors (from --stage pretrain)")
    config = TrainConfig(
        kind=args.kind, rank=args.rank, alpha=args.alpha, targets=args.targets, gate=args.gate,
        experts=args.experts, top_k=args.top_k, stage=args.stage, adapt_experts=args.adapt_experts,
        init=args.init, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
        batch_size=args.batch_size, micro_batch_size=args.micro_batch_size, seed=args.seed,
        patience=args.patience, casing=args.casing,
        quiet=args.quiet or args.json,
    )
    train, dev = _utterances(args.manifest), _utterances(args.dev_manifest)
    backbone = load_backbone(args)
    from ..backbones.whisper import WhisperBackbone

    if not isinstance(backbone, WhisperBackbone):
        raise UsageError(f"splitasr train needs a Whisper backbone; {backbone.name!r} is a CTC model "
                         "(train its adapters from Python with splitasr.backbones.ctc.ctc_loss)")
    result = train_adapter(backbone, train, dev, config)
    from ..adapters import save_adapter

    path = save_adapter(args.out, result.adapter)
    report = {"out": str(path), "file_bytes": path.stat().st_size, "backbone": backbone.name,
              "torch_threads": torch.get_num_threads(), **result.summary()}
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
        return 0
    _print_summary(report)
    return 0


def _print_summary(report: dict) -> None:
    metric = (report["dev_metric"] or "dev").upper()
    lines = [
        f"adapter      {report['out']} ({report['kind']}, stage {report['stage']}, {report['targets']} modules)",
        f"parameters   {report['trainable_parameters']:,} trained, {report['adapter_parameters']:,} stored",
        f"file size    {report['file_bytes'] / 1024:.1f} KiB",
        (f"data         {report['train_utterances']} utterances ({report['train_audio_seconds']:.0f} s), "
        f"{report['dev_utterances']} dev"),
        (f"training     {report['steps']} steps, {report['epochs_run']} epoch(s), kept epoch {report['best_epoch']}, "
        f"{report['wall_seconds']:.1f} s wall, {report['cpu_seconds']:.1f} s CPU ({report['torch_threads']} threads)"),
    ]
    if report["dev_before"] is not None:
        lines.append(f"dev {metric:<8} {report['dev_before']:.4f} -> {report['dev_after']:.4f}")
    sys.stdout.write("\n".join(lines) + "\n")
