"""Synthesized personal "speaker" datasets for training and evaluating per-user adapters.

Each speaker is a sentence list (one sentence per line, in domain vocabulary a base model tends to
get wrong) plus a voice and an acoustic chain, so that every speaker sounds distinct:

    sentence ─▶ espeak-ng / flite (voice, words per minute, pitch, small per-sentence jitter)
             ─▶ sox: resample to 16 kHz mono, ``effects`` (the room: reverb, EQ, ...)
             ─▶ numpy: additive white/pink/brown noise at ``snr_db`` (seeded per sentence)
             ─▶ sox: ``channel`` (the microphone or line: band-pass, compander, ...), peak level
             ─▶ 16 kHz mono 16-bit FLAC (or WAV) under ``<out_dir>/audio/``

and the output folder gets NeMo-style manifests ``train.jsonl``, ``dev.jsonl``, ``test.jsonl``
(see :mod:`splitasr.datasets.manifest`) plus ``synth.json`` recording what produced them.

Reproducibility: rendering is deterministic (sox runs in repeatable mode without dither, noise and
jitter are seeded from the sentence). Each file is named after a hash of everything that determines
its content (text, voice, effects, tool versions, this module's ``SYNTH_VERSION``), so a rerun skips
files that already exist and any change re-renders exactly the affected files. The split depends
only on the seed and the sentences: a sentence's rank is the hash of ``(seed, speaker, reference)``.

Built-in speakers live in ``speakers/speakers.json`` next to this module; a custom speaker is the
same JSON object (``load_speaker_specs(path)``), with ``sentences`` either a list or a file name
relative to the JSON file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shlex
import shutil
import struct
import subprocess
import tempfile
import threading
import time
import unicodedata
import wave
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInput, NotFound, SplitASRError
from ..progress import bar
from .manifest import write_manifest

log = logging.getLogger(__name__)

# Bump whenever the rendering pipeline changes in a way that changes the audio: invalidates the cache.
SYNTH_VERSION = 1
SAMPLE_RATE = 16_000
SPLIT_NAMES = ("train", "dev", "test")
DEFAULT_SPLITS = (0.8, 0.1, 0.1)
ENGINES = ("espeak-ng", "flite")
NOISE_COLORS = ("none", "white", "pink", "brown")
AUDIO_FORMATS = ("flac", "wav")
APT_PACKAGES = "espeak-ng sox flite"
# flite has no words-per-minute setting: speed maps to duration_stretch = FLITE_NOMINAL_WPM / speed
FLITE_NOMINAL_WPM = 170.0
_SUBPROCESS_TIMEOUT_S = 120
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class SynthesisError(SplitASRError):
    """Rendering a sentence failed (a TTS engine or sox returned an error)."""

    code = "synthesis_failed"


class MissingTool(SynthesisError):
    """A system program the synthesizer needs (espeak-ng, sox, flite) is not installed."""

    code = "missing_dependency"


# ----------------------------------------------------------------------------- text


def normalize_reference(text: str) -> str:
    """The manifest reference for a sentence: NFC, lowercase, punctuation and symbols dropped.

    Apostrophes survive only inside words (``don't``, ``o'clock``); hyphens and other punctuation
    become word breaks; whitespace collapses. NFC (not NFKC) keeps Hangul compatibility jamo as they
    are, so the Korean metrics' jamo normalization sees the text as written.
    """
    t = unicodedata.normalize("NFC", text)
    t = t.replace("\u2019", "'").replace("\u2018", "'").replace("\u02bc", "'").lower()
    t = "".join(c if c == "'" or unicodedata.category(c)[0] not in "PSC" else " " for c in t)
    t = re.sub(r"(?<!\w)'+|'+(?!\w)", " ", t)
    return " ".join(t.split())


def read_sentences(path: Path) -> tuple[str, ...]:
    """One sentence per line; blank lines and lines starting with ``#`` are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise NotFound(f"sentence list {path} does not exist") from None
    return tuple(s for s in (line.strip() for line in lines) if s and not s.startswith("#"))


