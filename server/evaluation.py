"""Offline evaluation of a backbone (with one adapter, or a rescorer) on a list of utterances.

The library behind ``splitasr eval``, ``splitasr rescorer eval``, ``splitasr transcribe --adapter`` and
``splitasr bench quant``: it decodes directly (no server), so one adapter sits in slot 1 of a one-slot
bank and every utterance uses it.
"""

from __future__ import annotations

import time
from pathlib import Path


def attach_adapter(backbone, path: Path) -> dict:
    """Load the adapter file at ``path`` (validated against ``backbone``) into slot 1 of a one-slot bank.

    Returns what the file holds, for reports; decode with ``slots=[1] * batch`` afterwards.
    """
    from .adapters import AdapterLimits, BackboneSpec, attach_bank, load_adapter, load_into_slot

    spec = BackboneSpec.from_model(backbone.name, backbone.model)
    adapter = load_adapter(path, expected_backbone=spec)
    limits = AdapterLimits(max_rank=adapter.config.r, max_experts=adapter.config.num_experts)
    attach_bank(backbone.model, adapter.targets, num_slots=1, limits=limits, kinds=[adapter.kind])
    load_into_slot(backbone.model, 1, adapter)
    return {"path": str(path), "kind": adapter.kind, "file_bytes": Path(path).stat().st_size,
            "parameters": adapter.num_parameters(), "hyperparameters": adapter.config.to_dict(),
            "targets": len(adapter.targets)}


def evaluate(backbone, utterances, *, beam: int = 1, language: str | None = None, batch_size: int = 8,
             normalizer: str = "whisper", slot: int = 0, audio_ctx: float | None = None,
             quiet: bool = True) -> dict:
    """Transcribe every utterance and score the corpus; returns the JSON report.

    ``slot``: the adapter slot every utterance uses (0 = the backbone alone). ``quiet=False``: a
    progress bar on a terminal.
    """
    from .audio import SAMPLE_RATE_HZ, decode_audio
    from .decoding import DecodingOptions, transcribe
    from .progress import bar
    from .scoring import score_all

    options = DecodingOptions(beam_size=beam, language=language, audio_ctx_seconds=audio_ctx)
    hyps: list[str] = []
    audio_seconds = 0.0
    start = time.perf_counter()
    with bar(len(utterances), "eval", "utt", quiet) as progress:
        for i in range(0, len(utterances), batch_size):
            batch = utterances[i : i + batch_size]
            audios = [decode_audio(u.audio_path) for u in batch]
            audio_seconds += sum(len(a) for a in audios) / SAMPLE_RATE_HZ
            hyps += [r.text for r in transcribe(backbone, audios, options, [slot] * len(batch) if slot else None)]
            progress.update(len(batch))
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
        "audio_ctx_seconds": audio_ctx,
        "normalizer": normalizer,
        **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in scores.items()},
    }
    report["hypotheses"] = [{"ref": u.text, "hyp": h, "audio": str(u.audio_path)} for u, h in zip(utterances, hyps)]
    return report


def rescored_report(backbone, utterances, rescorer_path: Path, k: int, slot: int = 0, cache: Path | None = None,
                    quiet: bool = True, adapter_sha256: str | None = None) -> dict:
    """WER of the N-best top hypothesis, of the rescored choice and of the oracle, on ``utterances``."""
    from .rescoring.data import cache_key, cached_lists, decode_lists, normalize
    from .rescoring.model import Fusion, choose
    from .rescoring.second_pass import open_rescorer
    from .rescoring.train import score_lists
    from .scoring import score_all

    produce = lambda: decode_lists(backbone, utterances, k, slot=slot, quiet=quiet)
    lists = cached_lists(cache, cache_key(backbone.name, adapter_sha256, k, utterances), produce)[0] if cache else produce()
    model, rescorer = open_rescorer(rescorer_path)
    picks = [choose(x, s, rescorer.fusion) for x, s in zip(lists, score_lists(model, lists, 1))]
    refs = [normalize(x.ref) for x in lists]

    def wer(chosen: list[int]) -> float:  # scored like `splitasr eval`: Whisper's normalizer, jiwer
        return round(score_all(refs, [normalize(x.hyps[p]) for x, p in zip(lists, chosen)])["wer"], 4)

    report = {"nbest": k, "fusion": rescorer.fusion.to_dict(), "wer_first_pass": wer([0] * len(lists)),
              "wer_rescored": wer(picks), "wer_oracle": wer([x.errors.index(x.oracle) for x in lists]),
              "changed": sum(p != 0 for p in picks)}
    plain = rescorer.training.get("fusion_without_rescorer")
    if isinstance(plain, dict) and set(plain) == {"weight", "length_weight"}:
        # the same stage with λ = 0 (ASR score and length term, β tuned on dev): what the text encoder adds
        fusion = Fusion(0.0, float(plain["length_weight"]))
        report["wer_length_term_only"] = wer([choose(x, [0.0] * len(x.hyps), fusion) for x in lists])
    report["hypotheses"] = [{"ref": x.ref, "first_pass": x.hyps[0], "rescored": x.hyps[p]} for x, p in zip(lists, picks)]
    return report
