"""NeMo-style JSONL manifests: one utterance per line.

Each line is a JSON object with at least::

    {"audio_filepath": "audio/x.flac", "text": "reference words", "duration": 2.31,
     "speaker": "cardio_nurse", "lang": "en"}

``audio_filepath`` may be absolute or relative; relative paths are resolved against the folder that
holds the manifest, so a dataset folder can be moved or copied as a whole. Training and evaluation
read manifests only through :func:`load_manifest`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidInput, NotFound

REQUIRED_KEYS = ("audio_filepath", "text", "duration", "speaker", "lang")


class ManifestError(InvalidInput):
    """A manifest line is malformed; the message names the file and the 1-based line number."""

    code = "invalid_manifest"
    exit_code = 1  # a bad input file, not a bad command line


@dataclass(frozen=True)
class Utterance:
    audio_path: Path  # absolute
    text: str
    duration: float  # seconds
    speaker: str
    lang: str

    def to_json(self, relative_to: Path | None = None) -> dict[str, Any]:
        """The manifest row for this utterance; the audio path relative to ``relative_to`` if given."""
        path = self.audio_path
        if relative_to is not None:
            path = Path(os.path.relpath(self.audio_path, Path(relative_to).resolve()))
        return {
            "audio_filepath": path.as_posix(),
            "text": self.text,
            "duration": self.duration,
            "speaker": self.speaker,
            "lang": self.lang,
        }


def _parse_line(raw: str, base: Path, where: str, check_files: bool) -> Utterance:
    try:
        row = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in row]
    if missing:
        raise ManifestError(f"{where}: missing required key(s) {', '.join(missing)}")
    for key in ("audio_filepath", "text", "speaker", "lang"):
        if not isinstance(row[key], str):
            raise ManifestError(f"{where}: {key!r} must be a string, got {type(row[key]).__name__}")
    if not row["audio_filepath"]:
        raise ManifestError(f"{where}: 'audio_filepath' is empty")
    duration = row["duration"]
    if isinstance(duration, bool) or not isinstance(duration, (int, float)):
        raise ManifestError(f"{where}: 'duration' must be a number, got {type(duration).__name__}")
    if not math.isfinite(duration) or duration <= 0:
        raise ManifestError(f"{where}: 'duration' must be a positive number of seconds, got {duration}")
    path = Path(row["audio_filepath"]).expanduser()
    if not path.is_absolute():
        path = base / path
    path = Path(os.path.normpath(path))
    if check_files and not path.is_file():
        raise ManifestError(f"{where}: audio file {row['audio_filepath']!r} not found (looked at {path})")
    return Utterance(path, row["text"], float(duration), row["speaker"], row["lang"])


def load_manifest(path: str | os.PathLike[str], *, check_files: bool = True) -> list[Utterance]:
    """Read a JSONL manifest into :class:`Utterance` objects (absolute audio paths).

    Blank lines are skipped. Raises :class:`~splitasr.errors.NotFound` if the manifest does not exist
    and :class:`ManifestError` (an ``InvalidInput``) naming the line for a malformed line: bad JSON,
    a missing or mistyped key, a non-positive duration, or (with ``check_files``) a missing audio file.
    """
    manifest = Path(path).expanduser()
    if not manifest.is_file():
        raise NotFound(f"manifest {manifest} does not exist")
    base = manifest.resolve().parent
    utterances: list[Utterance] = []
    try:
        with manifest.open(encoding="utf-8") as fh:
            for lineno, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                utterances.append(_parse_line(raw, base, f"{manifest}:{lineno}", check_files))
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{manifest}: not UTF-8 text ({exc.reason})") from None
    return utterances


def write_manifest(path: str | os.PathLike[str], rows: Iterable[Utterance | Mapping[str, Any]]) -> Path:
    """Write rows atomically (temp file + rename); ``Utterance`` paths become relative to the manifest."""
    manifest = Path(path)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    base = manifest.parent.resolve()
    lines = []
    for row in rows:
        obj = row.to_json(relative_to=base) if isinstance(row, Utterance) else dict(row)
        lines.append(json.dumps(obj, ensure_ascii=False))
    fd, tmp = tempfile.mkstemp(prefix=f".{manifest.name}.", suffix=".tmp", dir=manifest.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("".join(line + "\n" for line in lines))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, manifest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return manifest
