"""Streaming latency and bandwidth of the gRPC API under concurrency, measured the way devices see them.

A server (the real backbone, gRPC on loopback) runs in this process; the devices run in a child
process (in this one their timestamps would wait for the GIL behind the server's threads), each
a thread with its own :class:`splitasr_device.SplitASRClient`. For each count N in ``streams``,
N streams run at once, in real time (100 ms LINEAR16 chunks, sent when a microphone would have
recorded them). Each stream sends two real-speech clips: the first followed by 1 s of silence, so the
server's endpoint (0.5 s of silence by default) ends it; the second cut 0.2 s after its last speech,
then the stream half-closes, which ends that utterance. Interim results are on. Reported per N:

- ``first_interim_s``: from the first chunk of a clip sent to its first interim hypothesis;
- ``final_after_speech_end_s``: from the moment the chunk holding the first clip's last speech frame
  (found by Silero VAD, as the server does) was sent to that utterance's final result;
- ``final_after_half_close_s``: from the last chunk sent (then the client half-closes) to the final
  result of the second clip;
- ``interims_per_utterance``; ``failed``: clips that got no final;
- ``decoded_audio_per_audio_s``: seconds of audio the decoder processed (interim re-decodes
  included) per second streamed, and ``server_cpu_s_per_audio_s``: the server process's CPU time
  (every thread: decoding, VAD, gRPC) per second streamed;
- ``bytes_per_audio_minute``: protobuf payload bytes the devices sent (configs and audio) per minute
  of audio.

Each pass runs once per codec in ``codecs``: ``linear16`` (raw PCM) and ``opus`` (an Ogg Opus
stream from the device's encoder, :mod:`splitasr_device.opus`, at ``opus_bitrate``, the device's default).

WER (``wer``): every fixture streamed alone, in real time, once per codec (the text is its finals
joined), against the same fixtures sent whole to ``Recognize`` (file WER), scored against the
manifest's references (:func:`splitasr.scoring.wer` after Whisper's English normaliser). This needs a
``manifest.jsonl`` in the audio folder (the real-speech fixtures have one).

Also the device client's peak RSS while streaming (``splitasr-device stream --realtime`` in a child
process) and its installed size (the client package plus grpcio and protobuf).
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from splitasr_device.opus import DEFAULT_BITRATE

from ..api.rpc.server import BackgroundGrpc
from ..audio import SAMPLE_RATE_HZ, decode_audio
from ..audio.vad import FRAME_SAMPLES, SileroVad
from ..config import Settings
from ..engine.engine import Engine
from .common import cpu_model

DEFAULT_AUDIO_DIR = Path(__file__).resolve().parents[2] / "tests" / "data" / "real-speech"
CHUNK_S = 0.1
ENDPOINT_SILENCE_S = 1.0  # after the first clip: the endpoint ends it
HALF_CLOSE_TAIL_S = 0.2  # after the second clip's last speech: too short for the endpoint
LEAD_IN_TOLERANCE_S = 0.5  # an utterance starts up to the VAD's lead-in (0.3 s) before its clip


@dataclass(frozen=True)
class Clip:
    audio: np.ndarray  # 16 kHz float32
    speech_end_s: float


@dataclass(frozen=True)
class Script:
    """One stream's audio: the first clip and its silence, then the second clip, cut short."""

    first: Clip
    second: Clip

    @property
    def parts(self) -> list[np.ndarray]:
        cut = int((self.second.speech_end_s + HALF_CLOSE_TAIL_S) * SAMPLE_RATE_HZ)
        return [self.first.audio, np.zeros(int(ENDPOINT_SILENCE_S * SAMPLE_RATE_HZ), np.float32),
                self.second.audio[:cut]]

    def pcm(self) -> bytes:
        return (np.clip(np.concatenate(self.parts), -1, 1) * 32767).astype("<i2").tobytes()

    @property
    def second_start_s(self) -> float:
        return (len(self.first.audio) / SAMPLE_RATE_HZ) + ENDPOINT_SILENCE_S

    @property
    def seconds(self) -> float:
        return sum(len(p) for p in self.parts) / SAMPLE_RATE_HZ

    def clip_at(self, stream_s: float) -> int:
        """0 or 1: the clip an utterance starting at ``stream_s`` belongs to."""
        return int(stream_s + LEAD_IN_TOLERANCE_S >= self.second_start_s)


