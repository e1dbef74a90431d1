"""Check a training job before it is queued, and lay out its recordings in the job's work folder.

Everything a client can get wrong is found here, before any training starts, and raised as
:class:`~splitasr.errors.InvalidInput` (400 / INVALID_ARGUMENT) or :class:`~splitasr.errors.TooLarge`
(413 / RESOURCE_EXHAUSTED) with a message that names the field, the manifest line or the part.

The manifest is NeMo-style JSONL: one object per line with ``audio_filepath`` (which uploaded part
holds the recording: its file name, or a path whose last component is that file name) and ``text``
(the transcript); ``lang`` is optional (default English) and ``duration`` and ``speaker`` are read by
other tools but not needed here (the duration is measured from the audio). Every recording is
decoded once here; the worker trains on 16 kHz WAV copies in the work folder, never on the client's
bytes or file names.
"""

from __future__ import annotations

import io
import json
import math
import posixpath
import random
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..adapters import registered_kinds, resolve_targets
from ..adapters.bounds import MAX_ABS_VALUE
from ..audio import SAMPLE_RATE_HZ, decode_audio, encode_wav_pcm16
from ..config import Settings
from ..datasets.manifest import Utterance, write_manifest
from ..errors import BadAudio, InvalidInput, TooLarge
from ..storage.store import check_name
from .records import JobParameters

MAX_UTTERANCE_SECONDS = 30.0  # one Whisper window
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
RESERVED_NAMES = frozenset({"jobs"})  # REST: /v1/adapters/jobs is the job list, not an adapter
MAX_DEV_SHARE = 0.5
MAX_BATCH_SIZE = 64
MAX_LEARNING_RATE = 0.1
GATES = ("lowrank", "output")
MANIFEST_NAME = "manifest.jsonl"


@dataclass(frozen=True)
class JobLimits:
    """What this server accepts (from its settings and its backbone)."""

    min_utterances: int
    max_utterances: int
    min_audio_seconds: float
    max_audio_seconds: float
    max_upload_bytes: int
    max_epochs: int
    max_rank: int
    max_experts: int
    linear_names: tuple[str, ...]  # the backbone's adaptable linears
    served_targets: frozenset[str]  # the linears the serving bank adapts (SPLITASR_ADAPTER_TARGETS)
    languages: tuple[str, ...]  # the backbone's language codes; () = English only

    @classmethod
    def from_settings(cls, settings: Settings, linear_names: Sequence[str], languages: Sequence[str]) -> JobLimits:
        return cls(settings.train_min_utterances, settings.train_max_utterances, settings.train_min_audio_seconds,
                   settings.train_max_audio_seconds, settings.train_max_upload_bytes, settings.train_max_epochs,
                   settings.adapter_max_rank, settings.adapter_max_experts, tuple(linear_names),
                   frozenset(resolve_targets(settings.adapter_targets, linear_names)), tuple(languages))


@dataclass(frozen=True)
class JobRequest:
    """A job as a transport received it: parameters, the manifest and the recordings by part name."""

    parameters: JobParameters
    name: str | None
    store: bool
    manifest: bytes
    parts: Mapping[str, bytes]

    @property
    def upload_bytes(self) -> int:
        return len(self.manifest) + sum(len(b) for b in self.parts.values())


@dataclass(frozen=True)
class ManifestLine:
    line: int  # 1-based
    audio: str  # audio_filepath as written
    text: str
    lang: str


@dataclass(frozen=True)
class PreparedJob:
    """A job that passed every check; its recordings are in ``work_dir``."""

    work_dir: Path
    train_manifest: Path
    dev_manifest: Path | None
    utterances: int
    train_utterances: int
    dev_utterances: int
    audio_seconds: float


