"""``stream=true`` transcriptions: OpenAI's server-sent events over a :class:`FileTranscript`.

Each event is one ``data: {json}`` line: ``transcript.text.delta`` (``delta``) as text is decoded,
then ``transcript.text.done`` (``text``, ``usage``); with ``include[]=logprobs`` both carry
``logprobs``. An error after the stream began arrives as ``data: {"error": {...}}`` (what the
``openai`` SDK raises as ``APIError``) and ends the stream.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse

from ...decoding import TokenLogprob, Transcription
from ...engine.file_stream import FileTranscript, TextDelta
from ...errors import SplitASRError
from .errors import error_body

log = logging.getLogger(__name__)

STREAM_FORMATS = ("json", "text")  # the events carry plain text; timed formats need the whole result
AUDIO_TOKENS_PER_S = 50  # Whisper's encoder: one position per 20 ms of audio


def usage(result: Transcription) -> dict:
    """Token counts in OpenAI's shape: input = encoder positions of the audio, output = decoder tokens."""
    audio_tokens = round(result.duration * AUDIO_TOKENS_PER_S)
    output = sum(len(s.tokens) for s in result.segments)
    return {"type": "tokens", "input_tokens": audio_tokens, "output_tokens": output,
            "total_tokens": audio_tokens + output, "input_token_details": {"audio_tokens": audio_tokens,
                                                                           "text_tokens": 0}}


def _logprobs(logprobs: list[TokenLogprob] | None) -> dict:
    """``include[]=logprobs``: each token's text, log-probability and bytes, as OpenAI sends them."""
    if logprobs is None:
        return {}
    return {"logprobs": [{"token": p.token, "logprob": p.logprob, "bytes": p.bytes} for p in logprobs]}


def _sse(event: dict) -> bytes:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()


async def _events(transcript: FileTranscript) -> AsyncIterator[bytes]:
    try:
        async for item in transcript:
            if isinstance(item, TextDelta):
                yield _sse({"type": "transcript.text.delta", "delta": item.text, **_logprobs(item.logprobs)})
            else:
                yield _sse({"type": "transcript.text.done", "text": item.text, "usage": usage(item),
                            **_logprobs(item.logprobs)})
    except SplitASRError as exc:  # e.g. the queue filled up between two windows
        yield _sse(error_body(str(exc), exc.code))
    except Exception:  # the status line is gone: report it in the stream, log the trace
        log.exception("transcription stream failed")
        yield _sse(error_body("internal server error", "internal_error"))


def event_stream(transcript: FileTranscript) -> StreamingResponse:
    return StreamingResponse(_events(transcript), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
