"""Synthetic speaker datasets: sentence lists, rendering, manifests, splits, cache, manifest errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from splitasr.datasets import synth
from splitasr.datasets.manifest import REQUIRED_KEYS, ManifestError, Utterance, load_manifest, write_manifest
from splitasr.errors import InvalidInput, NotFound

EN = "cardio_nurse"
KO = "ko_dev_engineer"
SPLITS = (2, 1, 1)  # four sentences per speaker

needs_tts = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None,
    reason="espeak-ng/sox not installed (sudo apt-get install espeak-ng sox, or scripts/install-system-deps.sh)",
)


# ----------------------------------------------------------------------------- no system tools needed


def test_normalize_reference():
    assert synth.normalize_reference("Hello, World!") == "hello world"
    assert synth.normalize_reference("Don’t pull the 'jib sheet' — it's O'Neill's.") == (
        "don't pull the jib sheet it's o'neill's"
    )
    assert synth.normalize_reference("beta-blocker ... ok?") == "beta blocker ok"
    assert synth.normalize_reference("오늘 미팅에서 Deployment 일정, 다시 확인해 주세요!") == (
        "오늘 미팅에서 deployment 일정 다시 확인해 주세요"
    )
    # Hangul compatibility jamo are left as written (no NFKC folding to U+11xx)
    assert synth.normalize_reference("ㅋㅋ 좋아요") == "ㅋㅋ 좋아요"


def test_builtin_speakers_are_well_formed():
    specs = synth.list_speakers()
    assert {EN, KO} <= {s.id for s in specs}
    langs = {s.language for s in specs}
    assert langs == {"en", "ko"}
    assert sum(s.language == "en" for s in specs) >= 3
    for spec in specs:
        assert len(spec.sentences) >= 80, spec.id
        assert len({synth.normalize_reference(s) for s in spec.sentences}) == len(spec.sentences)
        for sentence in spec.sentences:
            assert not re.search(r"\d", sentence), (spec.id, sentence)  # numbers are spelled out
            n = len(sentence.split())
            assert (5 <= n <= 15) if spec.language == "en" else (4 <= n <= 15), (spec.id, sentence)
        if spec.language == "ko":  # code-switching: Hangul with embedded English terms
            assert all(re.search(r"[가-힣]", s) for s in spec.sentences)
            assert sum(bool(re.search(r"[A-Za-z]", s)) for s in spec.sentences) >= 0.9 * len(spec.sentences)
    assert len({(s.voice, s.effects, s.channel) for s in specs}) == len(specs)  # all sound different


def test_get_speaker_unknown():
    with pytest.raises(NotFound, match="cardio_nurse"):
        synth.get_speaker("nobody")


def test_spec_validation():
    base = {"id": "x", "language": "en", "voice": "en-us", "sentences": ["one two three four five"]}
    assert synth.SpeakerSpec.from_dict(base).effects == ()
    with pytest.raises(InvalidInput, match="unknown field"):
        synth.SpeakerSpec.from_dict({**base, "volume": 3})
    with pytest.raises(InvalidInput, match="snr_db"):
        synth.SpeakerSpec.from_dict({**base, "noise": "pink"})
    with pytest.raises(InvalidInput, match="repeats sentence 1"):
        synth.SpeakerSpec.from_dict({**base, "sentences": ["Hello there.", "hello, there"]})
    with pytest.raises(InvalidInput, match="pitch"):
        synth.SpeakerSpec.from_dict({**base, "pitch": 150})


def test_split_counts_and_assignment():
    assert synth.split_counts(90, (60, 10, 20)) == (60, 10, 20)
    assert synth.split_counts(90, (0.8, 0.1, 0.1)) == (72, 9, 9)
    with pytest.raises(InvalidInput, match="has 90"):
        synth.split_counts(90, (80, 10, 10))
    with pytest.raises(InvalidInput, match="add up"):
        synth.split_counts(90, (0.8, 0.2, 0.1))
    with pytest.raises(InvalidInput, match="mix counts and fractions"):
        synth.split_counts(90, (3, 1, 0.5))
    spec = synth.get_speaker(EN)
    a = synth.assign_splits(spec, (0.8, 0.1, 0.1), seed=7)
    assert a == synth.assign_splits(spec, (0.8, 0.1, 0.1), seed=7)
    assert a != synth.assign_splits(spec, (0.8, 0.1, 0.1), seed=8)
    together = a["train"] + a["dev"] + a["test"]
    assert sorted(together) == list(range(len(spec.sentences)))  # disjoint and complete


def _row(**kw):
    row = {"audio_filepath": "a.wav", "text": "hi", "duration": 1.0, "speaker": "s", "lang": "en"}
    row.update(kw)
    return json.dumps(row)


def test_load_manifest_errors(tmp_path):
    sf.write(tmp_path / "a.wav", np.zeros(1600, dtype=np.int16), 16000)
    m = tmp_path / "m.jsonl"

    m.write_text(_row() + "\n\n" + _row(text="there") + "\n")
    utts = load_manifest(m)
    assert [u.text for u in utts] == ["hi", "there"]
    assert utts[0].audio_path == (tmp_path / "a.wav").resolve() and utts[0].audio_path.is_absolute()

    m.write_text(_row() + "\n" + '{"audio_filepath": "a.wav", "text": \n')
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: not valid JSON"):
        load_manifest(m)

    row = json.loads(_row())
    del row["lang"]
    m.write_text(_row() + "\n" + _row() + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ManifestError, match=r"m\.jsonl:3: missing required key\(s\) lang"):
        load_manifest(m)

    m.write_text(_row(audio_filepath="gone.wav") + "\n")
    with pytest.raises(ManifestError, match=r"m\.jsonl:1: audio file 'gone.wav' not found"):
        load_manifest(m)
    assert load_manifest(m, check_files=False)[0].audio_path.name == "gone.wav"

    m.write_text(_row(duration="long") + "\n")
    with pytest.raises(ManifestError, match=r":1: 'duration' must be a number"):
        load_manifest(m)
    m.write_text("[1, 2]\n")
    with pytest.raises(ManifestError, match=r":1: expected a JSON object"):
        load_manifest(m)
    with pytest.raises(NotFound):
        load_manifest(tmp_path / "missing.jsonl")


def test_write_manifest_relative_paths(tmp_path):
    audio = tmp_path / "audio" / "x.wav"
    audio.parent.mkdir()
    sf.write(audio, np.zeros(800, dtype=np.int16), 16000)
    path = write_manifest(tmp_path / "sub" / "m.jsonl", [Utterance(audio.resolve(), "hi", 0.05, "s", "en")])
    assert json.loads(path.read_text())["audio_filepath"] == "../audio/x.wav"
    assert load_manifest(path)[0].audio_path == audio.resolve()


def test_missing_tools_error_names_apt_packages(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    synth._tool_version.cache_clear()
    try:
        with pytest.raises(synth.MissingTool, match="apt-get install espeak-ng sox"):
            synth.synthesize_speaker(EN, tmp_path / "out", splits=(1, 0, 0))
    finally:
        synth._tool_version.cache_clear()


# ----------------------------------------------------------------------------- rendering


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.skip("espeak-ng/sox not installed (sudo apt-get install espeak-ng sox)")
    root = tmp_path_factory.mktemp("speakers")
    return root, synth.synthesize_all(root, speakers=[EN, KO], splits=SPLITS, seed=5)


@needs_tts
def test_manifests_and_audio(rendered):
    root, result = rendered
    assert set(result) == {EN, KO, "all"}
    for sid in (EN, KO):
        spec = synth.get_speaker(sid)
        refs = {synth.normalize_reference(s) for s in spec.sentences}
        for split, want in zip(synth.SPLIT_NAMES, SPLITS):
            manifest = result[sid][split]
            assert manifest == root / sid / f"{split}.jsonl"
            rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
            assert len(rows) == want
            for row in rows:
                assert set(REQUIRED_KEYS) <= set(row)
                assert row["speaker"] == sid and row["lang"] == spec.language
                assert row["text"] in refs
                rel = Path(row["audio_filepath"])
                assert not rel.is_absolute() and rel.parts[0] == "audio"
                audio = manifest.parent / rel
                info = sf.info(audio)
                assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
                x, sr = sf.read(audio, dtype="float32")
                assert abs(len(x) / sr - row["duration"]) < 1e-3
                assert 1.0 <= row["duration"] <= 8.0
                assert float(np.sqrt(np.mean(x**2))) > 0.01  # not silent
        utts = load_manifest(result[sid]["train"])
        assert all(u.audio_path.is_absolute() and u.audio_path.is_file() for u in utts)
    combined = load_manifest(result["all"]["train"])
    assert len(combined) == 2 * SPLITS[0] and {u.speaker for u in combined} == {EN, KO}
    provenance = json.loads((root / EN / "synth.json").read_text())
    assert provenance["counts"] == dict(zip(synth.SPLIT_NAMES, SPLITS))


@needs_tts
def test_cache_reuse(rendered, monkeypatch):
    root, result = rendered
    before = {p: p.stat().st_mtime_ns for p in (root / KO / "audio").iterdir()}

    def boom(job):
        raise AssertionError(f"re-rendered {job.text!r}")

    monkeypatch.setattr(synth, "_render", boom)
    again = synth.synthesize_speaker(KO, root / KO, splits=SPLITS, seed=5)
    assert again == result[KO]
    assert {p: p.stat().st_mtime_ns for p in (root / KO / "audio").iterdir()} == before


@needs_tts
def test_same_seed_same_split_and_bytes(rendered, tmp_path):
    root, result = rendered
    fresh = synth.synthesize_speaker(EN, tmp_path / "again", splits=SPLITS, seed=5, workers=1)
    for split in synth.SPLIT_NAMES:
        assert fresh[split].read_text() == result[EN][split].read_text()  # same files, same split
    first = json.loads(fresh["train"].read_text().splitlines()[0])["audio_filepath"]
    # rendering is deterministic: same bytes from a fresh folder
    assert (tmp_path / "again" / first).read_bytes() == (root / EN / first).read_bytes()

    def texts(manifests):
        rows = [r for s in synth.SPLIT_NAMES for r in manifests[s].read_text().splitlines()]
        return [json.loads(r)["text"] for r in rows]

    before = texts(fresh)
    other = synth.synthesize_speaker(EN, tmp_path / "other", splits=SPLITS, seed=6)
    assert texts(other) != before


@needs_tts
def test_custom_spec_and_render_error(tmp_path):
    spec = {
        "id": "custom", "language": "en", "voice": "en-us", "speed": 200,
        "sentences": ["Check the halyard before the race starts."],
        "effects": "not-a-sox-effect",
    }  # fmt: skip
    with pytest.raises(synth.SynthesisError, match="not-a-sox-effect"):
        synth.synthesize_speaker(spec, tmp_path, splits=(1, 0, 0))
    spec["effects"] = ""
    out = synth.synthesize_speaker(spec, tmp_path, splits=(1, 0, 0), audio_format="wav")
    (utt,) = load_manifest(out["train"])
    assert utt.audio_path.suffix == ".wav" and utt.text == "check the halyard before the race starts"
    assert load_manifest(out["dev"]) == []


@pytest.mark.skipif(
    shutil.which("flite") is None or shutil.which("sox") is None, reason="flite/sox not installed"
)
def test_flite_speaker(tmp_path):
    out = synth.synthesize_speaker("tabletop_gamer", tmp_path, splits=(1, 0, 0))
    (utt,) = load_manifest(out["train"])
    x, sr = sf.read(utt.audio_path)
    assert sr == 16000 and 1.0 <= len(x) / sr <= 8.0 and np.sqrt(np.mean(x**2)) > 0.01
