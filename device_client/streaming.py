"""A streaming recognition that survives a dropped connection.

Audio is read (and paced, for real-time playback) by a pump thread into a feed. Each attempt at the
stream reads from that feed; the feed keeps every chunk sent since the last final result, so when
the server becomes UNAVAILABLE mid-stream a new attempt resends exactly that audio, with
``time_offset_seconds`` set so that the reported times continue one timeline.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import grpc

from ._proto import recognizer_pb2 as pb
from .audio import SAMPLE_WIDTH_BYTES
from .opus import DEFAULT_BITRATE, OggOpusEncoder
from .results import StreamUpdate, stream_update
from .retry import RetryPolicy, retry_delay, retryable

log = logging.getLogger(__name__)

_END = object()


class AudioFeed:
    """Chunks from a source, plus the audio not yet covered by a final result (for resending)."""

    def __init__(self, source: Iterable[bytes], rate_hz: int):
        self.rate_hz = rate_hz
        self._source = source
        self._incoming: collections.deque = collections.deque()
        self._unfinalised: collections.deque[bytes] = collections.deque()
        self._finalised_samples = 0  # stream position of the last final result
        self._attempt = 0
        self._closed = False
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._pump = threading.Thread(target=self._run_pump, name="splitasr-audio", daemon=True)

    def start(self) -> None:
        self._pump.start()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _run_pump(self) -> None:
        try:
            for chunk in self._source:
                with self._cond:
                    if self._closed:
                        return
                    self._incoming.append(bytes(chunk))
                    self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            self.error = exc
        with self._cond:
            self._incoming.append(_END)
            self._cond.notify_all()

    @property
    def offset_seconds(self) -> float:
        return self._finalised_samples / self.rate_hz

    def new_attempt(self) -> tuple[int, list[bytes]]:
        """Start an attempt: earlier attempts stop reading; returns its id and the audio to resend."""
        with self._cond:
            self._attempt += 1
            self._cond.notify_all()
            return self._attempt, list(self._unfinalised)

    def next_chunk(self, attempt: int) -> bytes | None:
        """The next new chunk for ``attempt`` (None: the audio ended or the attempt is over)."""
        with self._cond:
            while not self._incoming and attempt == self._attempt and not self._closed:
                self._cond.wait()
            if attempt != self._attempt or self._closed:
                return None
            item = self._incoming[0]
            if item is _END:  # stays queued: a later attempt ends there too
                return None
            self._incoming.popleft()
            self._unfinalised.append(item)
            return item

    def ended(self, attempt: int) -> bool:
        """Whether ``attempt`` stopped because the audio ended (not because it was superseded)."""
        with self._cond:
            return attempt == self._attempt and not self._closed and bool(self._incoming) \
                and self._incoming[0] is _END

    def finalised(self, end_seconds: float) -> None:
        """Forget the audio before stream time ``end_seconds`` (a final result covers it)."""
        with self._cond:
            drop = round(end_seconds * self.rate_hz) - self._finalised_samples
            while drop > 0 and self._unfinalised:
                head = self._unfinalised[0]
                samples = len(head) // SAMPLE_WIDTH_BYTES
                if samples <= drop:
                    self._unfinalised.popleft()
                    self._finalised_samples += samples
                    drop -= samples
                else:
                    self._unfinalised[0] = head[drop * SAMPLE_WIDTH_BYTES:]
                    self._finalised_samples += drop
                    drop = 0


def _requests(feed: AudioFeed, attempt: int, resend: list[bytes], config: pb.RecognitionConfig,
              interim: bool, count: Callable[[int], None],
              encoder: Callable[[], OggOpusEncoder] | None = None) -> Iterator[pb.StreamingRecognizeRequest]:
    """The messages of one attempt. With ``encoder`` (Opus), each attempt is a new Ogg Opus stream
    (its own headers), encoded from the PCM the feed keeps, so a resumed stream starts cleanly."""
    first = pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(
        config=config, interim_results=interim, time_offset_seconds=feed.offset_seconds))
    count(first.ByteSize())
    yield first
    opus = encoder() if encoder is not None else None

    def message(chunk: bytes) -> pb.StreamingRecognizeRequest | None:
        data = opus.encode(chunk) if opus is not None else chunk
        if not data:
            return None
        count(len(data))
        return pb.StreamingRecognizeRequest(audio=data)

    for chunk in resend:
        if (request := message(chunk)) is not None:
            yield request
    while (chunk := feed.next_chunk(attempt)) is not None:
        if (request := message(chunk)) is not None:
            yield request
    if opus is not None and feed.ended(attempt):  # the audio ended: the last page, end of stream
        tail = opus.close()
        count(len(tail))
        yield pb.StreamingRecognizeRequest(audio=tail)


def recognize_stream(open_call: Callable[[Iterator[pb.StreamingRecognizeRequest]], Iterator],
                     source: Iterable[bytes], rate_hz: int, config: pb.RecognitionConfig, *,
                     interim_results: bool, policy: RetryPolicy,
                     count: Callable[[int], None] = lambda n: None,
                     sleep: Callable[[float], None] = time.sleep,
                     codec: str = "linear16", opus_bitrate: int = DEFAULT_BITRATE) -> Iterator[StreamUpdate]:
    """Updates for the audio in ``source`` (LINEAR16 chunks at ``rate_hz``), sent as ``codec``
    ("linear16", or "opus": an Ogg Opus stream at ``opus_bitrate`` bit/s); reconnects on UNAVAILABLE up
    to ``policy.attempts`` times in a row (a response in between resets the count), after the server's
    RetryInfo delay when it sends one (a full server), else after ``policy``'s backoff."""
    encoder = None
    if codec == "opus":
        OggOpusEncoder(rate_hz, opus_bitrate).close()  # a missing extra or a bad rate fails here, at once
        config.encoding = pb.OGG_OPUS
        config.sample_rate_hz = 0

        def encoder() -> OggOpusEncoder:
            return OggOpusEncoder(rate_hz, opus_bitrate)
    elif codec == "linear16":
        config.encoding = pb.LINEAR16
        config.sample_rate_hz = rate_hz
    else:
        raise ValueError(f"codec must be 'linear16' or 'opus', not {codec!r}")
    feed = AudioFeed(source, rate_hz)
    feed.start()
    failures = 0
    call = None
    try:
        while True:
            attempt, resend = feed.new_attempt()
            call = open_call(_requests(feed, attempt, resend, config, interim_results, count, encoder))
            try:
                for response in call:
                    failures = 0
                    update = stream_update(response)
                    if update is None:
                        continue
                    if update.is_final:
                        feed.finalised(update.end)
                    yield update
                if feed.error is not None:
                    raise feed.error
                return
            except grpc.RpcError as exc:
                failures += 1
                if not retryable(exc) or failures >= policy.attempts:
                    raise
                delay = retry_delay(exc, policy, failures - 1)
                log.warning("stream dropped (%s: %s); resuming at %.2f s in %.2f s", exc.code().name,
                            exc.details(), feed.offset_seconds, delay)
                sleep(delay)
    finally:
        feed.close()
        if call is not None:
            call.cancel()
