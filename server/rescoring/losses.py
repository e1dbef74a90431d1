"""Training losses of the rescorer: MWER over N-best lists and LoRB's correlation regularizer."""

from __future__ import annotations

import torch


def mwer_loss(scores: torch.Tensor, errors: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Minimum word error rate loss: expected word errors under the softmax of the hypothesis scores.

    ``scores`` [B, K] (higher = better; the fused ASR + rescorer scores), ``errors`` [B, K] word errors
    of each hypothesis against the reference, ``mask`` [B, K] true for real hypotheses (lists shorter
    than K are padded). Per list: Σ_k p_k (e_k − ē), p = softmax over the list, ē the list's mean error
    (the usual baseline: it leaves the gradient unchanged, since Σ p_k = 1, and centres the value).
    Returns the mean over lists.
    """
    if mask is None:
        mask = torch.ones_like(scores, dtype=torch.bool)
    errors = errors.to(scores.dtype)
    probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    mean_error = (errors * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp_min(1)
    return ((probs * (errors - mean_error)).masked_fill(~mask, 0.0)).sum(-1).mean()


def correlation_matrix(hidden: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Pearson correlation [H, H] between the H features of ``hidden`` [N, H] over its N rows."""
    centred = hidden - hidden.mean(0, keepdim=True)
    cov = centred.transpose(0, 1) @ centred / max(1, hidden.shape[0] - 1)
    std = cov.diagonal().clamp_min(eps).sqrt()
    return cov / (std[:, None] * std[None, :])


def correlation_loss(hidden: torch.Tensor) -> torch.Tensor:
    """LoRB's correlation-based regularizer ‖Σ − I‖²_F / H² on pooled representations [N, H].

    Σ is the feature correlation matrix over the batch: pushing it towards I keeps the features
    decorrelated (isotropic), against the representation collapse fine-tuning can cause. Dividing by
    H² makes the weight independent of the hidden size.
    """
    corr = correlation_matrix(hidden)
    eye = torch.eye(corr.shape[0], dtype=corr.dtype, device=corr.device)
    return ((corr - eye) ** 2).sum() / corr.shape[0] ** 2
