"""Streaming latency and bandwidth of the gRPC API, measured the way a device sees them.

A server (the real backbone, gRPC on loopback) and the device client run in this process; each
real-speech fixture is streamed at real-time pace (100 ms LINEAR16 chunks, as from a microphone),
one stream at a time, once with interim results and once with finals only. Reported:

- ``first_interim_s``: from the first audio chunk sent to the first interim hypothesis;
- ``final_after_last_chunk_s``: from the last audio chunk sent (the client then half-closes) to the
  final result (negative when the VAD ended the utterance before the file did);
- ``final_after_speech_end_s``: from the moment the last speech was sent (where Silero VAD finds
  the file's last speech frame) to the final result;
- ``bytes_per_audio_minute``: protobuf payload bytes the device sends (configs, Stat, audio and, when
  the server lacks it, the adapter upload) per minute of audio, for a device whose adapter is not yet
  enrolled and for one whose adapter is;
- the device client's peak RSS while streaming (``splitasr-device stream --realtime`` in a child
  process) and its installed size (the client package plus grpcio and protobuf).
"""

from __future__ import annotations

import importlib.metadata
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from ..adapters import BackboneSpec, adapter_to_bytes, get_kind, new_adapter, resolve_targets
from ..api.rpc.server import BackgroundGrpc
from ..audio import SAMPLE_RATE_HZ, decode_audio
from ..config import Settings
from ..engine.engine import Engine
from ..engine.vad import FRAME_SAMPLES, SileroVad

DEFAULT_AUDIO_DIR = Path(__file__).resolve().parents[2] / "tests" / "data" / "real-speech"
CHUNK_MS = 100


def _audio_files(audio_dir: Path) -> list[Path]:
    files = sorted(p for p in audio_dir.rglob("*") if p.suffix in (".flac", ".wav"))
    if not files:
        raise FileNotFoundError(f"no .flac or .wav files under {audio_dir}")
    return files


def _percentiles(values: list[float]) -> dict:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": round(statistics.median(ordered), 3), "p95": round(p95, 3), "max": round(ordered[-1], 3)}


def _write_adapter(spec: BackboneSpec, folder: Path) -> Path:
    """A LoRA adapter (r=8 on attention) of the size a real one has."""
    config = get_kind("lora").make_config(r=8, alpha=16.0)
    adapter = new_adapter("lora", config, resolve_targets("attn", spec.linear_shapes), spec, seed=0)
    path = folder / "device.safetensors"
    path.write_bytes(adapter_to_bytes(adapter))
    return path


