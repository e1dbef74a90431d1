"""The Whisper forward pass for our decode loop, on the loaded transformers modules' weights.

transformers stays the source of weights and modules; what is ours is how they are called:

- the encoder runs its layers directly (the module's forward insists on exactly 3000 mel frames,
  which rules out a shorter window for short clips);
- cross-attention keys and values are computed once per row, after that row's adapter (adapters may
  target ``encoder_attn.k_proj``/``v_proj``), and kept in :class:`KVCache`;
- the self-attention cache is preallocated and written in place at each row's own position, so rows
  of different lengths (admitted at different steps) share one decoder step;
- attention is ``scaled_dot_product_attention`` with Whisper's scaling order (queries scaled before the
  product, as the reference implementation does, which keeps results identical to transformers');
- on CUDA, steps without adapter rows replay CUDA graphs of a fixed-shape step (:mod:`.graphs`).

Every linear layer is still called as a module, so quantized layers and adapter banks (which read the
active per-row slot selection, :mod:`splitasr.adapters.context`) work unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cache import KVCache
from .graphs import StaticStep


class WhisperRunner:
    """Encoder, cross-attention K/V, prompt prefill and one-token decoder steps over a :class:`KVCache`."""

    def __init__(self, model: nn.Module, max_rows: int, cuda_graphs: bool = True):
        """``cuda_graphs``: replay adapter-free steps from CUDA graphs when the model is on CUDA."""
        core = model.model
        self.encoder = core.encoder
        self.decoder = core.decoder
        self.layers = list(core.decoder.layers)
        self.proj_out = model.proj_out
        config = model.config
        self.heads = int(config.decoder_attention_heads)
        self.head_dim = int(config.d_model) // self.heads
        self.scaling = self.head_dim ** -0.5
        self.text_ctx = int(config.max_target_positions)
        self.audio_ctx = int(config.max_source_positions)
        weight = self.decoder.embed_tokens.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.cache = KVCache(len(self.layers), self.heads, self.head_dim, self.text_ctx, self.audio_ctx,
                             dtype=self.dtype, device=self.device, max_rows=max_rows)
        use_graphs = cuda_graphs and self.device.type == "cuda"
        self.static_step = StaticStep(self, capture=True) if use_graphs else None

    # encoder -------------------------------------------------------------------------------------
    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """[n, n_mels, frames] log-mel (frames even, at most 3000) -> [n, frames / 2, d_model]."""
        enc = self.encoder
        x = F.gelu(enc.conv1(features.to(self.dtype)))
        x = F.gelu(enc.conv2(x)).permute(0, 2, 1)
        x = x + enc.embed_positions.weight[: x.shape[1]]
        for layer in enc.layers:
            x = layer(x, None)
        return enc.layer_norm(x)

    def write_cross(self, rows: torch.Tensor, encoder_out: torch.Tensor) -> None:
        """Cross-attention K/V of ``encoder_out`` [n, S, d] into cache ``rows`` [n] (adapters active)."""
        n, s, _ = encoder_out.shape
        for i, layer in enumerate(self.layers):
            attn = layer.encoder_attn
            self.cache.cross_k[i, rows, :, :s] = self._heads(attn.k_proj(encoder_out), n)
            self.cache.cross_v[i, rows, :, :s] = self._heads(attn.v_proj(encoder_out), n)

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        return x.view(n, -1, self.heads, self.head_dim).transpose(1, 2)

    # decoder -------------------------------------------------------------------------------------
    def _embed(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        dec = self.decoder
        return dec.embed_tokens(tokens) * dec.embed_scale + dec.embed_positions.weight[positions]

    def _cross_mask(self, rows: int, cross_len: torch.Tensor | None) -> torch.Tensor | None:
        if cross_len is None:
            return None
        keys = torch.arange(self.audio_ctx, device=self.device)
        return (keys[None, :] < cross_len[:rows, None])[:, None, None, :]

    def decode_step(self, tokens: torch.Tensor, positions: torch.Tensor, cross_len: torch.Tensor | None = None,
                    plain: bool = False) -> torch.Tensor:
        """:meth:`step`, replayed from a CUDA graph when the runner records them and the rows are
        ``plain`` (no adapter selection active)."""
        graphed = self.static_step
        if plain and graphed is not None and graphed.failed is None:
            logits = graphed(tokens, positions, cross_len)
            if logits is not None:
                return logits
        return self.step(tokens, positions, cross_len)

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, cross_len: torch.Tensor | None = None,
             length: int | None = None) -> torch.Tensor:
        """One token for each of the first n cache rows: tokens [n] at positions [n] -> logits [n, V].

        Writes each row's self-attention K/V at its position. ``cross_len`` [n]: encoder positions per
        row when some rows use a shorter audio window (None: all use the whole window). ``length``:
        the self-attention keys to span (None: up to the furthest row, which reads ``positions`` on the
        host; a fixed length keeps the step free of host reads, for CUDA graphs).
        """
        n = tokens.shape[0]
        rows = torch.arange(n, device=self.device)
        length = int(positions.max()) + 1 if length is None else length
        keys = torch.arange(length, device=self.device)
        self_mask = (keys[None, :] <= positions[:, None])[:, None, None, :]  # [n, 1, 1, L]
        cross_mask = self._cross_mask(n, cross_len)
        cache = self.cache
        x = self._embed(tokens[:, None], positions[:, None])  # [n, 1, d]
        for i, layer in enumerate(self.layers):
            h = layer.self_attn_layer_norm(x)
            attn = layer.self_attn
            q = self._heads(attn.q_proj(h) * self.scaling, n)
            cache.self_k[i, rows, :, positions] = attn.k_proj(h).view(n, self.heads, self.head_dim)
            cache.self_v[i, rows, :, positions] = attn.v_proj(h).view(n, self.heads, self.head_dim)
            k, v = cache.self_k[i, :n, :, :length], cache.self_v[i, :n, :, :length]
            x = x + attn.out_proj(self._merge(F.scaled_dot_product_attention(q, k, v, self_mask, scale=1.0)))
            x = x + self._cross(layer, x, i, n, cross_mask)
            x = x + self._ffn(layer, x)
        return self.proj_out(self.decoder.layer_norm(x))[:, 0].float()

    def prefill(self, rows: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor,
                cross_len: torch.Tensor | None = None) -> torch.Tensor:
        """Process right-padded prompts ``tokens`` [m, P] (real ``lengths`` [m]) into cache ``rows``.

        Rows must be contiguous cache rows. Returns the final hidden states [m, P, d] (for logits at
        chosen positions, :meth:`logits`). Positions past a row's length write K/V that the row's later
        steps overwrite before reading.
        """
        m, p = tokens.shape
        first = int(rows[0])
        positions = torch.arange(p, device=self.device)
        causal = positions[None, :] <= positions[:, None]  # [P, P] query x key
        valid = positions[None, :] < lengths[:, None]  # [m, P] keys that hold prompt tokens
        mask = (causal[None] & valid[:, None, :])[:, None]  # [m, 1, P, P]
        mask = mask | ~valid[:, None, :, None]  # padded queries attend to all: no empty softmax rows
        cross_mask = None if cross_len is None else self._cross_mask(first + m, cross_len)[first:]
        cache = self.cache
        x = self._embed(tokens, positions[None, :].expand(m, p))
        for i, layer in enumerate(self.layers):
            h = layer.self_attn_layer_norm(x)
            attn = layer.self_attn
            q = self._heads(attn.q_proj(h) * self.scaling, m)
            k, v = self._heads(attn.k_proj(h), m), self._heads(attn.v_proj(h), m)
            cache.self_k[i, first:first + m, :, :p] = k
            cache.self_v[i, first:first + m, :, :p] = v
            x = x + attn.out_proj(self._merge(F.scaled_dot_product_attention(q, k, v, mask, scale=1.0)))
            x = x + self._cross(layer, x, i, m, cross_mask, first)
            x = x + self._ffn(layer, x)
        return self.decoder.layer_norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj_out(hidden).float()

    def _cross(self, layer, x: torch.Tensor, i: int, n: int, mask: torch.Tensor | None, first: int = 0,
               ) -> torch.Tensor:
        attn = layer.encoder_attn
        q = self._heads(attn.q_proj(layer.encoder_attn_layer_norm(x)) * self.scaling, n)
        k, v = self.cache.cross_k[i, first:first + n], self.cache.cross_v[i, first:first + n]
        return attn.out_proj(self._merge(F.scaled_dot_product_attention(q, k, v, mask, scale=1.0)))

    @staticmethod
    def _ffn(layer, x: torch.Tensor) -> torch.Tensor:
        return layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(x))))

    @staticmethod
    def _merge(x: torch.Tensor) -> torch.Tensor:
        n, h, t, d = x.shape
        return x.transpose(1, 2).reshape(n, t, h * d)

    # alignment -----------------------------------------------------------------------------------
    def cross_attention_scores(self, encoder_out: torch.Tensor, tokens: torch.Tensor,
                               heads: tuple[tuple[int, int], ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced pass over ``tokens`` [T] on one window's ``encoder_out`` [1, S, d], without the
        cache: the cross-attention scores (scaled, before the softmax) of the alignment ``heads``,
        [len(heads), T, S], and the logits [T, V]."""
        t = tokens.shape[0]
        positions = torch.arange(t, device=self.device)
        causal = (positions[None, :] <= positions[:, None])[None, None]
        wanted: dict[int, list[int]] = {}
        for layer_index, head in heads:
            wanted.setdefault(layer_index, []).append(head)
        x = self._embed(tokens[None], positions[None])
        out = []
        for i, layer in enumerate(self.layers):
            h = layer.self_attn_layer_norm(x)
            attn = layer.self_attn
            q = self._heads(attn.q_proj(h) * self.scaling, 1)
            k, v = self._heads(attn.k_proj(h), 1), self._heads(attn.v_proj(h), 1)
            x = x + attn.out_proj(self._merge(F.scaled_dot_product_attention(q, k, v, causal, scale=1.0)))
            cross = layer.encoder_attn
            q = self._heads(cross.q_proj(layer.encoder_attn_layer_norm(x)) * self.scaling, 1)
            k, v = self._heads(cross.k_proj(encoder_out), 1), self._heads(cross.v_proj(encoder_out), 1)
            if i in wanted:
                out.append(q[0, wanted[i]].float() @ k[0, wanted[i]].float().transpose(-1, -2))
            x = x + cross.out_proj(self._merge(F.scaled_dot_product_attention(q, k, v, scale=1.0)))
            x = x + self._ffn(layer, x)
        return torch.cat(out, 0), self.logits(self.decoder.layer_norm(x))[0]