# ----------------------------------------------------------------------------- speaker specs


@dataclass(frozen=True)
class SpeakerSpec:
    """How one synthetic speaker sounds and what it says.

    ``pitch`` is engine-native: espeak-ng's 0-99 scale, or flite's mean F0 in Hz.
    ``effects`` run before the noise is added (the room), ``channel`` after (the microphone/line).
    """

    id: str
    language: str  # the manifest ``lang`` (``en``, ``ko``)
    sentences: tuple[str, ...]
    voice: str
    engine: str = "espeak-ng"
    speed: int = 160  # words per minute
    pitch: int = 50
    speed_jitter: float = 0.0  # per-sentence speed change, a fraction (0.05 = ±5 %)
    pitch_jitter: int = 0  # per-sentence pitch change, engine units
    effects: tuple[str, ...] = ()
    noise: str = "none"
    snr_db: float | None = None
    channel: tuple[str, ...] = ()
    level_db: float = -3.0  # peak level of the result, dBFS
    description: str = ""

    def __post_init__(self) -> None:
        where = f"speaker {self.id!r}"
        if not _ID_RE.match(self.id) or self.id == "all":
            raise InvalidInput(f"{where}: id must be 1-64 chars of a-z, 0-9, '_' or '-' (and not 'all')")
        if self.engine not in ENGINES:
            raise InvalidInput(f"{where}: engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if not self.voice or self.voice.startswith("-"):
            raise InvalidInput(f"{where}: voice {self.voice!r} is not a voice name")
        if not self.language:
            raise InvalidInput(f"{where}: language is empty")
        if not 60 <= self.speed <= 450:
            raise InvalidInput(f"{where}: speed must be 60-450 words per minute, got {self.speed}")
        lo, hi = (0, 99) if self.engine == "espeak-ng" else (50, 400)
        if not lo <= self.pitch <= hi:
            raise InvalidInput(f"{where}: pitch must be {lo}-{hi} for {self.engine}, got {self.pitch}")
        if not 0 <= self.speed_jitter < 0.5 or self.pitch_jitter < 0:
            raise InvalidInput(f"{where}: speed_jitter must be in [0, 0.5) and pitch_jitter >= 0")
        if self.noise not in NOISE_COLORS:
            raise InvalidInput(f"{where}: noise must be one of {', '.join(NOISE_COLORS)}, got {self.noise!r}")
        if self.noise != "none" and (self.snr_db is None or not math.isfinite(self.snr_db)):
            raise InvalidInput(f"{where}: noise {self.noise!r} needs a finite snr_db")
        if not -40 <= self.level_db <= 0:
            raise InvalidInput(f"{where}: level_db must be between -40 and 0 dBFS, got {self.level_db}")
        if not self.sentences:
            raise InvalidInput(f"{where}: no sentences")
        seen: dict[str, int] = {}
        for i, s in enumerate(self.sentences, start=1):
            ref = normalize_reference(s)
            if not ref:
                raise InvalidInput(f"{where}: sentence {i} has no words: {s!r}")
            if s.startswith("-"):
                raise InvalidInput(f"{where}: sentence {i} starts with '-': {s!r}")
            if ref in seen:
                raise InvalidInput(f"{where}: sentence {i} repeats sentence {seen[ref]}: {s!r}")
            seen[ref] = i

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], base_dir: Path | None = None) -> SpeakerSpec:
        """Build from a JSON object; ``sentences`` is a list or a file name relative to ``base_dir``."""
        data = dict(obj)
        sid = data.get("id", "?")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInput(f"speaker {sid!r}: unknown field(s) {', '.join(unknown)}")
        for key in ("id", "language", "voice", "sentences"):
            if key not in data:
                raise InvalidInput(f"speaker {sid!r}: missing field {key!r}")
        sentences = data["sentences"]
        if isinstance(sentences, str):
            path = Path(sentences)
            if not path.is_absolute() and base_dir is not None:
                path = Path(base_dir) / path
            data["sentences"] = read_sentences(path)
        elif isinstance(sentences, list) and all(isinstance(s, str) for s in sentences):
            data["sentences"] = tuple(s.strip() for s in sentences if s.strip())
        else:
            raise InvalidInput(f"speaker {sid!r}: sentences must be a file name or a list of strings")
        for key in ("effects", "channel"):
            value = data.get(key, ())
            if isinstance(value, str):
                try:
                    data[key] = tuple(shlex.split(value))
                except ValueError as exc:
                    raise InvalidInput(f"speaker {sid!r}: cannot parse {key} {value!r}: {exc}") from None
            elif isinstance(value, (list, tuple)):
                data[key] = tuple(str(v) for v in value)
            else:
                raise InvalidInput(f"speaker {sid!r}: {key} must be a string or a list of strings")
        try:
            return cls(**data)
        except TypeError as exc:
            raise InvalidInput(f"speaker {sid!r}: {exc}") from None

    def summary(self) -> dict[str, Any]:
        """The spec without its sentences (for listings and ``synth.json``)."""
        d = asdict(self)
        d["sentences"] = len(self.sentences)
        d["effects"] = " ".join(self.effects)
        d["channel"] = " ".join(self.channel)
        return d


