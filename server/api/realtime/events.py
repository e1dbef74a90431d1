"""The Realtime API's transcription events, as OpenAI's GA API names and shapes them.

Client events are parsed strictly (an unknown field is an error that names it, never silently
dropped); server events are plain dicts built here, so every name and field lives in one module.
Field names follow the ``openai`` package's ``types/realtime`` models.
"""

from __future__ import annotations

import json
import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from .errors import EventError

SESSION_UPDATE = "session.update"
APPEND = "input_audio_buffer.append"
COMMIT = "input_audio_buffer.commit"
CLEAR = "input_audio_buffer.clear"
CLIENT_EVENTS = (SESSION_UPDATE, APPEND, COMMIT, CLEAR)
# OpenAI client events of conversation sessions: known, but not part of a transcription session
CONVERSATION_EVENTS = ("conversation.item.create", "conversation.item.retrieve", "conversation.item.truncate",
                       "conversation.item.delete", "response.create", "response.cancel", "output_audio_buffer.clear")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AudioFormat(_Strict):
    type: str | None = None  # "audio/pcm" (checked by the session, which names what it accepts)
    rate: int | None = None


class Transcription(_Strict):
    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    # OpenAI fields of other models; accepted only when unset
    delay: str | None = None
    keywords: list[str] | None = None
    languages: list[str] | None = None


class TurnDetection(_Strict):
    type: str
    threshold: float | None = None
    prefix_padding_ms: int | None = None
    silence_duration_ms: int | None = None
    # response and semantic-VAD settings of conversation sessions; accepted only when unset or off
    create_response: bool | None = None
    interrupt_response: bool | None = None
    idle_timeout_ms: int | None = None
    eagerness: str | None = None


class AudioInput(_Strict):
    format: AudioFormat | None = None
    noise_reduction: dict[str, Any] | None = None
    transcription: Transcription | None = None
    turn_detection: TurnDetection | None = None


class Audio(_Strict):
    input: AudioInput | None = None


class Session(_Strict):
    type: str
    audio: Audio | None = None
    include: list[str] | None = None
    # read-only fields of the session object a client may send back unchanged
    id: str | None = None
    object: str | None = None


class SessionUpdateEvent(_Strict):
    type: Literal["session.update"]
    event_id: str | None = None
    session: Session


class AppendEvent(_Strict):
    type: Literal["input_audio_buffer.append"]
    event_id: str | None = None
    audio: str


class CommitEvent(_Strict):
    type: Literal["input_audio_buffer.commit"]
    event_id: str | None = None


class ClearEvent(_Strict):
    type: Literal["input_audio_buffer.clear"]
    event_id: str | None = None


ClientEvent = Annotated[SessionUpdateEvent | AppendEvent | CommitEvent | ClearEvent, Field(discriminator="type")]
_CLIENT_EVENT: TypeAdapter = TypeAdapter(ClientEvent)


def parse_client_event(text: str) -> SessionUpdateEvent | AppendEvent | CommitEvent | ClearEvent:
    """One client message -> its event; :class:`EventError` names what is wrong."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise EventError(f"the message is not valid JSON: {exc}", "invalid_json") from None
    if not isinstance(data, dict):
        raise EventError("an event is a JSON object with a 'type'", "invalid_json")
    kind = data.get("type")
    event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
    if kind in CONVERSATION_EVENTS:
        raise EventError(f"{kind!r} belongs to conversation sessions; this is a transcription session "
                         f"(events: {', '.join(CLIENT_EVENTS)})", "invalid_value", "type", event_id)
    if kind not in CLIENT_EVENTS:
        raise EventError(f"unknown event type {str(kind)[:80]!r}; use one of {', '.join(CLIENT_EVENTS)}",
                         "invalid_value", "type", event_id)
    try:
        return _CLIENT_EVENT.validate_python(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"][1:])  # the first item is the union's tag
        raise EventError(f"{kind}: {where or 'event'}: {err['msg']}", "invalid_value", where or None,
                         event_id) from None


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def server_event(kind: str, **fields: Any) -> dict:
    return {"type": kind, "event_id": new_id("event"), **fields}


def error_event(error: EventError) -> dict:
    return server_event("error", error={"type": error.type, "code": error.code, "message": error.message,
                                        "param": error.param, "event_id": error.event_id})