def _speech_end_s(path: Path) -> float:
    """Where the last speech frame ends, by the same VAD the server uses."""
    audio = decode_audio(path)
    vad = SileroVad()
    end = 0
    for start in range(0, len(audio) - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        if vad(audio[start: start + FRAME_SAMPLES]) >= 0.5:
            end = start + FRAME_SAMPLES
    return end / SAMPLE_RATE_HZ


def _latencies(runs: list[dict]) -> dict:
    out = {}
    for key in ("first_interim", "final_after_last_chunk", "final_after_speech_end"):
        values = [r[key] for r in runs if r[key] is not None]
        if values:
            out[f"{key}_s"] = _percentiles(values)
    return out


def _stream_once(client, path: Path, adapter, interim: bool) -> dict:
    from splitasr_device.audio import chunks, paced, read_pcm

    pcm = read_pcm(path)
    marks: dict[str, float] = {}

    def source() -> Iterator[bytes]:
        marks["start"] = time.perf_counter()  # audio time s is sent at start + s (chunk by chunk)
        for piece in paced(chunks(pcm, CHUNK_MS), pcm.rate_hz):
            marks.setdefault("first_chunk", time.perf_counter())
            yield piece
        marks["last_chunk"] = time.perf_counter()

    first_interim = final = None
    for update in client.stream(source(), sample_rate_hz=pcm.rate_hz, adapter=adapter, interim_results=interim):
        now = time.perf_counter()
        if not update.is_final and first_interim is None:
            first_interim = now - marks["first_chunk"]
        if update.is_final:
            final = now
    speech_end = marks["start"] + _speech_end_s(path)
    return {"seconds": pcm.seconds, "first_interim": first_interim,
            "final_after_last_chunk": None if final is None else final - marks["last_chunk"],
            "final_after_speech_end": None if final is None else final - speech_end}


def _installed_bytes() -> dict:
    sizes = {}
    for dist in ("grpcio", "protobuf"):
        files = importlib.metadata.distribution(dist).files or []
        sizes[dist] = sum(f.locate().stat().st_size for f in files if Path(f.locate()).is_file())
    import splitasr_device

    package = Path(splitasr_device.__file__).parent
    sizes["splitasr_device"] = sum(p.stat().st_size for p in package.rglob("*") if p.is_file() and
                                   "__pycache__" not in p.parts)
    return {"total_mib": round(sum(sizes.values()) / 2**20, 1),
            **{f"{k}_mib": round(v / 2**20, 2) for k, v in sizes.items()}}


def _client_peak_rss_mib(address: str, path: Path) -> float:
    """Peak RSS (VmHWM, Linux) of ``splitasr-device stream FILE --realtime`` in a child process."""
    child = subprocess.Popen([sys.executable, "-m", "splitasr_device.cli", "--server", address, "stream",
                              str(path), "--realtime", "--json"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak_kib = 0
    while child.poll() is None:
        try:
            status = Path(f"/proc/{child.pid}/status").read_text()
            peak_kib = max(peak_kib, int(status.split("VmHWM:")[1].split()[0]))
        except (OSError, IndexError, ValueError):  # exiting, or not Linux
            pass
        time.sleep(0.05)
    if child.returncode != 0:
        raise RuntimeError(f"splitasr-device failed: {child.stderr.read().decode().strip()}")
    return round(peak_kib / 1024, 1)


def run(*, backbone: str = "tiny.en", audio_dir: Path = DEFAULT_AUDIO_DIR, threads: int | None = None,
        cache_dir: Path, quiet: bool = True) -> dict:
    from splitasr_device import SplitASRClient

    from ..progress import track

    if threads:
        torch.set_num_threads(threads)
    files = _audio_files(audio_dir)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(backbone=backbone, cache_dir=cache_dir, store_dir=Path(tmp) / "store", host="127.0.0.1",
                            device="cpu", _env_file=None)
        engine = Engine(settings)
        engine.load()
        server = BackgroundGrpc(settings, engine)
        try:
            adapter_path = _write_adapter(engine.spec, Path(tmp))
            adapter_size = adapter_path.stat().st_size
            bytes_sent, passes = {}, {}
            with SplitASRClient(server.address) as client:
                # pass 1 enrolls (uploads the adapter) and asks for interims; pass 2 finds the adapter
                # enrolled and asks for finals only (bytes sent do not depend on interims)
                for enrolled, interim in ((False, True), (True, False)):
                    before = client.bytes_sent
                    adapter = client.enroll(adapter_path)
                    runs = [_stream_once(client, path, adapter, interim)
                            for path in track(files, f"bench stream ({'interims' if interim else 'finals'})",
                                              unit="stream", quiet=quiet)]
                    audio_minutes = sum(r["seconds"] for r in runs) / 60
                    bytes_sent[enrolled] = round((client.bytes_sent - before) / audio_minutes)
                    passes["with_interims" if interim else "finals_only"] = _latencies(runs)
            rss = _client_peak_rss_mib(server.address, max(files, key=lambda p: p.stat().st_size))
        finally:
            server.stop()
            engine.close(10)
    return {
        "backbone": backbone, "device": "cpu", "threads": torch.get_num_threads(), "streams_per_pass": len(files),
        "audio_seconds_per_pass": round(audio_minutes * 60, 2), "chunk_ms": CHUNK_MS, "pacing": "real time",
        **passes,
        "bytes_per_audio_minute_not_enrolled": bytes_sent[False],
        "bytes_per_audio_minute_enrolled": bytes_sent[True],
        "adapter_bytes": adapter_size,
        "device_client_peak_rss_mib": rss,
        "device_client_installed": _installed_bytes(),
    }
