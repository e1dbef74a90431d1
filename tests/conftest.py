"""Shared fixtures: the real tiny.en backbone (loaded once per session) and the real-speech fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).parent / "data"
REAL_SPEECH_DIR = DATA_DIR / "real-speech"


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A per-session ``SPLITASR_CACHE_DIR``, so tests never depend on the user's ~/.cache."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def backbone_cache_dir(cache_root: Path) -> Path:
    return cache_root / "backbones"


@pytest.fixture(scope="session")
def tiny_backbone(backbone_cache_dir: Path):
    from splitasr.backbones.whisper import WhisperBackbone

    return WhisperBackbone.load("tiny.en", cache_dir=backbone_cache_dir, device="cpu")


@pytest.fixture(scope="session")
def real_speech() -> list[dict]:
    """The 11 real utterances: dicts with absolute ``path`` and reference ``text``."""
    rows = []
    for line in (REAL_SPEECH_DIR / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows.append({**row, "path": REAL_SPEECH_DIR / row["audio_filepath"]})
    return rows
