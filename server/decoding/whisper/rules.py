"""Whisper's sampling rules as masks over one decoder step's logits, for many rows at once.

The rules are those of openai/whisper's ``SuppressTokens``, ``SuppressBlank`` and
``ApplyTimestampRules`` (in the form transformers' ``WhisperTimeStampLogitsProcessor`` gives them,
so that our transcripts match the previous ``generate`` path token for token):

- never sample the suppressed tokens; not blank or end of text as the first token;
- with timestamps: never ``<|notimestamps|>``; the first token is a timestamp no later than the maximum
  initial timestamp; timestamps come in pairs (after a lone timestamp, a timestamp or end of text;
  after a pair, text); timestamps never decrease; and when the timestamps together are more likely
  than any single text token, sample a timestamp.

Each rule costs one vectorised operation for all the rows it applies to; the per-row state (how many
tokens were sampled, the last two, the last timestamp) is kept by the rows as they grow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .vocab import Vocab

NEG_INF = float("-inf")


@dataclass
class RowRules:
    """What the rules need to know about one row before its next token."""

    timestamps: bool
    sampled: int  # tokens sampled so far in this window (after the prompt and prefix)
    last: int  # the last two sampled tokens (-1 when fewer)
    penultimate: int
    last_timestamp: int  # the largest timestamp token sampled so far, -1 if none


def _index(rows: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long, device=device)


def apply_rules(logits: torch.Tensor, rows: Sequence[RowRules], vocab: Vocab) -> torch.Tensor:
    """Mask ``logits`` [n, V] in place for the ``rows`` (one entry per logits row); returns it."""
    device, ts = logits.device, vocab.timestamp_begin
    logits.index_fill_(1, vocab.suppress_ids, NEG_INF)
    begin = [i for i, r in enumerate(rows) if r.sampled == 0]
    if begin and vocab.begin_suppress:
        b = _index(begin, device)
        logits[b[:, None], vocab.begin_suppress_ids[None, :]] = NEG_INF
    timed = [i for i, r in enumerate(rows) if r.timestamps]
    if not timed:
        return logits
    logits[_index(timed, device), vocab.no_timestamps] = NEG_INF
    force_text, no_text, floors = [], [], []
    for i in timed:
        r = rows[i]
        if r.sampled >= 1 and r.last >= ts:
            if r.sampled < 2 or r.penultimate >= ts:
                force_text.append(i)
            else:
                no_text.append(i)
        if r.last_timestamp >= 0:  # timestamps never decrease; after a pair, not the same one again
            lone = r.last >= ts and (r.sampled >= 2 and r.penultimate < ts)
            floors.append((i, r.last_timestamp if lone else r.last_timestamp + 1))
    if force_text:
        logits[_index(force_text, device), ts:] = NEG_INF
    if no_text:
        logits[_index(no_text, device), : vocab.eot] = NEG_INF
    if floors:
        index = _index([i for i, _ in floors], device)
        floor = torch.tensor([f for _, f in floors], device=device)
        below = (vocab.vocab_ids[None, :] >= ts) & (vocab.vocab_ids[None, :] < floor[:, None])
        logits[index] = logits[index].masked_fill(below, NEG_INF)
    first = [i for i in timed if rows[i].sampled == 0]
    if first:
        f = _index(first, device)
        logits[f, :ts] = NEG_INF
        if vocab.max_initial_timestamp is not None:
            logits[f, ts + vocab.max_initial_timestamp + 1:] = NEG_INF
    t = _index(timed, device)
    logprobs = torch.log_softmax(logits[t].float(), dim=-1)
    timestamp_logprob = logprobs[:, ts:].logsumexp(dim=-1)
    max_text_logprob = logprobs[:, :ts].max(dim=-1).values
    choose = t[timestamp_logprob > max_text_logprob]
    if choose.numel():
        logits[choose, :ts] = NEG_INF
    return logits
