"""The decode loop on a CUDA device (fp16): the same transcripts as on the CPU, and CUDA-graph steps
the same as eager ones. Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch
from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

from splitasr.audio import decode_audio
from splitasr.decoding import DecodingOptions, transcribe
from splitasr.decoding.whisper.decoder import WhisperDecoder
from splitasr.scoring import wer

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def cuda_backbone(backbone_cache_dir):
    from splitasr.backbones.whisper import WhisperBackbone

    return WhisperBackbone.load("tiny.en", cache_dir=backbone_cache_dir, device="cuda")


def test_cuda_transcripts_match_the_cpu(cuda_backbone, tiny_backbone, real_speech):
    audios = [decode_audio(r["path"]) for r in real_speech]
    normalize = EnglishTextNormalizer({})
    gpu = [r.text for r in transcribe(cuda_backbone, audios, DecodingOptions(beam_size=2, word_timestamps=True))]
    cpu = [r.text for r in transcribe(tiny_backbone, audios, DecodingOptions(beam_size=2))]
    refs = [normalize(r["text"]) for r in real_speech]
    assert wer(refs, [normalize(h) for h in gpu]) <= wer(refs, [normalize(h) for h in cpu]) + 0.02
    batched = [r.text for r in transcribe(cuda_backbone, audios[:4])]
    assert batched == [transcribe(cuda_backbone, [a])[0].text for a in audios[:4]]


def test_cuda_graph_steps_give_the_eager_steps_transcripts(cuda_backbone, real_speech):
    audios = [decode_audio(r["path"]) for r in real_speech]
    texts = {}
    for graphs in (True, False):
        decoder = WhisperDecoder(cuda_backbone, max_rows=8, cuda_graphs=graphs)
        requests = [decoder.start(a, DecodingOptions()) for a in audios]
        decoder.run(requests)
        texts[graphs] = [r.result.text for r in requests]
        if graphs:
            step = decoder.runner.static_step
            assert step is not None and step.failed is None, step and step.failed
            assert step.steps > 50
    normalize = EnglishTextNormalizer({})
    refs = [normalize(r["text"]) for r in real_speech]
    graphed, eager = ([normalize(t) for t in texts[g]] for g in (True, False))
    assert wer(refs, graphed) <= wer(refs, eager) + 0.01


def test_bench_rtf_on_cuda_reports_every_kind(real_speech, tmp_path, backbone_cache_dir):
    import json
    import shutil

    from splitasr.bench import rtf

    lines = [json.dumps({"audio_filepath": r["path"].name, "text": r["text"]}) for r in real_speech[:3]]
    for r in real_speech[:3]:
        shutil.copy(r["path"], tmp_path / r["path"].name)
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    result = rtf.run(audio_dir=tmp_path, repeats=1, cache_dir=backbone_cache_dir, device="cuda")
    for key in ("fp16", "fp16_eager", "int8"):
        assert result[f"splitasr_{key}_rtf"] > 0 and result[f"splitasr_{key}_wer"] is not None
    assert result["ratio_fp16"] > 0 and result["ratio_int8"] > 0 and result["cuda_graph_speedup"] > 0
