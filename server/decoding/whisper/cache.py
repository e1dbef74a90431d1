"""Preallocated key/value storage for the rows of a running batch.

Rows are dense: the live rows of a batch are cache rows 0..n-1, so a decoder step reads plain views
and never gathers. A retired row's place is filled by moving the last row into it (one row copied,
not the whole batch). Storage grows by doubling up to ``max_rows`` and is reused afterwards.

Layout, one tensor per kind so that a row moves in one copy across all layers::

    self_k, self_v    [layers, rows, heads, text_ctx, head_dim]
    cross_k, cross_v  [layers, rows, heads, audio_ctx, head_dim]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class KVCache:
    def __init__(self, layers: int, heads: int, head_dim: int, text_ctx: int, audio_ctx: int, *,
                 dtype: torch.dtype, device: torch.device, max_rows: int):
        self.shape = (layers, heads, head_dim, text_ctx, audio_ctx)
        self.dtype, self.device = dtype, device
        self.max_rows = max_rows
        self.capacity = 0
        self.self_k = self.self_v = self.cross_k = self.cross_v = torch.empty(0)

    def reserve(self, rows: int) -> None:
        """Make room for ``rows`` rows (keeping the contents of the current ones)."""
        if rows <= self.capacity:
            return
        if rows > self.max_rows:
            raise ValueError(f"{rows} rows exceed the cache's limit of {self.max_rows}")
        capacity = min(self.max_rows, max(rows, 2 * self.capacity, 4))
        layers, heads, head_dim, text_ctx, audio_ctx = self.shape
        kw = {"dtype": self.dtype, "device": self.device}
        tensors = {
            "self_k": torch.zeros(layers, capacity, heads, text_ctx, head_dim, **kw),
            "self_v": torch.zeros(layers, capacity, heads, text_ctx, head_dim, **kw),
            "cross_k": torch.zeros(layers, capacity, heads, audio_ctx, head_dim, **kw),
            "cross_v": torch.zeros(layers, capacity, heads, audio_ctx, head_dim, **kw),
        }
        for name, tensor in tensors.items():
            if self.capacity:
                tensor[:, : self.capacity] = getattr(self, name)
            setattr(self, name, tensor)
        self.capacity = capacity

    def copy_rows(self, src: Sequence[int], dst: Sequence[int], length: int, cross: bool) -> None:
        """Copy rows ``src`` onto ``dst`` (self-attention up to ``length`` positions; cross too if asked).

        Sources are read before any destination is written, so the two may overlap (beam reordering).
        """
        if not src:
            return
        s = torch.tensor(list(src), device=self.device)
        d = torch.tensor(list(dst), device=self.device)
        names = ("self_k", "self_v", "cross_k", "cross_v") if cross else ("self_k", "self_v")
        for name in names:
            tensor = getattr(self, name)
            view = tensor[..., :length, :] if name.startswith("self") else tensor
            view[:, d] = view[:, s]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.self_k, self.self_v, self.cross_k, self.cross_v))
