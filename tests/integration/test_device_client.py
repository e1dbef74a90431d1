"""The device client (library and CLI) against a real server on loopback with real speech."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

from splitasr.api.rpc.server import BackgroundGrpc
from splitasr.scoring import wer
from splitasr_device import SplitASRClient
from splitasr_device.cli import main as device_main
from tests.adapter_factory import adapter_bytes

from .grpc_server import TOKENS

normalize = EnglishTextNormalizer({})


@pytest.fixture(scope="module")
def client(grpc_server):
    with SplitASRClient(grpc_server.address, token=TOKENS["bob"]) as c:
        yield c


@pytest.fixture(scope="module")
def adapter_file(grpc_server, tmp_path_factory):
    path = tmp_path_factory.mktemp("device") / "bob voice.safetensors"
    path.write_bytes(adapter_bytes(grpc_server.engine.spec, "lora", seed=21, std=0.01))
    return path


def test_second_enroll_sends_no_adapter_bytes(grpc_server, client, adapter_file):
    size = adapter_file.stat().st_size
    first = client.enroll(adapter_file)
    assert first.uploaded_bytes == size and first.name == "bob-voice"
    created = grpc_server.engine.store.get("bob", "bob-voice").created_at
    before = client.bytes_sent
    second = client.enroll(adapter_file)
    assert second.uploaded_bytes == 0 and second.sha256 == first.sha256
    assert client.bytes_sent - before < 200  # one Stat request: the hash, no file
    assert grpc_server.engine.store.get("bob", "bob-voice").created_at == created
    result = client.transcribe(_speech_path("misc/goforward.flac"), adapter=second)
    assert "forward" in result.text.lower()


def _speech_path(rel: str):
    from tests.conftest import REAL_SPEECH_DIR

    return REAL_SPEECH_DIR / rel


def test_streaming_gives_interims_then_a_final(client, real_speech):
    updates = list(client.stream(real_speech[3]["path"], realtime=True))  # 6 s, paced like a microphone
    finals = [u for u in updates if u.is_final]
    assert len(finals) == 1 and updates[-1] is finals[0] and finals[0].end_of_utterance
    interims = [u for u in updates if not u.is_final]
    assert interims and updates.index(interims[0]) < updates.index(finals[0])
    # Whether two interims agree on a prefix depends on how many decodes fit in the audio's 6 s, i.e.
    # on machine load; local agreement itself is tested deterministically in test_stream_policy.py.
    assert wer([normalize(real_speech[3]["text"])], [normalize(finals[0].text)]) <= 0.15


def _final_text(client: SplitASRClient, path, interim: bool = True) -> str:
    return " ".join(u.text for u in client.stream(path, interim_results=interim) if u.is_final)


def test_streamed_transcripts_of_the_real_speech_fixtures(client, real_speech):
    with ThreadPoolExecutor(4) as pool:
        hyps = list(pool.map(lambda row: _final_text(client, row["path"]), real_speech))
    refs = [r["text"] for r in real_speech]
    score = wer([normalize(r) for r in refs], [normalize(h) for h in hyps])
    assert score <= 0.15, list(zip(refs, hyps))


def test_32_concurrent_streams_complete(client, real_speech):
    rows = [real_speech[5 + i % 6] for i in range(32)]  # the six short ones (1-3.5 s)
    alone = {str(r["path"]): normalize(client.transcribe(r["path"]).text) for r in rows[:6]}
    start = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        # finals only: interims of audio sent faster than real time would only add load
        texts = list(pool.map(lambda row: _final_text(client, row["path"], interim=False), rows))
    # tiny.en's own mistakes on these cards are not the point: each stream gets what its file gets alone
    same = [normalize(t) == alone[str(r["path"])] for t, r in zip(texts, rows)]
    assert sum(same) >= 30, list(zip(texts, alone.values()))
    assert time.monotonic() - start < 150


def _cli(capsys, *args: str) -> str:
    assert device_main(list(args)) == 0
    return capsys.readouterr().out


def test_cli_enroll_status_transcribe_stream(grpc_server, capsys, tmp_path, real_speech):
    adapter = tmp_path / "cli.safetensors"
    adapter.write_bytes(adapter_bytes(grpc_server.engine.spec, "glora", seed=22, std=0.005))
    base = ["--server", grpc_server.address, "--token", TOKENS["alice"], "--adapter", str(adapter)]
    assert "not enrolled" in _cli(capsys, *base, "status")
    assert "uploaded" in _cli(capsys, *base, "enroll")
    assert "already on the server" in _cli(capsys, *base, "enroll")
    status = json.loads(_cli(capsys, *base, "--json", "status"))
    assert status["health"] == "SERVING" and status["enrolled_as"]["name"] == "cli"
    text = json.loads(_cli(capsys, *base, "--json", "transcribe", str(real_speech[-1]["path"])))["text"]
    assert "forward" in text.lower()
    lines = [json.loads(x) for x in _cli(capsys, *base, "--json", "stream", str(real_speech[-1]["path"])).splitlines()]
    assert lines[-1]["is_final"] and "forward" in lines[-1]["text"].lower()
    assert "cli" in _cli(capsys, *base, "list")
    _cli(capsys, *base, "delete", "cli")


def test_cli_global_options_work_before_or_after_the_command(grpc_server, capsys, real_speech, monkeypatch):
    monkeypatch.delenv("SPLITASR_DEVICE_SERVER", raising=False)
    monkeypatch.setenv("SPLITASR_DEVICE_CONFIG", "/nonexistent/device.ini")  # explicit and missing: refused
    assert device_main(["status"]) == 2
    capsys.readouterr()
    monkeypatch.delenv("SPLITASR_DEVICE_CONFIG")
    monkeypatch.setenv("HOME", "/nonexistent")  # no ~/.config/splitasr/device.ini either
    audio = str(real_speech[-1]["path"])
    before = ["--server", grpc_server.address, "--token", TOKENS["alice"], "--json"]
    after = ["--server", grpc_server.address, "--token", TOKENS["alice"], "--json"]
    first = json.loads(_cli(capsys, *before, "transcribe", "--no-adapter", audio))
    second = json.loads(_cli(capsys, "transcribe", "--no-adapter", audio, *after))
    assert "forward" in first["text"].lower() and first["text"] == second["text"]
    # after the command wins over before it; an option given only before it stays
    assert device_main(["--server", grpc_server.address, "--token", "wrong-token-0123456789", "list",
                        "--token", TOKENS["alice"]]) == 0
    assert device_main(["--token", TOKENS["alice"], "list", "--server", grpc_server.address, "-v"]) == 0
    assert device_main(["--server", grpc_server.address, "--token", TOKENS["alice"], "list",
                        "--token", "wrong-token-0123456789"]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err


def test_cli_errors_are_one_line(grpc_server, capsys):
    assert device_main(["--server", grpc_server.address, "--token", "wrong-token-0123456789", "list"]) == 1
    assert "UNAUTHENTICATED: invalid API key" in capsys.readouterr().err
    assert device_main(["--server", grpc_server.address, "enroll"]) == 2
    assert "needs --adapter" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")
def test_tls(grpc_server, tmp_path, real_speech):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    settings = grpc_server.settings.model_copy(update={"grpc_tls_cert": cert, "grpc_tls_key": key})
    server = BackgroundGrpc(settings, grpc_server.engine)
    try:
        with SplitASRClient(f"localhost:{server.handle.port}", token=TOKENS["alice"], root_cert=cert) as secure:
            assert secure.health() == "SERVING"
            assert "forward" in secure.transcribe(real_speech[-1]["path"]).text.lower()
    finally:
        server.stop()
