"""splitasr adapter: make a sample adapter, inspect an adapter file, import or export PEFT LoRA.

Every file read here is fully validated (never unpickled); writes are atomic.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .transcribe import add_backbone_args, load_backbone


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("adapter", help="inspect, import or export adapter files", description=__doc__)
    sub = p.add_subparsers(dest="action", required=True)
    new = sub.add_parser(
        "new", help="write a sample adapter for the backbone: small seeded random weights (or --zero)",
        description="Write a valid adapter file for the backbone with small seeded random weights, so that "
                    "it visibly changes transcripts: a way to try uploading and using adapters before "
                    "training one (splitasr train).")
    new.add_argument("--out", type=Path, required=True, help="adapter file to write (.safetensors)")
    new.add_argument("--kind", choices=["lora", "glora", "saml"], default="lora", help="adapter kind (default lora)")
    new.add_argument("--targets", default="attn",
                     help="preset(s) or module globs, comma-separated: attn (default), cross, ffn, qv, encoder, "
                          "decoder, all")
    new.add_argument("--rank", type=int, help="low-rank r (default 8; saml 4), alpha = 2r")
    new.add_argument("--seed", type=int, default=0, help="same seed, same weights (default 0)")
    new.add_argument("--zero", action="store_true", help="an exactly zero update: output stays the backbone's")
    new.add_argument("--backbone", help="the backbone it is for: tiny.en (default), base, a directory or a hub id")
    new.add_argument("--json", action="store_true", help="print one JSON object")
    new.set_defaults(func=make_new)
    show = sub.add_parser("inspect", help="validate an adapter file and print what it holds")
    show.add_argument("file", type=Path)
    show.add_argument("--backbone", help="also check that it fits this backbone (name, directory or hub id)")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.set_defaults(func=inspect)
    imp = sub.add_parser("import-peft", help="convert a PEFT LoRA adapter (folder or .zip) into an adapter file")
    imp.add_argument("source", type=Path, help="folder or zip with adapter_config.json + adapter_model.safetensors")
    imp.add_argument("--out", type=Path, required=True, help="adapter file to write (.safetensors)")
    add_backbone_args(imp)
    imp.set_defaults(func=import_peft)
    exp = sub.add_parser("export-peft", help="write a lora adapter file as a PEFT folder (PeftModel loads it)")
    exp.add_argument("file", type=Path)
    exp.add_argument("--out", type=Path, required=True, help="folder to write")
    exp.set_defaults(func=export_peft)


def _spec(args: argparse.Namespace):
    from ..adapters import BackboneSpec

    backbone = load_backbone(args)
    return BackboneSpec.from_model(backbone.name, backbone.model)


def _summary(adapter, path: Path) -> dict:
    return {
        "file": str(path),
        "bytes": path.stat().st_size,
        "kind": adapter.kind,
        "hyperparameters": adapter.config.to_dict(),
        "parameters": adapter.num_parameters(),
        "targets": adapter.targets,
        "backbone": {"name": adapter.backbone_name, "fingerprint": adapter.backbone_fingerprint},
        "created_at": adapter.created_at,
        "creator": adapter.creator,
    }


def inspect(args: argparse.Namespace) -> int:
    from ..adapters import load_adapter

    spec = None
    if args.backbone:
        args.device, args.quantize = "cpu", None
        spec = _spec(args)
    report = _summary(load_adapter(args.file, expected_backbone=spec), args.file)
    if args.json:
        print(json.dumps(report))
        return 0
    b = report["backbone"]
    print(f"{args.file}: valid {report['kind']} adapter, {report['parameters']:,} parameters, {report['bytes']:,} bytes")
    print(f"  hyperparameters: {json.dumps(report['hyperparameters'])}")
    print(f"  backbone: {b['name']} (fingerprint {b['fingerprint'][:16]}…)" + (" - fits" if spec else ""))
    print(f"  targets ({len(report['targets'])}): {', '.join(report['targets'][:4])}"
          + (", …" if len(report["targets"]) > 4 else ""))
    return 0


def import_peft(args: argparse.Namespace) -> int:
    from ..adapters import import_peft as convert
    from ..adapters import save_adapter

    adapter = convert(args.source, _spec(args))
    save_adapter(args.out, adapter)
    print(json.dumps(_summary(adapter, args.out)))
    return 0


def export_peft(args: argparse.Namespace) -> int:
    from ..adapters import export_peft as convert
    from ..adapters import load_adapter

    out = convert(load_adapter(args.file), args.out)
    print(f"wrote {out} (adapter_config.json, adapter_model.safetensors)")
    return 0


def make_new(args: argparse.Namespace) -> int:
    from ..adapters import save_adapter
    from ..adapters.sample import sample_adapter

    args.device, args.quantize = "cpu", "none"  # only the architecture and the fingerprint are read
    adapter = sample_adapter(_spec(args), args.kind, args.targets, seed=args.seed, rank=args.rank, zero=args.zero)
    save_adapter(args.out, adapter)
    report = _summary(adapter, args.out)
    if args.json:
        print(json.dumps(report))
        return 0
    weights = "zero update" if args.zero else f"seeded random weights, seed {args.seed}"
    print(f"wrote {args.out}: {adapter.kind} adapter for {adapter.backbone_name}, {report['parameters']:,} "
          f"parameters on {len(adapter.targets)} linears ({weights}), {report['bytes']:,} bytes")
    return 0
