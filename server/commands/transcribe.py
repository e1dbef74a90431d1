"""splitasr transcribe: transcribe files on this machine, no server needed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .serve import overrides


def add_backbone_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", help="tiny.en (default), base, a local directory or a hub id")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--quantize", choices=["none", "int8", "nf4"],
                   help="backbone weights: none (default), int8 or nf4 (env SPLITASR_QUANTIZE)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                   help="backbone weights' dtype: auto (default: float16 on CUDA, float32 on the CPU), or bfloat16 "
                        "(faster on CPUs with AMX / AVX-512 BF16) (env SPLITASR_DTYPE)")


def add_adapter_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapter", type=Path, help="personal adapter file (.safetensors) applied to every utterance")


def add_decoding_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--language", help="ISO language code (multilingual backbones; detected if omitted)")
    p.add_argument("--beam", type=int, default=1, help="beam size (1 = greedy, default)")
    p.add_argument("--batch-size", type=int, default=8, help="files decoded together")
    p.add_argument("--audio-ctx", type=float, metavar="SECONDS",
                   help="encoder window for clips shorter than this (1-30 s; default: the whole 30 s window)")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("transcribe", help="transcribe audio files", description=__doc__)
    p.add_argument("files", nargs="+", type=Path, help="audio files (wav, flac, mp3, ogg, opus, webm, m4a ...)")
    add_backbone_args(p)
    add_adapter_arg(p)
    add_decoding_args(p)
    p.add_argument("--nbest", type=int, default=1, help="also list the N best hypotheses (json only)")
    p.add_argument("--rescorer", type=Path,
                   help="rescore the N-best list (4 unless --nbest says more) with this rescorer file")
    p.add_argument("--format", choices=["text", "json", "srt", "vtt"], default="text")
    p.set_defaults(func=run)


def load_backbone(args: argparse.Namespace):
    from ..backbones.loader import load_backbone
    from ..config import Settings

    settings = Settings(**overrides(args, "backbone", "device", "quantize", "dtype"))
    return load_backbone(settings.backbone, cache_dir=settings.backbone_cache_dir, device=settings.device,
                         quantize=settings.quantize, dtype=settings.dtype)


def run(args: argparse.Namespace) -> int:
    from ..audio import decode_audio
    from ..decoding import DecodingOptions, transcribe
    from ..evaluation import attach_adapter
    from ..progress import bar

    backbone = load_backbone(args)
    slot = 1 if args.adapter and attach_adapter(backbone, args.adapter) else 0
    rescoring = None
    if args.rescorer:
        from ..rescoring.second_pass import DEFAULT_NBEST, open_rescorer, rescore

        rescoring = open_rescorer(args.rescorer)
        args.nbest = max(args.nbest, DEFAULT_NBEST)
    # json lists every word with its aligned times (Whisper backbones that have alignment heads)
    words = args.format == "json" and bool(getattr(backbone.model.generation_config, "alignment_heads", None))
    options = DecodingOptions(beam_size=args.beam, language=args.language, nbest=args.nbest,
                              word_timestamps=words, audio_ctx_seconds=args.audio_ctx)
    quiet = len(args.files) < 2 or args.format == "json"
    with bar(len(args.files), "transcribe", "file", quiet) as progress:
        for start in range(0, len(args.files), args.batch_size):
            files = args.files[start : start + args.batch_size]
            slots = [slot] * len(files) if slot else None
            results = transcribe(backbone, [decode_audio(f) for f in files], options, slots)
            if rescoring:
                model, rescorer = rescoring
                rescore(model, [(r, 1, rescorer.fusion) for r in results])
            progress.clear()  # transcripts go to stdout, the bar to stderr: keep them apart on a terminal
            for path, result in zip(files, results):
                _write(path, result, args, len(args.files) > 1, options.word_timestamps)
            sys.stdout.flush()
            progress.update(len(files))
    return 0


def _write(path: Path, result, args: argparse.Namespace, several: bool, words: bool) -> None:
    from ..decoding.formats import render, to_verbose_json

    if args.format == "json":
        body = to_verbose_json(result, with_words=words)
        print(json.dumps({"file": str(path), **body}, ensure_ascii=False))
        return
    if several and args.format == "text":
        sys.stdout.write(f"{path}: ")
    sys.stdout.write(str(render(result, args.format)))