# parameters ---------------------------------------------------------------------------------------
def check_parameters(params: JobParameters, name: str | None, store: bool, limits: JobLimits) -> JobParameters:
    """Raise InvalidInput naming the first field outside this server's limits; fill kind defaults."""
    kinds = [k for k in registered_kinds() if k in ("lora", "glora", "saml")]
    if params.kind not in kinds:
        raise InvalidInput(f"kind must be one of {', '.join(kinds)}, got {params.kind!r}")
    if not 1 <= params.rank <= limits.max_rank:
        raise InvalidInput(f"rank must be between 1 and {limits.max_rank} (SPLITASR_ADAPTER_MAX_RANK), "
                           f"got {params.rank}")
    if params.alpha is not None and not (math.isfinite(params.alpha) and params.alpha > 0):
        raise InvalidInput(f"alpha must be a positive number, got {params.alpha}")
    if params.alpha is not None and params.alpha / params.rank > MAX_ABS_VALUE:
        # the bound an upload of the result would meet: refused now, not after a whole training run
        raise InvalidInput(f"alpha {params.alpha:g} with rank {params.rank} gives a scale alpha/rank = "
                           f"{params.alpha / params.rank:g}, over the limit of {MAX_ABS_VALUE:g}", param="alpha")
    params = _kind_options(params, limits)
    _check_targets(params.targets, limits)
    if not 1 <= params.epochs <= limits.max_epochs:
        raise InvalidInput(f"epochs must be between 1 and {limits.max_epochs} (SPLITASR_TRAIN_MAX_EPOCHS), "
                           f"got {params.epochs}")
    if not 1 <= params.batch_size <= MAX_BATCH_SIZE:
        raise InvalidInput(f"batch_size must be between 1 and {MAX_BATCH_SIZE}, got {params.batch_size}")
    if not (math.isfinite(params.learning_rate) and 0 < params.learning_rate <= MAX_LEARNING_RATE):
        raise InvalidInput(f"learning_rate must be in (0, {MAX_LEARNING_RATE}], got {params.learning_rate}")
    if not 0 <= params.seed < 2**31:
        raise InvalidInput(f"seed must be between 0 and 2147483647, got {params.seed}")
    if not (math.isfinite(params.dev) and 0 <= params.dev <= MAX_DEV_SHARE):
        raise InvalidInput(f"dev must be a share between 0 and {MAX_DEV_SHARE} of the utterances, got {params.dev}")
    _check_name(name, store)
    return params


def _kind_options(params: JobParameters, limits: JobLimits) -> JobParameters:
    if params.gate is not None and params.kind != "glora":
        raise InvalidInput(f"gate applies to kind glora only (this job's kind is {params.kind})")
    if params.experts is not None and params.kind != "saml":
        raise InvalidInput(f"experts applies to kind saml only (this job's kind is {params.kind})")
    if params.kind == "glora":
        gate = params.gate or "lowrank"
        if gate not in GATES:
            raise InvalidInput(f"gate must be one of {', '.join(GATES)}, got {gate!r}")
        return replace(params, gate=gate)
    if params.kind == "saml":
        experts = 4 if params.experts is None else params.experts
        if not 2 <= experts <= limits.max_experts:
            raise InvalidInput(f"experts must be between 2 and {limits.max_experts} "
                               f"(SPLITASR_ADAPTER_MAX_EXPERTS), got {experts}")
        return replace(params, experts=experts)
    return params


def _check_targets(targets: str, limits: JobLimits) -> None:
    modules = set(resolve_targets(targets, limits.linear_names))  # InvalidInput for an unknown preset/glob
    unserved = sorted(modules - limits.served_targets)
    if unserved:
        raise InvalidInput(f"targets {targets!r} include {len(unserved)} layer(s) this server does not adapt "
                           f"(SPLITASR_ADAPTER_TARGETS), e.g. {unserved[0]!r}")


def _check_name(name: str | None, store: bool) -> None:
    if not store:
        if name:
            raise InvalidInput("name is for storing the adapter; with store=false nothing is stored: leave name out")
        return
    if not name:
        raise InvalidInput("name is required: the adapter is stored under it (or send store=false to only "
                           "download the file)")
    check_name(name)
    if name in RESERVED_NAMES:
        raise InvalidInput(f"the adapter name {name!r} is reserved; choose another")