def load_speaker_specs(path: str | os.PathLike[str]) -> list[SpeakerSpec]:
    """Speakers from a JSON file: ``{"speakers": [...]}``, a list of objects, or a single object."""
    p = Path(path).expanduser()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotFound(f"speaker spec file {p} does not exist") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(data, dict) and "speakers" in data:
        data = data["speakers"]
    items = data if isinstance(data, list) else [data]
    if not all(isinstance(x, dict) for x in items):
        raise InvalidInput(f"{p}: expected speaker objects")
    specs = [SpeakerSpec.from_dict(x, base_dir=p.parent) for x in items]
    ids = [s.id for s in specs]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise InvalidInput(f"{p}: duplicate speaker id(s) {', '.join(dupes)}")
    return specs


@lru_cache(maxsize=1)
def _builtin() -> dict[str, SpeakerSpec]:
    root = resources.files(__package__).joinpath("speakers")
    with resources.as_file(root) as folder:
        return {s.id: s for s in load_speaker_specs(Path(folder) / "speakers.json")}


def list_speakers() -> list[SpeakerSpec]:
    """The built-in speakers, in the order of ``speakers.json``."""
    return list(_builtin().values())


def get_speaker(speaker: str | SpeakerSpec | Mapping[str, Any]) -> SpeakerSpec:
    """A built-in speaker by id, a spec, or a spec dict (sentences inline or an absolute path)."""
    if isinstance(speaker, SpeakerSpec):
        return speaker
    if isinstance(speaker, Mapping):
        return SpeakerSpec.from_dict(speaker)
    specs = _builtin()
    if speaker not in specs:
        raise NotFound(f"unknown speaker {speaker!r}; built-in speakers: {', '.join(specs)}")
    return specs[speaker]


# ----------------------------------------------------------------------------- system tools


def _missing(program: str, why: str) -> MissingTool:
    return MissingTool(
        f"{program} is not installed or not on PATH ({why}). Install the Debian/Ubuntu packages "
        f"with `sudo apt-get install {APT_PACKAGES}` (or run scripts/install-system-deps.sh)."
    )


