"""The running batch: rows of many window decodes, each advancing one token per step.

A *pass* decodes one 30 s window once, at one temperature, as a group of rows: one row for greedy
decoding, up to ``beam_size`` beams for beam search, ``best_of`` independent samples when sampling.
Rows of every pass in the batch share one decoder step, whatever their request, adapter, prompt
length, temperature or position; each keeps its adapter slot (and mixture weights) for its lifetime.

At a step boundary the batch admits new passes (their windows' encoders run batched, once per window;
cross-attention K/V once per row), and a pass whose rows are all finished leaves the batch at once.
Beam search follows openai/whisper's ``BeamSearchDecoder`` (``beam_size + 1`` candidates per beam,
finished hypotheses collected until there are ``beam_size``) and its ranking
(``MaximumLikelihoodRanker``: log-probability over length, or Google NMT's length penalty).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ...adapters.context import activated, rows_selection
from .model import WhisperRunner
from .rules import RowRules, apply_rules
from .vocab import Vocab


@dataclass
class Candidate:
    """A finished (or cut) hypothesis of one pass."""

    tokens: list[int]  # sampled tokens, end of text excluded
    logprob: float  # sum of the token log-probabilities, end of text included when reached
    token_logprobs: list[float]  # one per token of ``tokens`` (then the end of text's, if reached)


class Row:
    __slots__ = ("generator", "last_timestamp", "logprob", "owner", "token_logprobs", "tokens")

    def __init__(self, owner: Pass, tokens: list[int], logprob: float = 0.0,
                 token_logprobs: list[float] | None = None, last_timestamp: int = -1,
                 generator: torch.Generator | None = None):
        self.owner = owner
        self.tokens = tokens  # prompt + sampled; the last one is the next step's input
        self.logprob = logprob
        self.token_logprobs = token_logprobs or []
        self.last_timestamp = last_timestamp
        self.generator = generator

    @property
    def sampled(self) -> list[int]:
        return self.tokens[self.owner.sample_begin:]

    def child(self, token: int, logprob: float, timestamp_begin: int) -> Row:
        last = token if token >= timestamp_begin else self.last_timestamp
        return Row(self.owner, self.tokens + [token], self.logprob + logprob, self.token_logprobs + [logprob],
                   last, self.generator)


@dataclass(eq=False)
class Pass:
    """One decode of one window at one temperature (see the module docstring)."""

    window: object  # the request's window (encoder output, slot, mixture); opaque here
    prompt: list[int]
    sot_index: int  # where <|startoftranscript|> is in the prompt (its logits give no_speech_prob)
    timestamps: bool
    temperature: float
    width: int  # beams, or samples
    max_new_tokens: int
    seed: int = 0
    length_penalty: float | None = None
    # The last ``forced`` tokens of ``prompt`` are sampled tokens kept from an earlier pass of the window
    # (text already sent to a listener, see ``WhisperRequest``): the rules treat them as sampled and the
    # candidates begin with them, with these log-probabilities.
    forced: int = 0
    timestamp_begin: int = 1 << 30  # the vocabulary's first timestamp (to read the forced tokens)
    forced_logprobs: list[float] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    no_speech_prob: float = 0.0
    done: bool = False
    cancelled: bool = False
    failed: str | None = None  # why the pass cannot go on (non-finite outputs)

    @property
    def request(self):
        return self.window.request

    @property
    def needs_encoder(self) -> bool:
        return self.window.encoder_out is None

    @property
    def first(self) -> bool:
        """The first pass of its request (for the worker's statistics)."""
        return self.window.request.windows_decoded == 0 and not self.window.attempts

    @property
    def sample_begin(self) -> int:
        return len(self.prompt) - self.forced

    def new_row(self) -> Row:
        """A row at the start of this pass: its prompt (and forced tokens) in place."""
        forced = self.prompt[self.sample_begin:]
        stamps = [t for t in forced if t >= self.timestamp_begin]
        return Row(self, list(self.prompt), sum(self.forced_logprobs), list(self.forced_logprobs),
                   stamps[-1] if stamps else -1)

    @property
    def mode(self) -> str:
        if self.temperature > 0:
            return "sample"
        return "beam" if self.width > 1 else "greedy"

    @property
    def initial_rows(self) -> int:
        return self.width if self.mode == "sample" else 1

    @property
    def max_rows(self) -> int:
        return self.width

    def score(self, candidate: Candidate) -> float:
        """openai/whisper's ranking: log-probability per token, or with Google NMT's length penalty."""
        length = len(candidate.tokens)
        penalty = length if self.length_penalty is None else ((5 + length) / 6) ** self.length_penalty
        return candidate.logprob / max(penalty, 1e-9)

    def ranked(self) -> list[Candidate]:
        return sorted(self.candidates, key=self.score, reverse=True)

    # one step -------------------------------------------------------------------------------------
    def advance(self, index: list[int], rows: list[Row], processed: torch.Tensor, logprobs: torch.Tensor,
                vocab: Vocab, text_ctx: int) -> list[tuple[int, Row]]:
        """Choose this pass's next tokens. ``rows`` are its live rows at batch positions ``index``.
        Returns the rows that stay live as (parent batch position, new row); sets ``done`` when it is
        finished."""
        if self.mode == "beam":
            live = self._beam(index, rows, logprobs, vocab)
        else:
            live = self._independent(index, rows, processed, logprobs, vocab)
        limit = min(text_ctx, self.sample_begin + self.max_new_tokens)
        if live and len(live[0][1].tokens) >= limit:  # out of room: cut the live rows as they are
            for _, row in sorted(live, key=lambda item: item[1].logprob, reverse=True):
                if self.mode == "beam" and len(self.candidates) >= self.width:
                    break
                self.candidates.append(Candidate(row.sampled, row.logprob, row.token_logprobs))
            live = []
        if self.mode == "beam" and len(self.candidates) >= self.width:
            live = []
        self.done = not live
        return live

    def _independent(self, index: list[int], rows: list[Row], processed: torch.Tensor, logprobs: torch.Tensor,
                     vocab: Vocab) -> list[tuple[int, Row]]:
        if self.mode == "greedy":
            tokens = processed[index].argmax(-1).tolist()
        else:
            probs = torch.softmax(processed[index] / self.temperature, dim=-1)
            tokens = [int(torch.multinomial(probs[k], 1, generator=row.generator)) for k, row in enumerate(rows)]
        chosen = logprobs[index, tokens].tolist()
        live = []
        for position, row, token, logprob in zip(index, rows, tokens, chosen):
            if token == vocab.eot:
                self.candidates.append(Candidate(row.sampled, row.logprob + logprob, row.token_logprobs + [logprob]))
            else:
                live.append((position, row.child(token, logprob, vocab.timestamp_begin)))
        return live

    def _beam(self, index: list[int], rows: list[Row], logprobs: torch.Tensor, vocab: Vocab,
              ) -> list[tuple[int, Row]]:
        top = logprobs[index].topk(self.width + 1, dim=-1)
        scores: dict[tuple[int, ...], float] = {}
        sources: dict[tuple[int, ...], tuple[int, Row, float]] = {}
        for position, row, values, tokens in zip(index, rows, top.values.tolist(), top.indices.tolist()):
            prefix = tuple(row.sampled)
            for logprob, token in zip(values, tokens):
                if logprob == float("-inf"):
                    continue
                sequence = prefix + (token,)
                scores[sequence] = row.logprob + logprob
                sources[sequence] = (position, row, logprob)
        live, finished = [], []
        for sequence in sorted(scores, key=scores.get, reverse=True):
            position, row, logprob = sources[sequence]
            if sequence[-1] == vocab.eot:
                finished.append(Candidate(list(sequence[:-1]), scores[sequence], row.token_logprobs + [logprob]))
            else:
                live.append((position, row.child(sequence[-1], logprob, vocab.timestamp_begin)))
                if len(live) == self.width:
                    break
        for candidate in finished:  # already in score order
            if len(self.candidates) >= self.width:
                break
            self.candidates.append(candidate)
        return live


class DecodeBatch:
    """Rows of many passes, dense in one :class:`KVCache`; ``admit`` new passes, then ``step``."""

    def __init__(self, runner: WhisperRunner, vocab: Vocab, *, mixture: Callable[[Pass], torch.Tensor | None],
                 slot_of: Callable[[Pass], int]):
        """``slot_of(pass)``: its adapter slot; ``mixture(pass)``: its router weights [E_max] or None."""
        self.runner = runner
        self.vocab = vocab
        self._slot_of = slot_of
        self._mixture = mixture
        self.rows: list[Row] = []
        self._cross_owner: list[object] = []  # which window's cross K/V each cache row holds
        self._cross_len: list[int] = []  # encoder positions of that window
        self.model = None  # set by the owner: the module whose adapter bank the rows select
        self._step_selection: tuple[tuple[Pass, ...], object] | None = None

    @property
    def live_rows(self) -> int:
        return len(self.rows)

    def passes(self) -> list[Pass]:
        return list(dict.fromkeys(r.owner for r in self.rows))

    # adapters ------------------------------------------------------------------------------------
    def _selection(self, owners: Sequence[Pass]):
        slots = [self._slot_of(p) for p in owners]
        weights = None
        mixes = [self._mixture(p) if s else None for p, s in zip(owners, slots)]
        if any(m is not None for m in mixes):
            width = next(m for m in mixes if m is not None).shape[-1]
            one_hot = torch.zeros(width, device=self.runner.device)
            one_hot[0] = 1.0
            weights = torch.stack([one_hot if m is None else m for m in mixes])
        return rows_selection(self.model, slots, weights)

    def _context(self, owners: Sequence[Pass]):
        return activated(self._selection(owners))

    def _step_context(self, owners: Sequence[Pass]):
        """The selection for a decoder step, kept while the batch's passes stay in the same places."""
        kept = self._step_selection
        same = kept is not None and len(kept[0]) == len(owners) and all(a is b for a, b in zip(kept[0], owners))
        if not same:  # (the kept passes stay referenced, so identity cannot be confused with a new pass)
            self._step_selection = kept = (tuple(owners), self._selection(owners))
        return activated(kept[1])

    # admission -----------------------------------------------------------------------------------
    def admit(self, passes: Sequence[Pass], encoder_out: Sequence[torch.Tensor],
              language_needed: Sequence[bool] = ()) -> list[torch.Tensor | None]:
        """Add ``passes`` (their windows' ``encoder_out`` [1, S, d] given). For the passes flagged in
        ``language_needed`` only the first token's logits are computed and returned (language detection);
        call :meth:`prefill` for them once their prompt is known. Returns those logits (or None)."""
        if not passes:
            return []
        runner, vocab = self.runner, self.vocab
        first = len(self.rows)
        m = len(passes)
        runner.cache.reserve(first + m + sum(p.initial_rows - 1 for p in passes))
        rows = torch.arange(first, first + m, device=runner.device)
        if len({e.shape[1] for e in encoder_out}) == 1:
            with self._context(passes):
                runner.write_cross(rows, torch.cat(list(encoder_out), 0))
        else:  # windows of different lengths (a shorter audio_ctx): one at a time
            for k, e in enumerate(encoder_out):
                with self._context([passes[k]]):
                    runner.write_cross(rows[k:k + 1], e)
        for p, e in zip(passes, encoder_out):
            self._cross_owner.append(p.window)
            self._cross_len.append(e.shape[1])
            self.rows.append(p.new_row())
        out: list[torch.Tensor | None] = [None] * m
        detect = [k for k in range(m) if k < len(language_needed) and language_needed[k]]
        if detect:
            sot = torch.full((len(detect), 1), vocab.sot, device=runner.device)
            with self._context([passes[k] for k in detect]):
                for j, k in enumerate(detect):  # rows need not be contiguous: one row at a time
                    hidden = runner.prefill(rows[k:k + 1], sot[j:j + 1], torch.ones(1, dtype=torch.long,
                                            device=runner.device), self._cross_tensor())
                    out[k] = runner.logits(hidden[:, 0])[0]
        return out

    def prefill(self, passes: Sequence[Pass]) -> None:
        """Run the prompts (all but their last token) of just-admitted ``passes`` into the cache, compute
        their no-speech probabilities where the prompt continues past <|startoftranscript|>, and
        spread sampling passes over their rows."""
        runner, vocab = self.runner, self.vocab
        index = [self._position_of(p) for p in passes]
        for p, k in zip(passes, index):
            self.rows[k] = p.new_row()
        lengths = [len(p.prompt) - 1 for p in passes]
        if max(lengths) > 0:
            for group in _contiguous(index):  # prefill takes contiguous rows
                members = [passes[index.index(k)] for k in group]
                lens = torch.tensor([len(p.prompt) - 1 for p in members], device=runner.device)
                width = int(lens.max())
                if width == 0:
                    continue
                tokens = torch.full((len(members), width), vocab.eot, device=runner.device)
                for j, p in enumerate(members):
                    tokens[j, : len(p.prompt) - 1] = torch.tensor(p.prompt[:-1], device=runner.device)
                rows = torch.tensor(group, device=runner.device)
                with self._context(members):
                    hidden = runner.prefill(rows, tokens, lens.clamp_min(1), self._cross_tensor())
                    for j, p in enumerate(members):
                        if p.sot_index < len(p.prompt) - 1:
                            probs = runner.logits(hidden[j, p.sot_index]).softmax(-1)
                            p.no_speech_prob = float(probs[vocab.no_speech])
        for p, k in zip(passes, index):
            p.rows = [self.rows[k]]
            extra = p.initial_rows - 1
            if extra:
                start = len(self.rows)
                self.runner.cache.reserve(start + extra)
                self.runner.cache.copy_rows([k] * extra, list(range(start, start + extra)),
                                            len(p.prompt), cross=True)
                for _ in range(extra):
                    self.rows.append(p.new_row())
                    self._cross_owner.append(p.window)
                    self._cross_len.append(self._cross_len[k])
                p.rows = [r for r in self.rows if r.owner is p]
            for j, row in enumerate(p.rows):
                if p.mode == "sample":
                    row.generator = torch.Generator(device=runner.device).manual_seed(p.seed * 1000 + j)

    def _position_of(self, p: Pass) -> int:
        return next(k for k, r in enumerate(self.rows) if r.owner is p)

    def _cross_tensor(self) -> torch.Tensor | None:
        if all(n == self.runner.audio_ctx for n in self._cross_len):
            return None
        return torch.tensor(self._cross_len, device=self.runner.device)

    # one step ------------------------------------------------------------------------------------
    def step(self) -> list[Pass]:
        """One token for every live row; returns the passes that finished."""
        runner, vocab = self.runner, self.vocab
        rows = self.rows
        tokens = torch.tensor([r.tokens[-1] for r in rows], device=runner.device)
        positions = torch.tensor([len(r.tokens) - 1 for r in rows], device=runner.device)
        owners = [r.owner for r in rows]
        with self._step_context(owners) as selection:
            logits = runner.decode_step(tokens, positions, self._cross_tensor(), plain=selection is None)
        broken = ~torch.isfinite(logits).all(dim=-1)  # an adapter with huge weights overflowed: that row only
        if bool(broken.any()):
            for k in broken.nonzero().flatten().tolist():
                rows[k].owner.failed = "the adapter made the model's outputs non-finite (overflow)"
            logits = torch.nan_to_num(logits, nan=0.0, posinf=0.0, neginf=0.0)
        for k, r in enumerate(rows):
            p = r.owner
            if len(r.tokens) == p.sample_begin and p.sot_index == p.sample_begin - 1 and r is p.rows[0]:
                p.no_speech_prob = float(logits[k].softmax(-1)[vocab.no_speech])
        rules = [RowRules(timestamps=r.owner.timestamps, sampled=len(r.tokens) - r.owner.sample_begin,
                          last=r.tokens[-1] if len(r.tokens) > r.owner.sample_begin else -1,
                          penultimate=r.tokens[-2] if len(r.tokens) > r.owner.sample_begin + 1 else -1,
                          last_timestamp=r.last_timestamp) for r in rows]
        processed = apply_rules(logits, rules, vocab)
        logprobs = torch.log_softmax(processed, dim=-1)
        index: dict[Pass, list[int]] = {}
        for k, p in enumerate(owners):
            index.setdefault(p, []).append(k)
        next_rows: list[tuple[int, Row]] = []
        finished = []
        for p, positions_of_p in index.items():
            p.window.request.spent += len(positions_of_p)
            if p.cancelled or p.failed:
                p.done = True
                live = []
            else:
                live = p.advance(positions_of_p, [rows[k] for k in positions_of_p], processed, logprobs, vocab,
                                 runner.text_ctx)
            p.rows = [row for _, row in live]
            next_rows += live
            if p.done:
                finished.append(p)
        self._relayout(next_rows)
        return finished

    def drop(self, passes: Sequence[Pass]) -> None:
        """Remove ``passes`` (cancelled before their next step) from the batch."""
        gone = set(passes)
        keep = [(k, r) for k, r in enumerate(self.rows) if r.owner not in gone]
        self._relayout(keep)

    def _relayout(self, next_rows: list[tuple[int, Row]]) -> None:
        """Place the next step's rows densely in 0..N-1, copying the fewest cache rows."""
        n = len(next_rows)
        target: list[int | None] = [None] * n
        taken: set[int] = set()
        for j, (parent, _) in enumerate(next_rows):
            if parent < n and parent not in taken:
                target[j] = parent
                taken.add(parent)
        free = iter(sorted(set(range(n)) - taken))
        for j in range(n):
            if target[j] is None:
                target[j] = next(free)
        cache = self.runner.cache
        cache.reserve(n)
        copies_cross, copies_self, length = ([], []), ([], []), 0
        grow = max(0, n - len(self._cross_owner))
        owners, lens = self._cross_owner + [None] * grow, self._cross_len + [0] * grow
        for j, (parent, row) in enumerate(next_rows):
            dst = target[j]
            if dst == parent:
                continue
            length = max(length, len(row.tokens) - 1)
            pair = copies_cross if owners[dst] is not row.owner.window else copies_self
            pair[0].append(parent)
            pair[1].append(dst)
            owners[dst], lens[dst] = owners[parent], lens[parent]
        cache.copy_rows(copies_cross[0], copies_cross[1], length, cross=True)
        cache.copy_rows(copies_self[0], copies_self[1], length, cross=False)
        placed: list[Row | None] = [None] * n
        for j, (_, row) in enumerate(next_rows):
            placed[target[j]] = row
        self.rows = placed  # type: ignore[assignment]
        self._cross_owner, self._cross_len = owners[:n], lens[:n]


def _contiguous(index: list[int]) -> list[list[int]]:
    groups: list[list[int]] = []
    for k in sorted(index):
        if groups and groups[-1][-1] == k - 1:
            groups[-1].append(k)
        else:
            groups.append([k])
    return groups
