"""SplitASR's Whisper decoder: requests in, transcriptions out, one batched decoder step at a time.

We own this loop (as CTranslate2, whisper.cpp and vLLM own theirs) rather than calling transformers'
``generate``, because serving needs what ``generate`` cannot give: rows that join and leave a running
batch at any step (continuous batching), each with its own adapter slot, prompt, temperature and
window; one encoder pass per window reused by language detection, every fallback temperature and the
N-best search; finished rows leaving at once; and word timestamps from the same weights.

The caller (the engine's worker, or :func:`~splitasr.decoding.transcribe`) decides *when* work is
admitted: :meth:`WhisperDecoder.start` a request, :meth:`~WhisperDecoder.admit` its waiting passes at a
step boundary, and :meth:`~WhisperDecoder.step` until it is done.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait

import numpy as np
import torch

from ...adapters.context import STATE_MODULE_NAME, mixture_weights, rows_context
from ...adapters.saml import utterance_embedding
from ...audio import SAMPLE_RATE_HZ
from ...errors import InvalidInput
from ..types import DecodingOptions, Segment, TokenLogprob
from .batch import DecodeBatch, Pass
from .model import WhisperRunner
from .request import WhisperRequest
from .timing import add_word_timestamps, find_alignment
from .vocab import Vocab, bytes_to_unicode

NBEST_MAX_SECONDS = 30.0
DEFAULT_MAX_ROWS = 32


class WhisperDecoder:
    def __init__(self, backbone, max_rows: int = DEFAULT_MAX_ROWS,
                 speech_check: Callable[[np.ndarray], Future] | None = None, cuda_graphs: bool = True):
        """``speech_check(audio)``: a future of whether audio holds speech, asked before a window that
        failed its first decode is decoded again hotter (None: always decode it again, as Whisper does).
        ``cuda_graphs``: on CUDA, replay steps without adapter rows from CUDA graphs (:mod:`.graphs`)."""
        self.backbone = backbone
        self.speech_check = speech_check
        self.model = backbone.model
        self.vocab = Vocab.from_backbone(backbone)
        self.runner = WhisperRunner(backbone.model, max_rows, cuda_graphs=cuda_graphs)
        self.batch = DecodeBatch(self.runner, self.vocab, mixture=lambda p: p.window.request.mixture,
                                 slot_of=lambda p: p.window.request.slot)
        self.batch.model = backbone.model
        self.running: list[WhisperRequest] = []
        tok = backbone.tokenizer
        self._encode = lambda text: tok.encode(text, add_special_tokens=False)
        self._decode = lambda ids: tok.decode(ids)
        self._decode_raw = lambda ids: tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        self._byte_of = {c: b for b, c in bytes_to_unicode().items()}

    @property
    def live_rows(self) -> int:
        return self.batch.live_rows

    @property
    def max_rows(self) -> int:
        return self.runner.cache.max_rows

    # requests ------------------------------------------------------------------------------------
    def language_code(self, language: str | None) -> str | None:
        """The backbone's code for ``language`` (None: detect); InvalidInput when it has none."""
        backbone = self.backbone
        if not self.vocab.multilingual:
            if language not in (None, "en", "english"):
                raise InvalidInput(f"backbone {backbone.name!r} is English-only; language {language!r} is not available")
            return None
        if language is None:
            return None
        code = language.lower().strip()
        if code not in self.vocab.languages:
            from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

            code = TO_LANGUAGE_CODE.get(code, code)
        if code not in self.vocab.languages:
            raise InvalidInput(f"unknown language {language!r}; use an ISO code such as 'en', 'ko', 'de'")
        return code

    def check(self, audio: np.ndarray, options: DecodingOptions) -> str | None:
        """Validate a request before it is queued; returns its language code (None: detect)."""
        language = self.language_code(options.language)
        if options.task == "translate" and not self.vocab.multilingual:
            raise InvalidInput(f"backbone {self.backbone.name!r} is English-only: it cannot translate; "
                               "use a multilingual backbone such as 'base'")
        if options.beam_size > self.max_rows:
            raise InvalidInput(f"beam_size {options.beam_size} is wider than the server's batch of {self.max_rows} "
                               "rows (SPLITASR_MAX_BATCH_ROWS); use a smaller beam", param="beam_size")
        if options.nbest > 1 and len(audio) > NBEST_MAX_SECONDS * SAMPLE_RATE_HZ:
            raise InvalidInput("an N-best list needs audio of at most 30 s; split longer audio first")
        if options.word_timestamps and not self.vocab.alignment_heads:
            raise InvalidInput(f"backbone {self.backbone.name!r} lists no alignment heads: word timestamps "
                               "are not available")
        return language

    def start(self, audio: np.ndarray, options: DecodingOptions, slot: int = 0, seed: int = 0,
              listener: Callable[[str], None] | None = None) -> WhisperRequest:
        """A new request (validated); ``slot`` must stay loaded until it is done. ``listener(text)`` is
        called (on the decoding thread, at step boundaries) with each piece of new stable text:
        token by token for greedy decoding, a window at a time for beam search and sampling
        (:meth:`WhisperRequest.publish`)."""
        code = self.check(audio, options)
        language = code if self.vocab.multilingual else "en"
        request = WhisperRequest(audio, options, vocab=self.vocab, features=self.features, encode=self._encode,
                                 decode=self._decode, language=language, slot=slot,
                                 mixture=self._mixture(audio, slot), seed=seed, max_rows=self.max_rows,
                                 speech_check=self.speech_check, listener=listener)
        if not request.done:
            self.running.append(request)
        return request

    def features(self, audio: np.ndarray, frames: int) -> torch.Tensor:
        feats, _ = self.backbone.features([audio])
        return feats[0, :, :frames]

    def _mixture(self, audio: np.ndarray, slot: int) -> torch.Tensor | None:
        """The request's SAML router weights [E_max], from its first 30 s (None: not a mixture)."""
        if not slot:
            return None
        state = getattr(self.model, STATE_MODULE_NAME)
        header = state.headers[slot]
        if header is None or header.num_experts <= 1:
            return None
        feats, mask = self.backbone.features([audio[: int(30 * SAMPLE_RATE_HZ)]])
        embedding = utterance_embedding(feats[..., :3000], mask[..., :3000].sum(-1))
        return mixture_weights(state, [slot], embedding)[0]

    def waiting(self) -> list[Pass]:
        """Passes of running requests that wait for admission (a new window, or a fallback)."""
        return [r.pending for r in self.running if r.pending is not None]

    def poll(self) -> list[WhisperRequest]:
        """Settle finished speech checks (see :class:`WhisperRequest`); returns the requests that are done."""
        done = []
        for request in [r for r in self.running if r.checking is not None and r.checking[0].done()]:
            if request.speech_checked():
                done.append(request)
                self._retire(request)
        return done

    def rows_by_request(self) -> dict[int, int]:
        """Live rows of each running request, by ``id(request)``."""
        return dict(Counter(id(r.owner.window.request) for r in self.batch.rows))

    @property
    def checking(self) -> bool:
        """Whether some request waits for a speech check (and holds no rows meanwhile)."""
        return any(r.checking is not None for r in self.running)

    def cancel(self, request: WhisperRequest) -> None:
        """Stop ``request``: its rows leave the batch at the next step, its pending pass is dropped."""
        request.cancelled = True
        if request.pending is not None:
            request.pending = None
        for p in self.batch.passes():
            if p.window.request is request:
                p.cancelled = True
        if not any(p.window.request is request for p in self.batch.passes()):
            self._retire(request)

    def reset(self) -> None:
        """Forget every running request and row (after a failed step)."""
        for request in self.running:
            request.cancelled = True
        self.running = []
        self.batch.rows, self.batch._cross_owner, self.batch._cross_len = [], [], []
        self.batch._step_selection = None

    def _retire(self, request: WhisperRequest) -> None:
        if not request.done:
            request._finish()
        if request in self.running:
            self.running.remove(request)

    # the loop --------------------------------------------------------------------------------------
    def admit(self, passes: Sequence[Pass]) -> None:
        """Bring waiting ``passes`` into the batch: encode their windows (batched), detect languages,
        write cross-attention K/V and run their prompts."""
        if not passes:
            return
        with torch.inference_mode():
            self._admit(passes)

    def _admit(self, passes: Sequence[Pass]) -> None:
        for p in passes:
            p.window.request.pending = None
        self._encode_windows([p.window for p in passes if p.window.encoder_out is None])
        detect = [p.window.request.needs_language for p in passes]
        logits = self.batch.admit(passes, [p.window.encoder_out for p in passes], detect)
        for p, lang_logits in zip(passes, logits):
            if lang_logits is None:
                continue
            ids = self.vocab.language_ids
            best = int(ids[lang_logits[ids].argmax()])
            p.window.request.language = self.vocab.language_of_id[best]
            p.prompt, p.sot_index = p.window.request.prompt()
        self.batch.prefill(passes)

    def _encode_windows(self, windows) -> None:
        by_length: dict[int, list] = {}
        for w in windows:
            by_length.setdefault(w.features.shape[-1], []).append(w)
        for group in by_length.values():
            requests = [w.request for w in group]
            mixes = [r.mixture for r in requests]
            weights = None
            if any(m is not None for m in mixes):
                width = next(m for m in mixes if m is not None).shape[-1]
                one_hot = torch.zeros(width, device=self.runner.device)
                one_hot[0] = 1.0
                weights = torch.stack([one_hot if m is None else m for m in mixes])
            with rows_context(self.model, [r.slot for r in requests], weights):
                out = self.runner.encode(torch.stack([w.features for w in group]))
            for k, w in enumerate(group):
                w.encoder_out = out[k: k + 1]

    def step(self) -> list[WhisperRequest]:
        """One decoder step for every live row; returns the requests that finished."""
        with torch.inference_mode():
            finished = self.batch.step() if self.batch.live_rows else []
            done = []
            for p in finished:
                request = p.window.request
                window = request.on_pass_done(p)
                if window is not None:
                    segments = request.window_segments()
                    if request.options.word_timestamps and segments:
                        self._align(request, window, segments)
                    request.accepted(segments)
                    request.publish()
                if request.done:
                    if request.options.logprobs and request.result is not None:
                        request.result.logprobs = self.token_logprobs(request.result.segments)
                    done.append(request)
                    self._retire(request)
            for p in self.batch.passes():  # text of the rows still decoding
                if p.window.request.listener is not None:
                    p.window.request.publish(p)
        return done

    def token_logprobs(self, segments: list[Segment]) -> list[TokenLogprob]:
        """Each text token of ``segments`` with its text, log-probability and bytes."""
        tok, out = self.backbone.tokenizer, []
        for segment in segments:
            for token, logprob in zip(segment.tokens, segment.token_logprobs):
                if token >= self.vocab.eot:
                    continue
                raw = bytes(self._byte_of.get(c, 0) for c in tok.convert_ids_to_tokens(token))
                out.append(TokenLogprob(raw.decode("utf-8", errors="replace"), round(logprob, 6), list(raw)))
        return out

    def _align(self, request: WhisperRequest, window, segments: list[Segment]) -> None:
        vocab = self.vocab
        text_tokens = [t for s in segments for t in s.tokens if t < vocab.eot]
        if not text_tokens:
            return
        sot = vocab.sot_sequence(request.language, request.options.task)
        tokens = torch.tensor([*sot, vocab.no_timestamps, *text_tokens, vocab.eot], device=self.runner.device)
        mix = None if request.mixture is None else request.mixture[None]
        with rows_context(self.model, [request.slot], mix):
            scores, logits = self.runner.cross_attention_scores(window.encoder_out, tokens, vocab.alignment_heads)
        alignment = find_alignment(scores, logits, text_tokens, window.frames, len(sot), self._decode_raw,
                                   vocab.eot, request.language or "en")
        request.last_speech = add_word_timestamps(segments, alignment, window.seek * 0.01, request.last_speech,
                                                  vocab.eot)

    def run(self, requests: Sequence[WhisperRequest]) -> None:
        """Decode ``requests`` to the end (admitting whatever fits at each step boundary)."""
        while any(not r.done for r in requests):
            self.poll()
            waiting = self.waiting()
            room = self.max_rows - self.live_rows
            admitted = []
            for p in waiting:
                if p.max_rows <= room:
                    admitted.append(p)
                    room -= p.max_rows
            self.admit(admitted)
            if not self.live_rows:
                if not admitted and self.checking:
                    wait([r.checking[0] for r in self.running if r.checking is not None], timeout=1.0)
                    continue
                if not admitted and any(not r.done for r in requests):
                    raise RuntimeError("a request cannot fit in the batch")
                continue
            self.step()