def _speech_end_s(audio: np.ndarray) -> float:
    """Where the last speech frame ends, by the same VAD the server uses."""
    vad, end = SileroVad(), 0
    for start in range(0, len(audio) - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        if vad(audio[start: start + FRAME_SAMPLES]) >= 0.5:
            end = start + FRAME_SAMPLES
    return end / SAMPLE_RATE_HZ


def _audio_files(audio_dir: Path) -> list[Path]:
    files = sorted(p for p in audio_dir.rglob("*") if p.suffix in (".flac", ".wav"))
    if not files:
        raise FileNotFoundError(f"no .flac or .wav files under {audio_dir}")
    return files


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": round(statistics.median(ordered), 3), "p95": round(p95, 3), "max": round(ordered[-1], 3),
            "n": len(ordered)}


# --- the devices (in the child process) -------------------------------------------------------------
def _one_stream(address: str, script: Script, codec: str = "linear16", opus_bitrate: int = DEFAULT_BITRATE) -> dict:
    from splitasr_device import SplitASRClient

    pcm, step = script.pcm(), int(SAMPLE_RATE_HZ * CHUNK_S) * 2
    sent: list[float] = []

    def source():
        t0 = time.perf_counter()
        for k, start in enumerate(range(0, len(pcm), step)):
            time.sleep(max(0.0, t0 + (k + 1) * CHUNK_S - time.perf_counter()))  # recorded by then
            yield pcm[start: start + step]
            sent.append(time.perf_counter())  # the client library has taken the chunk

    first_interim: dict[int, float] = {}
    interims = [0, 0]
    finals: dict[int, float] = {}
    with SplitASRClient(address) as client:
        for update in client.stream(source(), sample_rate_hz=SAMPLE_RATE_HZ, interim_results=True, codec=codec,
                                    opus_bitrate=opus_bitrate):
            clip, now = script.clip_at(update.start), time.perf_counter()
            if update.is_final:
                finals[clip] = now
            else:
                interims[clip] += 1
                first_interim.setdefault(clip, now)
        bytes_sent = client.bytes_sent

    def sent_at(stream_s: float) -> float:  # when the chunk holding stream time ``stream_s`` was sent
        return sent[min(len(sent) - 1, max(0, math.ceil(stream_s / CHUNK_S) - 1))]

    starts = [sent_at(1e-6), sent_at(script.second_start_s + 1e-6)]  # each clip's first chunk
    return {
        "first_interim": [first_interim[c] - starts[c] if c in first_interim else None for c in (0, 1)],
        "interims": interims,
        "final_after_speech_end": finals[0] - sent_at(script.first.speech_end_s) if 0 in finals else None,
        "final_after_half_close": finals[1] - sent[-1] if 1 in finals else None,
        "failed": 2 - len(finals),
        "bytes_sent": bytes_sent,
        "seconds": script.seconds,
    }