# uploads ------------------------------------------------------------------------------------------
def unpack_zip(data: bytes, max_bytes: int) -> tuple[bytes, dict[str, bytes]]:
    """(manifest, parts) from a zip holding ``manifest.jsonl`` (or one ``*.jsonl``) and the recordings.

    Sizes are checked against ``max_bytes`` before anything is inflated, and again while reading.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [i for i in archive.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise InvalidInput(f"archive is not a readable zip file ({exc})") from None
    if sum(i.file_size for i in members) > max_bytes:
        raise TooLarge(f"archive inflates to more than the job upload limit of {max_bytes} bytes "
                       "(SPLITASR_TRAIN_MAX_UPLOAD_BYTES)")
    manifests = [i for i in members if i.filename == MANIFEST_NAME] or [
        i for i in members if i.filename.endswith(".jsonl") and "/" not in i.filename]
    if len(manifests) != 1:
        raise InvalidInput(f"archive must hold one manifest at its top level ({MANIFEST_NAME}), "
                           f"found {len(manifests)}")
    parts: dict[str, bytes] = {}
    budget = max_bytes
    for info in members:
        if info.flag_bits & 0x1:
            raise InvalidInput(f"archive member {_shown(info.filename)} is encrypted")
        try:
            with archive.open(info) as member:
                body = member.read(budget + 1)
        except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError) as exc:
            raise InvalidInput(f"archive member {_shown(info.filename)} cannot be read ({exc})") from None
        budget -= len(body)
        if budget < 0:
            raise TooLarge(f"archive inflates to more than the job upload limit of {max_bytes} bytes")
        parts[info.filename] = body
    return parts.pop(manifests[0].filename), parts


def parse_manifest(data: bytes, limits: JobLimits) -> list[ManifestLine]:
    """The manifest's lines, each checked for shape, a transcript and a language this backbone has."""
    if not data.strip():
        raise InvalidInput("manifest is empty: send one JSON line per recording (audio_filepath, text)")
    if len(data) > MAX_MANIFEST_BYTES:
        raise TooLarge(f"manifest is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"manifest is not UTF-8 text ({exc.reason})") from None
    lines = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if raw.strip():
            lines.append(_manifest_line(raw, number, limits))
            if len(lines) > limits.max_utterances:
                break
    return lines


def _manifest_line(raw: str, number: int, limits: JobLimits) -> ManifestLine:
    where = f"manifest line {number}"
    try:
        row = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise InvalidInput(f"{where}: expected a JSON object, got {type(row).__name__}")
    audio, text, lang = row.get("audio_filepath"), row.get("text"), row.get("lang", "en")
    if not isinstance(audio, str) or not audio.strip():
        raise InvalidInput(f"{where}: 'audio_filepath' must name an uploaded recording")
    if not isinstance(text, str):
        raise InvalidInput(f"{where}: 'text' (the transcript) must be a string")
    if not text.strip():
        raise InvalidInput(f"{where}: the transcript is empty; every recording needs the words spoken in it")
    if row.get("offset"):
        raise InvalidInput(f"{where}: 'offset' is not supported; send each utterance as its own recording")
    if not isinstance(lang, str) or not _known_language(lang, limits):
        shown = ", ".join(limits.languages[:12]) + (" ..." if len(limits.languages) > 12 else "")
        raise InvalidInput(f"{where}: language {lang!r} is not one this backbone knows ({shown or 'en only'})")
    return ManifestLine(number, audio, text.strip(), lang)


def _known_language(lang: str, limits: JobLimits) -> bool:
    return lang in limits.languages if limits.languages else lang == "en"


def match_parts(lines: Sequence[ManifestLine], parts: Mapping[str, bytes]) -> list[bytes]:
    """The recording each line names: a part of exactly that path, or of that file name when unique."""
    by_path = {_normal(name): name for name in parts}
    if len(by_path) != len(parts):
        raise InvalidInput("two uploaded recordings have the same name")
    by_base: dict[str, list[str]] = {}
    for name in parts:
        by_base.setdefault(posixpath.basename(_normal(name)), []).append(name)
    used: set[str] = set()
    out = []
    for line in lines:
        wanted = _normal(line.audio)
        name = by_path.get(wanted)
        if name is None:
            candidates = by_base.get(posixpath.basename(wanted), [])
            if len(candidates) > 1:
                raise InvalidInput(f"manifest line {line.line}: {_shown(line.audio)} matches several uploaded "
                                   "recordings by file name; upload them under their full paths")
            name = candidates[0] if candidates else None
        if name is None:
            raise InvalidInput(f"manifest line {line.line}: recording {_shown(line.audio)} was not uploaded "
                               "(no part of that name)")
        used.add(name)
        out.append(parts[name])
    unused = sorted(set(parts) - used)
    if unused:
        raise InvalidInput(f"{len(unused)} uploaded file(s) are not named by any manifest line, "
                           f"e.g. {_shown(unused[0])}")
    return out


def _normal(path: str) -> str:
    return posixpath.normpath(path.replace("\\", "/")).lstrip("/")


def _shown(value: str, limit: int = 80) -> str:
    return repr(value) if len(value) <= limit else repr(value[:limit]) + "..."


def check_counts(count: int, limits: JobLimits) -> None:
    if count < limits.min_utterances:
        raise InvalidInput(f"too few utterances: {count}; a job needs at least {limits.min_utterances} "
                           "(SPLITASR_TRAIN_MIN_UTTERANCES)")
    if count > limits.max_utterances:
        raise InvalidInput(f"too many utterances: a job takes at most {limits.max_utterances} "
                           "(SPLITASR_TRAIN_MAX_UTTERANCES)")


def decode_recordings(lines: Sequence[ManifestLine], blobs: Sequence[bytes]) -> list:
    """Each recording as 16 kHz samples; BadAudio names the manifest line for anything undecodable
    or longer than one 30 s window."""
    audios = []
    for line, blob in zip(lines, blobs):
        try:
            audio = decode_audio(blob, max_seconds=MAX_UTTERANCE_SECONDS)
        except BadAudio as exc:
            raise BadAudio(f"manifest line {line.line}: recording {_shown(line.audio)}: {exc} "
                           f"(each utterance must be decodable audio of at most {MAX_UTTERANCE_SECONDS:g} s)") from None
        audios.append(audio)
    return audios


def check_audio_total(seconds: float, limits: JobLimits) -> None:
    if seconds < limits.min_audio_seconds:
        raise InvalidInput(f"too little audio: the recordings hold {seconds:.1f} s in all; a job needs at least "
                           f"{limits.min_audio_seconds:g} s (SPLITASR_TRAIN_MIN_AUDIO_SECONDS)")
    if seconds > limits.max_audio_seconds:
        raise InvalidInput(f"too much audio: {seconds:.0f} s in all; a job takes at most "
                           f"{limits.max_audio_seconds:g} s (SPLITASR_TRAIN_MAX_AUDIO_SECONDS)")


def dev_indices(count: int, share: float, seed: int) -> set[int]:
    """Which utterances are held out for early stopping: a seeded draw of round(share × count), at
    least one when the share is not 0, and never all of them."""
    if share <= 0:
        return set()
    n = min(count - 1, max(1, round(share * count)))
    return set(random.Random(seed).sample(range(count), n))


# the whole check ----------------------------------------------------------------------------------
def prepare_job(request: JobRequest, limits: JobLimits, work_dir: Path) -> PreparedJob:
    """Check ``request`` completely, then write its recordings and manifests into ``work_dir``.

    Nothing is written unless every check passed; ``work_dir`` must not exist yet.
    """
    if request.upload_bytes > limits.max_upload_bytes:
        raise TooLarge(f"job upload of {request.upload_bytes} bytes exceeds the limit of {limits.max_upload_bytes} "
                       "bytes (SPLITASR_TRAIN_MAX_UPLOAD_BYTES)")
    lines = parse_manifest(request.manifest, limits)
    check_counts(len(lines), limits)
    blobs = match_parts(lines, request.parts)
    audios = decode_recordings(lines, blobs)
    seconds = sum(len(a) for a in audios) / SAMPLE_RATE_HZ
    check_audio_total(seconds, limits)
    held_out = dev_indices(len(lines), request.parameters.dev, request.parameters.seed)
    work_dir.mkdir(parents=True, mode=0o700)
    (work_dir / "audio").mkdir(mode=0o700)
    train, dev = [], []
    for index, (line, audio) in enumerate(zip(lines, audios)):
        path = work_dir / "audio" / f"{index:05d}.wav"
        path.write_bytes(encode_wav_pcm16(audio))
        utterance = Utterance(path, line.text, round(len(audio) / SAMPLE_RATE_HZ, 4), "job", line.lang)
        (dev if index in held_out else train).append(utterance)
    train_manifest = write_manifest(work_dir / "train.jsonl", train)
    dev_manifest = write_manifest(work_dir / "dev.jsonl", dev) if dev else None
    return PreparedJob(work_dir, train_manifest, dev_manifest, len(lines), len(train), len(dev), round(seconds, 3))
