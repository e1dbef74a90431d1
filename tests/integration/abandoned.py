"""For the tests of requests whose client goes away: long audio that is cheap to send, a transcription
POSTed over a raw socket (so the test can hang up), and waiting for the server to react."""

from __future__ import annotations

import io
import socket
import time
import uuid

import numpy as np
import soundfile as sf

from splitasr.audio import SAMPLE_RATE_HZ, decode_audio


def long_speech_flac(path: str, seconds: float) -> bytes:
    """``path``'s speech repeated with 9 s pauses up to ``seconds`` (under the servers' upload limits):
    many 30 s windows of work, each with speech in it."""
    speech = decode_audio(path)
    pause = np.zeros(9 * SAMPLE_RATE_HZ, dtype=np.float32)
    pieces, total = [], 0
    while total < seconds * SAMPLE_RATE_HZ:
        pieces += [speech, pause]
        total += len(speech) + len(pause)
    buf = io.BytesIO()
    sf.write(buf, np.concatenate(pieces), SAMPLE_RATE_HZ, format="FLAC")
    return buf.getvalue()


def multipart(audio: bytes, **fields: str) -> tuple[bytes, str]:
    """A transcription form for tiny.en (and ``fields``) with ``audio`` as its file; and its boundary."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in {**fields, "model": "tiny.en"}.items()]
    parts += [
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="long.flac"\r\n'
        "Content-Type: audio/flac\r\n\r\n".encode() + audio + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts), boundary


def post_transcription(sock: socket.socket, host: str, auth: str, form: tuple[bytes, str]) -> None:
    """Send ``form`` (see :func:`multipart`) as POST /v1/audio/transcriptions on ``sock``."""
    body, boundary = form
    sock.sendall(
        f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body)


def wait_until(condition, seconds: float) -> bool:
    """Whether ``condition()`` became true within ``seconds`` (polled every 50 ms)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False
