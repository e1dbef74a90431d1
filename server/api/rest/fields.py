"""Form fields of the audio routes: what a route does not implement gets a 400 naming it, never a no-op.

A field is accepted only when the route declares it (its ``Form``/``File`` parameters, read from the
route itself, so a newly declared field needs no change here). Everything else is answered 400 in
OpenAI's error shape with the field as ``param`` and what is supported instead: OpenAI fields that
SplitASR does not implement (diarization, server-side chunking), values of declared fields that are
not available, and fields nobody knows (often a typo, or a bracketless ``include``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from fastapi import Request
from fastapi.dependencies.models import Dependant

from ...errors import UnsupportedField

_DIARIZATION = "SplitASR does no speaker diarization"

# OpenAI fields this server does not implement, by base name (``known_speaker_names[]`` -> ``known_speaker_names``)
UNSUPPORTED_FIELDS: dict[str, str] = {
    "chunking_strategy": "audio is always decoded in 30 s windows; to drop long silences first, send the "
                         "extension field vad_filter=true",
    "known_speaker_names": _DIARIZATION,
    "known_speaker_references": _DIARIZATION,
}

# (field, value) pairs that are not available, with why. A feature that lands removes its line.
UNAVAILABLE_VALUES: dict[tuple[str, str], str] = {
    ("response_format", "diarized_json"): _DIARIZATION,
}

# Declared fields with a fixed set of values: any other value is answered with this list.
KNOWN_VALUES: dict[str, tuple[str, ...]] = {
    "response_format": ("json", "text", "srt", "vtt", "verbose_json"),
    "timestamp_granularities[]": ("segment", "word"),
    "include[]": ("logprobs",),
}

# `stream` on a route without a streamed response: false is what the route does anyway (some clients
# send it always); true is refused.
NOT_STREAMED = "stream=true is available on /v1/audio/transcriptions only; this route answers once, when done"

_BASE_NAME = re.compile(r"^([^\[\]]+)(\[.*\])?$")


def base_name(field: str) -> str:
    """``include[]`` -> ``include``; ``chunking_strategy[type]`` -> ``chunking_strategy``."""
    match = _BASE_NAME.match(field)
    return match.group(1) if match else field


def declared_fields(dependant: Dependant) -> set[str]:
    """The form field names (aliases) a route and its dependencies read from the body."""
    names = {param.alias for param in dependant.body_params}
    for sub in dependant.dependencies:
        names |= declared_fields(sub)
    return names


def check_fields(fields: Iterable[tuple[str, str]], declared: set[str]) -> None:
    """Raise :class:`UnsupportedField` for the first form item (name, value) the route cannot honour."""
    for name, value in fields:
        if name == "stream" and name not in declared:
            if isinstance(value, str) and value.strip().lower() in ("", "false", "0"):
                continue
            raise UnsupportedField(NOT_STREAMED, param="stream")
        if name not in declared:
            _unknown(name, declared)
        value = value if isinstance(value, str) else ""  # files: only their field name matters
        why = UNAVAILABLE_VALUES.get((name, value))
        if why:
            raise UnsupportedField(f"{name}={value} is not supported: {why}{_supported_values(name)}", param=name)
        if name in KNOWN_VALUES and value not in KNOWN_VALUES[name]:
            raise UnsupportedField(f"{name}={value!r} is not supported{_supported_values(name)}", param=name)


def _supported_values(name: str) -> str:
    """'; supported: a, b' for a field with a fixed set of values ('' when none is available)."""
    values = KNOWN_VALUES.get(name, ())
    available = [v for v in values if (name, v) not in UNAVAILABLE_VALUES]
    return f"; supported: {', '.join(available)}" if available else f"; no value of {name} is available yet"


def _unknown(name: str, declared: set[str]) -> None:
    base = base_name(name)
    if base in UNSUPPORTED_FIELDS:
        raise UnsupportedField(f"{base} is not supported: {UNSUPPORTED_FIELDS[base]}", param=base)
    near = sorted(d for d in declared if base_name(d) == base)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    raise UnsupportedField(f"unknown field {name!r}{hint}; supported fields: {', '.join(sorted(declared))}",
                           param=name)


async def reject_unsupported_fields(request: Request) -> None:
    """Route dependency: runs before the declared fields are validated, so its message comes first."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    form = await request.form()  # already parsed by FastAPI for the route's own fields: cached, not read twice
    check_fields(form.multi_items(), declared_fields(dependant))