def _streams_at_once(address: str, scripts: list[Script], codec: str = "linear16",
                     opus_bitrate: int = DEFAULT_BITRATE) -> list[dict]:
    results: list = [None] * len(scripts)

    def one(i: int) -> None:
        try:
            results[i] = _one_stream(address, scripts[i], codec, opus_bitrate)
        except Exception as exc:  # noqa: BLE001 - a failed stream is reported, the others go on
            results[i] = {"error": f"{type(exc).__name__}: {exc}"}

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(scripts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _streamed_texts(address: str, paths: list[Path], codec: str, opus_bitrate: int) -> tuple[list[str], int, float]:
    """Each file streamed alone in real time: its finals joined; bytes sent; seconds of audio."""
    from splitasr_device import SplitASRClient

    texts, seconds = [], 0.0
    with SplitASRClient(address) as client:
        for path in paths:
            updates = client.stream(path, realtime=True, interim_results=False, codec=codec,
                                    opus_bitrate=opus_bitrate)
            texts.append(" ".join(u.text.strip() for u in updates if u.is_final))
            seconds += len(decode_audio(path)) / SAMPLE_RATE_HZ
        return texts, client.bytes_sent, seconds


def _file_texts(address: str, paths: list[Path]) -> list[str]:
    from splitasr_device import SplitASRClient

    with SplitASRClient(address) as client:
        return [client.transcribe(path).text for path in paths]


def _wer_pass(devices, address: str, audio_dir: Path, codecs: tuple[str, ...], opus_bitrate: int) -> dict:
    """WER of Recognize (file) and of each codec's streams, with Whisper's English normaliser (as
    ``bench rtf`` and ``splitasr eval``), and the texts themselves."""
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    from ..scoring import wer

    norm = EnglishTextNormalizer({})
    rows = [json.loads(line) for line in (audio_dir / "manifest.jsonl").read_text().splitlines() if line.strip()]
    paths = [audio_dir / row["audio_filepath"] for row in rows]
    refs = [norm(row["text"]) for row in rows]
    files = devices.submit(_file_texts, address, paths).result()
    out = {"fixtures": len(paths), "normalizer": "whisper-english", "file": round(wer(refs, [norm(t) for t in files]), 4)}
    texts = {"file": files}
    for codec in codecs:
        texts[codec], sent, seconds = devices.submit(_streamed_texts, address, paths, codec, opus_bitrate).result()
        out[codec] = round(wer(refs, [norm(t) for t in texts[codec]]), 4)
        out[f"{codec}_bytes_per_audio_minute"] = round(sent / (seconds / 60))
        out[f"{codec}_minus_file_points"] = round(100 * (out[codec] - out["file"]), 2)
    out["texts"] = texts
    return out


# --- the server side --------------------------------------------------------------------------------
def _engine_totals() -> tuple[float, float]:
    """Seconds of audio decoded so far and this process's CPU seconds."""
    from ..observability import REGISTRY

    return (REGISTRY.get_sample_value("splitasr_audio_seconds_total") or 0.0), time.process_time()


def _summary(runs: list[dict], totals: tuple[float, float]) -> dict:
    ok = [r for r in runs if "error" not in r]
    audio_s = sum(r["seconds"] for r in ok) or math.nan
    decoded_s, cpu_s = totals
    return {
        "first_interim_s": _percentiles([v for r in ok for v in r["first_interim"] if v is not None]),
        "final_after_speech_end_s": _percentiles([r["final_after_speech_end"] for r in ok
                                                  if r["final_after_speech_end"] is not None]),
        "final_after_half_close_s": _percentiles([r["final_after_half_close"] for r in ok
                                                  if r["final_after_half_close"] is not None]),
        "interims_per_utterance": round(statistics.mean(v for r in ok for v in r["interims"]), 2) if ok else None,
        "failed": sum(r["failed"] for r in ok) + 2 * (len(runs) - len(ok)),
        "errors": [r["error"] for r in runs if "error" in r],
        "audio_s": round(audio_s, 1),
        "decoded_audio_per_audio_s": round(decoded_s / audio_s, 2),
        "server_cpu_s_per_audio_s": round(cpu_s / audio_s, 2),
        "bytes_per_audio_minute": round(sum(r["bytes_sent"] for r in ok) / (audio_s / 60)),
    }


def _installed_bytes() -> dict:
    sizes = {}
    for dist in ("grpcio", "protobuf"):
        files = importlib.metadata.distribution(dist).files or []
        sizes[dist] = sum(f.locate().stat().st_size for f in files if Path(f.locate()).is_file())
    import splitasr_device

    package = Path(splitasr_device.__file__).parent
    sizes["splitasr_device"] = sum(p.stat().st_size for p in package.rglob("*") if p.is_file() and
                                   "__pycache__" not in p.parts)
    extra = {}  # the opus extra (not in the base install's total): soundfile (libsndfile inside) and cffi
    for dist in ("soundfile", "cffi", "pycparser"):
        try:
            files = importlib.metadata.distribution(dist).files or []
        except importlib.metadata.PackageNotFoundError:
            continue
        extra[dist] = sum(f.locate().stat().st_size for f in files if Path(f.locate()).is_file())
    return {"total_mib": round(sum(sizes.values()) / 2**20, 1),
            **{f"{k}_mib": round(v / 2**20, 2) for k, v in sizes.items()},
            "opus_extra_mib": round(sum(extra.values()) / 2**20, 1) if extra else None}


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



def run(*, backbone: str = "tiny.en", streams: tuple[int, ...] = (8,), audio_dir: Path = DEFAULT_AUDIO_DIR,
        threads: int | None = None, cache_dir: Path, rss: bool = True, codecs: tuple[str, ...] = ("linear16",),
        wer: bool = True, opus_bitrate: int = DEFAULT_BITRATE) -> dict:
    """One pass of N concurrent streams for each codec and each N in ``streams`` (one server, in this
    order), then (``wer``) the WER pass."""
    if threads:
        torch.set_num_threads(threads)
    files = _audio_files(audio_dir)
    audios = [decode_audio(p) for p in files]
    clips = [Clip(a, _speech_end_s(a)) for a in audios]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(backbone=backbone, cache_dir=cache_dir, store_dir=Path(tmp) / "store", host="127.0.0.1",
                            device="cpu", max_streams=max(max(streams), 16), _env_file=None)
        engine = Engine(settings)
        engine.load()
        server = BackgroundGrpc(settings, engine)
        passes: dict[str, dict] = {codec: {} for codec in codecs}
        wer_figures = None
        try:
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as devices:
                for codec in codecs:
                    for n in streams:
                        scripts = [Script(clips[(2 * i) % len(clips)], clips[(2 * i + 1) % len(clips)])
                                   for i in range(n)]
                        before = _engine_totals()
                        runs = devices.submit(_streams_at_once, server.address, scripts, codec,
                                              opus_bitrate).result()
                        after = _engine_totals()
                        passes[codec][str(n)] = _summary(runs, (after[0] - before[0], after[1] - before[1]))
                if wer and (audio_dir / "manifest.jsonl").is_file():
                    wer_figures = _wer_pass(devices, server.address, audio_dir, codecs, opus_bitrate)
                elif wer:
                    wer_figures = {"skipped": f"no manifest.jsonl (references) in {audio_dir}"}
            peak = _client_peak_rss_mib(server.address, max(files, key=lambda p: p.stat().st_size)) if rss else None
        finally:
            server.stop()
            engine.close(10)
    return {
        "backbone": backbone, "device": "cpu", "cpu": cpu_model(), "threads": torch.get_num_threads(),
        "pacing": f"real time, {int(CHUNK_S * 1000)} ms chunks of 16 kHz audio (LINEAR16, or Ogg Opus pages)",
        "script": f"per stream: clip, {ENDPOINT_SILENCE_S:g} s silence (endpoint), clip cut "
                  f"{HALF_CLOSE_TAIL_S:g} s after its speech, half-close",
        "endpoint_silence_s": settings.stream_endpoint_silence_ms / 1000,
        "opus_bitrate": opus_bitrate if "opus" in codecs else None,
        "streams": passes,
        "wer": wer_figures,
        "device_client_peak_rss_mib": peak,
        "device_client_installed": _installed_bytes(),
    }