@cache
def _tool_version(program: str) -> str:
    exe = shutil.which(program)
    if exe is None:
        raise _missing(program, "needed to synthesize speech")
    try:
        out = subprocess.run([exe, "--version"], check=False, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _missing(program, f"running it failed: {exc}") from None
    # only the version number: install paths in the banner must not change the cache key
    m = re.search(r"\d+\.\d+[\w.+~-]*", out.stdout + out.stderr)
    return m.group(0) if m else "unknown"


@cache
def _flite_voices() -> frozenset[str]:
    out = subprocess.run(["flite", "-lv"], check=False, capture_output=True, text=True, timeout=30)
    return frozenset((out.stdout + out.stderr).replace("Voices available:", " ").split())


@cache
def _sox_formats() -> frozenset[str]:
    out = subprocess.run(["sox", "-h"], check=False, capture_output=True, text=True, timeout=30)
    m = re.search(r"AUDIO FILE FORMATS:(.*)", out.stdout)
    return frozenset(m.group(1).split()) if m else frozenset()


def check_tools(specs: Iterable[SpeakerSpec], audio_format: str = "flac") -> dict[str, str]:
    """Raise :class:`MissingTool` unless sox and every engine the speakers use are installed.

    Returns the tool versions (they are part of each file's cache key and of ``synth.json``).
    """
    versions = {"sox": _tool_version("sox")}
    for engine in sorted({s.engine for s in specs}):
        versions[engine] = _tool_version(engine)
    if audio_format == "flac" and "flac" not in _sox_formats():
        raise MissingTool(
            "this sox cannot write FLAC; install `libsox-fmt-all` or synthesize with audio_format='wav'"
        )
    return versions


# ----------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class _Job:
    spec: SpeakerSpec
    text: str
    speed: int
    pitch: int
    noise_seed: int
    out_path: Path
    audio_format: str


def _run(cmd: Sequence[str], what: str, stdin: bytes | None = None) -> bytes:
    try:
        proc = subprocess.run(
            list(cmd), check=False, input=stdin, capture_output=True, timeout=_SUBPROCESS_TIMEOUT_S
        )
    except FileNotFoundError:
        raise _missing(cmd[0], f"needed for {what}") from None
    except subprocess.TimeoutExpired:
        raise SynthesisError(f"{what}: {cmd[0]} timed out after {_SUBPROCESS_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()[-800:]
        raise SynthesisError(f"{what}: `{shlex.join(cmd)}` failed (exit {proc.returncode}): {err}")
    return proc.stdout


def _tts_wav(job: _Job, what: str) -> bytes:
    spec = job.spec
    if spec.engine == "espeak-ng":
        cmd = [
            "espeak-ng", "-v", spec.voice, "-s", str(job.speed), "-p", str(job.pitch), "-b", "1", "--stdout",
        ]  # fmt: skip
        return _run(cmd, what, stdin=job.text.encode("utf-8"))
    with tempfile.TemporaryDirectory(prefix="splitasr-flite-") as tmp:
        txt, wav = Path(tmp) / "in.txt", Path(tmp) / "out.wav"
        txt.write_text(job.text + "\n", encoding="utf-8")
        cmd = [
            "flite", "-voice", spec.voice,
            "--setf", f"duration_stretch={FLITE_NOMINAL_WPM / job.speed:.4f}",
            "--setf", f"int_f0_target_mean={job.pitch}",
            "-f", str(txt), "-o", str(wav),
        ]  # fmt: skip
        _run(cmd, what)
        return wav.read_bytes()


def _noise(n: int, color: str, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(n)
    if color == "white" or n < 4:
        out = white
    else:
        spectrum = np.fft.rfft(white)
        f = np.fft.rfftfreq(n, d=1.0 / SAMPLE_RATE)
        f[0] = f[1]
        spectrum /= np.sqrt(f) if color == "pink" else f
        spectrum[0] = 0.0
        out = np.fft.irfft(spectrum, n)
    rms = float(np.sqrt(np.mean(out**2)))
    return out / rms if rms > 0 else out


def active_rms(x: np.ndarray, frame: int = 320, floor_db: float = -40.0) -> float:
    """RMS over the frames within ``floor_db`` of the loudest (speech, not the pauses)."""
    n = len(x) // frame
    if n == 0:
        return float(np.sqrt(np.mean(x**2))) if len(x) else 0.0
    energy = np.mean(x[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1)
    peak = float(energy.max())
    if peak <= 0:
        return 0.0
    return float(np.sqrt(energy[energy >= peak * 10 ** (floor_db / 10)].mean()))


def _render(job: _Job) -> None:
    spec = job.spec
    what = f"speaker {spec.id!r}, sentence {job.text!r}"
    wav = _tts_wav(job, what)
    raw_f32 = ["-t", "raw", "-e", "floating-point", "-b", "32", "-c", "1", "-r", str(SAMPLE_RATE)]
    to_room = ["sox", "-R", "-D", "-V1", "-t", "wav", "-", *raw_f32, "-", "rate", "-h", str(SAMPLE_RATE)]
    room = _run([*to_room, *spec.effects], what, stdin=wav)
    x = np.frombuffer(room, dtype="<f4").astype(np.float64)
    level = active_rms(x)
    if len(x) == 0 or level < 1e-5:
        raise SynthesisError(f"{what}: the engine produced silence")
    if spec.noise != "none":
        rng = np.random.default_rng(job.noise_seed)
        x = x + _noise(len(x), spec.noise, rng) * level / 10 ** (spec.snr_db / 20)
    tmp = job.out_path.with_name(f".{job.out_path.stem}.{os.getpid()}.{threading.get_ident()}.tmp")
    out_fmt = ["-t", job.audio_format, "-e", "signed-integer", "-b", "16", "-c", "1", "-r", str(SAMPLE_RATE)]
    try:
        _run(
            ["sox", "-R", "-D", "-V1", *raw_f32, "-", *out_fmt, str(tmp), *spec.channel,
             "gain", "-n", f"{spec.level_db:g}"],
            what,
            stdin=x.astype("<f4").tobytes(),
        )  # fmt: skip
        os.replace(tmp, job.out_path)
    finally:
        tmp.unlink(missing_ok=True)


def audio_info(path: Path) -> tuple[int, int, int] | None:
    """``(sample_rate, channels, frames)`` read from a FLAC or WAV header, or None if unreadable."""
    try:
        if path.suffix == ".wav":
            with wave.open(str(path), "rb") as w:
                return w.getframerate(), w.getnchannels(), w.getnframes()
        with path.open("rb") as fh:
            head = fh.read(42)
        if len(head) < 42 or head[:4] != b"fLaC" or head[4] & 0x7F != 0:
            return None
        (packed,) = struct.unpack(">Q", head[18:26])
        rate = packed >> 44
        channels = ((packed >> 41) & 0x7) + 1
        frames = packed & 0xFFFFFFFFF
        return rate, channels, frames
    except (OSError, EOFError, wave.Error):
        return None


def _cache_key(
    spec: SpeakerSpec, text: str, speed: int, pitch: int, fmt: str, tools: Mapping[str, str]
) -> str:
    payload = {
        "synth_version": SYNTH_VERSION,
        "engine": spec.engine,
        "engine_version": tools.get(spec.engine, ""),
        "sox_version": tools.get("sox", ""),
        "voice": spec.voice,
        "speed": speed,
        "pitch": pitch,
        "effects": list(spec.effects),
        "noise": spec.noise,
        "snr_db": spec.snr_db,
        "channel": list(spec.channel),
        "level_db": spec.level_db,
        "sample_rate": SAMPLE_RATE,
        "format": fmt,
        "text": text,
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def _unit(seed_material: str) -> tuple[float, float, int]:
    """Two uniforms in [-1, 1) and a 63-bit integer, derived from a string (stable across runs)."""
    d = hashlib.sha256(seed_material.encode("utf-8")).digest()
    a, b, c = struct.unpack(">QQQ", d[:24])
    return a / 2**63 - 1.0, b / 2**63 - 1.0, c >> 1


def _jittered(spec: SpeakerSpec, text: str) -> tuple[int, int, int]:
    u, v, seed = _unit(f"{spec.id}\0{text}")
    speed = round(spec.speed * (1.0 + u * spec.speed_jitter))
    pitch = round(spec.pitch + v * spec.pitch_jitter)
    lo, hi = (0, 99) if spec.engine == "espeak-ng" else (50, 400)
    return max(60, speed), min(hi, max(lo, pitch)), seed


# ----------------------------------------------------------------------------- splits


def split_counts(n: int, splits: Sequence[float | int]) -> tuple[int, int, int]:
    """Sizes of (train, dev, test) from counts (all ints) or fractions (any float) of ``n`` sentences."""
    if len(splits) != 3:
        raise InvalidInput(f"splits must be (train, dev, test), got {tuple(splits)!r}")
    if any(isinstance(s, bool) or not isinstance(s, (int, float)) or s < 0 for s in splits):
        raise InvalidInput(f"split sizes must be non-negative numbers, got {tuple(splits)!r}")
    if all(isinstance(s, int) for s in splits):
        counts = tuple(int(s) for s in splits)
        if sum(counts) > n:
            raise InvalidInput(f"splits {counts} ask for {sum(counts)} sentences but the speaker has {n}")
    else:
        if any(s > 1 for s in splits):
            raise InvalidInput(
                f"splits {tuple(splits)!r} mix counts and fractions: give whole numbers of sentences "
                "or fractions in [0, 1]"
            )
        total = float(sum(splits))
        if total > 1.0 + 1e-9:
            raise InvalidInput(f"split fractions {tuple(splits)!r} add up to {total:g} > 1")
        dev, test = round(splits[1] * n), round(splits[2] * n)
        train = n - dev - test if abs(total - 1.0) < 1e-9 else round(splits[0] * n)
        counts = (max(0, min(train, n - dev - test)), dev, test)
    if sum(counts) == 0:
        raise InvalidInput("splits select no sentences")
    return counts  # type: ignore[return-value]


def assign_splits(spec: SpeakerSpec, splits: Sequence[float | int], seed: int) -> dict[str, list[int]]:
    """Sentence indices for each split. Depends only on the seed, speaker id and the references, so
    adding a sentence to a list moves no other sentence between splits of the same sizes."""
    counts = split_counts(len(spec.sentences), splits)
    refs = [normalize_reference(s) for s in spec.sentences]
    order = sorted(
        range(len(refs)), key=lambda i: hashlib.sha256(f"{seed}\0{spec.id}\0{refs[i]}".encode()).digest()
    )
    out: dict[str, list[int]] = {}
    start = 0
    for name, count in zip(SPLIT_NAMES, counts):
        out[name] = sorted(order[start : start + count])
        start += count
    return out


# ----------------------------------------------------------------------------- public API


def synthesize_speaker(
    speaker: str | SpeakerSpec | Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    splits: Sequence[float | int] = DEFAULT_SPLITS,
    seed: int = 0,
    workers: int = 2,
    audio_format: str = "flac",
    quiet: bool = True,
) -> dict[str, Path]:
    """Render one speaker's sentences into ``out_dir`` and write its manifests.

    ``splits``: (train, dev, test) as sentence counts (ints; only that many sentences are rendered)
    or fractions (floats). Returns ``{"train": path, "dev": path, "test": path}`` (manifests, each
    written even when empty). Audio goes to ``out_dir/audio/<speaker>-<hash>.<format>``; files that
    already exist under their content hash are reused. ``quiet=False``: a progress bar on a terminal.
    """
    spec = get_speaker(speaker)
    if audio_format not in AUDIO_FORMATS:
        raise InvalidInput(f"audio_format must be one of {', '.join(AUDIO_FORMATS)}, got {audio_format!r}")
    if workers < 1:
        raise InvalidInput(f"workers must be >= 1, got {workers}")
    tools = check_tools([spec], audio_format)
    if spec.engine == "flite" and spec.voice not in _flite_voices() and not Path(spec.voice).is_file():
        raise InvalidInput(
            f"speaker {spec.id!r}: flite voice {spec.voice!r} is neither built in "
            f"({', '.join(sorted(_flite_voices()))}) nor a .flitevox file"
        )
    assignment = assign_splits(spec, splits, seed)
    out = Path(out_dir)
    audio_dir = out / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)

    jobs: dict[int, _Job] = {}
    for idx in sorted(i for ids in assignment.values() for i in ids):
        text = spec.sentences[idx]
        speed, pitch, noise_seed = _jittered(spec, text)
        key = _cache_key(spec, text, speed, pitch, audio_format, tools)
        path = audio_dir / f"{spec.id}-{key[:20]}.{audio_format}"
        jobs[idx] = _Job(spec, text, speed, pitch, noise_seed, path, audio_format)

    def valid(path: Path) -> tuple[int, int, int] | None:
        info = audio_info(path) if path.is_file() else None
        return info if info and info[0] == SAMPLE_RATE and info[1] == 1 and info[2] > 0 else None

    todo = [j for j in jobs.values() if valid(j.out_path) is None]
    t0 = time.perf_counter()
    if todo:
        with ThreadPoolExecutor(max_workers=min(workers, len(todo)), thread_name_prefix="synth") as pool, \
                bar(len(todo), f"synth {spec.id}", "file", quiet) as progress:
            futures = [pool.submit(_render, j) for j in todo]
            try:
                for fut in futures:
                    fut.result()
                    progress.update(1)
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
    log.info(
        "speaker %s: %d files rendered, %d reused from cache, %.1f s",
        spec.id, len(todo), len(jobs) - len(todo), time.perf_counter() - t0,
    )  # fmt: skip

    manifests: dict[str, Path] = {}
    for name in SPLIT_NAMES:
        rows = []
        for idx in assignment[name]:
            job = jobs[idx]
            info = valid(job.out_path)
            if info is None:
                raise SynthesisError(f"{job.out_path} was not written correctly (16 kHz mono expected)")
            rows.append(
                {
                    "audio_filepath": job.out_path.relative_to(out).as_posix(),
                    "text": normalize_reference(job.text),
                    "duration": round(info[2] / info[0], 4),
                    "speaker": spec.id,
                    "lang": spec.language,
                }
            )
        manifests[name] = write_manifest(out / f"{name}.jsonl", rows)

    provenance = {
        "synth_version": SYNTH_VERSION,
        "speaker": spec.summary(),
        "seed": seed,
        "splits": list(splits),
        "counts": {name: len(assignment[name]) for name in SPLIT_NAMES},
        "tools": tools,
        "sample_rate": SAMPLE_RATE,
        "audio_format": audio_format,
    }
    (out / "synth.json").write_text(
        json.dumps(provenance, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return manifests


def synthesize_all(
    out_root: str | os.PathLike[str],
    *,
    speakers: Iterable[str | SpeakerSpec | Mapping[str, Any]] | None = None,
    splits: Sequence[float | int] = DEFAULT_SPLITS,
    seed: int = 0,
    workers: int = 2,
    audio_format: str = "flac",
    quiet: bool = True,
) -> dict[str, dict[str, Path]]:
    """Every built-in speaker (or ``speakers``) into ``out_root/<speaker id>/``.

    Also writes combined multi-speaker manifests ``out_root/{train,dev,test}.jsonl`` (paths relative
    to ``out_root``), returned under the key ``"all"``.
    """
    specs = [get_speaker(s) for s in speakers] if speakers is not None else list_speakers()
    ids = [s.id for s in specs]
    if len(set(ids)) != len(ids):
        raise InvalidInput(f"duplicate speaker ids in {ids}")
    check_tools(specs, audio_format)
    root = Path(out_root)
    result: dict[str, dict[str, Path]] = {}
    for spec in specs:
        result[spec.id] = synthesize_speaker(
            spec, root / spec.id, splits=splits, seed=seed, workers=workers, audio_format=audio_format, quiet=quiet
        )
    combined: dict[str, Path] = {}
    for name in SPLIT_NAMES:
        rows: list[dict[str, Any]] = []
        for spec in specs:
            manifest = result[spec.id][name]
            for line in manifest.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    row["audio_filepath"] = f"{spec.id}/{row['audio_filepath']}"
                    rows.append(row)
        combined[name] = write_manifest(root / f"{name}.jsonl", rows)
    result["all"] = combined
    return result


__all__ = [
    "SAMPLE_RATE",
    "SYNTH_VERSION",
    "MissingTool",
    "SpeakerSpec",
    "SynthesisError",
    "assign_splits",
    "audio_info",
    "check_tools",
    "get_speaker",
    "list_speakers",
    "load_speaker_specs",
    "normalize_reference",
    "split_counts",
    "synthesize_all",
    "synthesize_speaker",
]
