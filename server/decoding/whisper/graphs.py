"""The decoder step at fixed shapes, replayed from CUDA graphs where the backbone runs on CUDA.

A decoder step of a small Whisper is a few hundred short kernels; on a GPU the time goes to launching
them, not to running them. A CUDA graph records the kernels of one step once and replays them with a
single launch, which only works when every shape and address is the same at each replay. So the step
is run at fixed shapes here:

- rows are padded up to a *bucket* (1, 2, 4, 8 ... up to the batch's row limit): padding rows read
  and write cache rows past the live ones, which hold nothing a live row reads (rows are dense,
  :mod:`.cache`);
- self-attention always spans the whole text context, with later positions masked (the dynamic step
  cuts it at the longest row instead);
- inputs are copied into static buffers, and the logits are copied out of the graph's output.

One graph per (bucket, whether the rows use windows of different lengths), recorded on first use.
Graphs hold the cache's addresses, so they are dropped when the cache grows into new storage.

Only steps without adapter rows are replayed: an adapter bank's row selection (slots, mixture
weights, gathered slot tensors) changes whenever rows join or leave, and recording a graph per
selection would cost more than it saves. A layer that cannot be recorded (one that reads tensor
values on the host, as an outlier-aware int8 kernel may) makes the first capture fail: the runner logs
it once and keeps the eager step.

On the CPU the same fixed-shape step runs eagerly (no graphs there); the tests use that to check it
chooses the same tokens as the dynamic step.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .model import WhisperRunner

log = logging.getLogger(__name__)


def buckets(max_rows: int) -> list[int]:
    """Row counts a fixed-shape step is recorded for: powers of two below ``max_rows``, then it."""
    out, size = [], 1
    while size < max_rows:
        out.append(size)
        size *= 2
    return out + [max_rows]


class StaticStep:
    """The decoder step at a bucket's fixed shapes (see the module docstring)."""

    def __init__(self, runner: WhisperRunner, capture: bool):
        self.runner = runner
        self.capture = capture  # record and replay CUDA graphs (else run the fixed shapes eagerly)
        self.buckets = buckets(runner.cache.max_rows)
        self._graphs: dict[tuple[int, bool], tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor]]] = {}
        self._storage = None  # the cache storage the graphs were recorded on
        self.failed: str | None = None  # why recording failed (the eager step is used from then on)
        self.steps = 0  # steps run at fixed shapes (replayed, when capturing)

    def bucket(self, rows: int) -> int:
        return next(b for b in self.buckets if b >= rows)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, cross_len: torch.Tensor | None,
                 ) -> torch.Tensor | None:
        """Logits [n, V] for the first n cache rows, as :meth:`WhisperRunner.step` gives them; None when
        recording the graph failed (``failed`` says why; the caller runs the eager step)."""
        runner = self.runner
        n = tokens.shape[0]
        size = self.bucket(n)
        self.steps += 1
        runner.cache.reserve(size)
        key = (size, cross_len is not None)
        inputs = self._inputs(key)
        inputs["tokens"][:n] = tokens
        inputs["positions"][:n] = positions
        if cross_len is not None:
            inputs["cross_len"][:n] = cross_len
        if not self.capture:
            return self._run(inputs)[:n]
        if self._storage is not runner.cache.self_k:  # the cache moved: recorded addresses are stale
            self._graphs.clear()
            self._storage = runner.cache.self_k
        if key not in self._graphs:
            try:
                self._graphs[key] = (self._record(inputs), inputs)
            except RuntimeError as exc:  # CUDA refused an operation while recording
                self.failed = f"{type(exc).__name__}: {exc}"
                log.warning("decoder steps run without CUDA graphs: recording one failed (%s)", self.failed)
                return None
        graph, static = self._graphs[key]
        graph.replay()
        return static["logits"][:n].clone()

    def _inputs(self, key: tuple[int, bool]) -> dict[str, torch.Tensor]:
        """The static inputs of one (bucket, masked) key, padding rows reset (token 0 at position 0,
        whole window): the recorded graph's own when there is one."""
        size, masked = key
        if key in self._graphs:
            inputs = self._graphs[key][1]
        else:
            device = self.runner.device
            inputs = {"tokens": torch.zeros(size, dtype=torch.long, device=device),
                      "positions": torch.zeros(size, dtype=torch.long, device=device)}
            if masked:
                inputs["cross_len"] = torch.full((size,), self.runner.audio_ctx, dtype=torch.long, device=device)
        inputs["tokens"].zero_()
        inputs["positions"].zero_()
        if masked:
            inputs["cross_len"].fill_(self.runner.audio_ctx)
        return inputs

    def _run(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        runner = self.runner
        return runner.step(inputs["tokens"], inputs["positions"], inputs.get("cross_len"), length=runner.text_ctx)

    def _record(self, inputs: dict[str, torch.Tensor]) -> torch.cuda.CUDAGraph:
        """Warm the step up on a side stream (as torch.cuda.graphs asks), then record it. The step
        only writes the K/V of its inputs' positions, so running it again (the replay) is harmless."""
        side = torch.cuda.Stream(device=self.runner.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._run(inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads (the encoder of a rescorer, a VAD) may use CUDA meanwhile
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            inputs["logits"] = self._run(inputs)
        return graph
