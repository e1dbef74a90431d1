"""Magnitude bounds: an adapter whose values are finite but so large that serving it overflows is refused.

A file can pass every structural check and still break at use: every weight 1e30 (infinite once the
bank holds it in float16, and infinite in float32 after two products), every weight 65504 (float16's
largest value: storable, but ``A x`` overflows), or ``alpha`` = 1e30. The bounds below follow from
how the bank computes one row of one adapted linear layer, in the backbone's dtype (float16 on a GPU,
float32 on a CPU), in canonical slot form (:mod:`splitasr.adapters.kinds`)::

    h = A x          gates: σ(G x), σ(C h)          y = B h'          Δ = s · y

For every kind the gates only shrink (σ ∈ (0, 1), applied element-wise) and a SAML mixture is convex
(``‖Σ p_e A_e‖ ≤ max_e ‖A_e‖``), so with Frobenius norms (upper bounds of the operator norms)::

    ‖h‖ ≤ ‖A‖·‖x‖     |G x| ≤ ‖G‖·‖x‖     ‖y‖ ≤ ‖B‖·‖A‖·‖x‖     |C h| ≤ ‖C‖·‖A‖·‖x‖     ‖Δ‖ ≤ s·‖B‖·‖A‖·‖x‖

Assume a layer input of norm at most :data:`INPUT_NORM` = 1024: the largest input norm any linear
of Whisper tiny.en saw over the 11 real utterances of ``tests/data/real-speech`` was 914 (encoder
layer 3 ``fc2``, whose input is a GELU output; the LayerNorm'd inputs of the attention and ``fc1``
layers stay below 230). Keeping every quantity above at most :data:`ACTIVATION_LIMIT` = 2^15
(half of float16's 65504, so that the layer's own output, at most 626 in the same measurement, plus
the update still fits) gives :data:`MAX_FACTOR_NORM` = 2^15 / 1024 = 32 for ``‖A_e‖``, ``‖G‖``,
``‖B_e‖·‖A_e‖``, ``‖C‖·‖A_e‖`` and the gain ``s·‖B_e‖·‖A_e‖``. Each stored value and the scale
``s = alpha / r`` must also be representable with room to spare: at most :data:`MAX_ABS_VALUE` =
2^14 in absolute value (this also bounds the SAML router, whose logits are computed in float32).

So under that assumption the adapter's own arithmetic cannot overflow in float16, and the update it
adds to any activation is at most 2^15; in float32 the whole adapted network stays finite (an added
2^15 per layer is far from float32's 3.4e38 even after the attention products). Whether a backbone's
later layers overflow in float16 on such an update depends on the backbone; the decode loop's own
non-finite check is the backstop there.

Trained adapters sit far inside: gains of 0.2 to 2.5 for adapters trained here (``splitasr train``,
PEFT imports), 2.5 to 5 for the test suite's random ones; a Kaiming-initialised ``A`` has
``‖A‖ ≈ √(r/3)`` (4.6 at rank 64).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import InvalidAdapter
from .kinds import AdapterKind, KindConfig

INPUT_NORM = 1024.0
ACTIVATION_LIMIT = 2.0**15
MAX_FACTOR_NORM = ACTIVATION_LIMIT / INPUT_NORM  # 32
MAX_ABS_VALUE = 2.0**14

__all__ = ["ACTIVATION_LIMIT", "INPUT_NORM", "MAX_ABS_VALUE", "MAX_FACTOR_NORM", "check_magnitudes"]


def _norm(tensor: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(tensor.detach().double()))


def _expert_norms(tensor: torch.Tensor) -> float:
    """The largest Frobenius norm over the experts of an ``[E, rows, cols]`` stack."""
    return max(_norm(t) for t in tensor.reshape(-1, *tensor.shape[-2:]))


def check_magnitudes(
    kind: AdapterKind,
    config: KindConfig,
    tensors: Mapping[str, Mapping[str, torch.Tensor]],
    global_tensors: Mapping[str, torch.Tensor],
) -> None:
    """Refuse an adapter whose values could overflow when served (see the module docstring).

    ``tensors`` is ``{module: {suffix: tensor}}`` as in :class:`~splitasr.adapters.Adapter`; every
    failure is an :class:`InvalidAdapter` naming the tensor (or ``alpha``) and the bound.
    """
    scale = config.scale
    if scale > MAX_ABS_VALUE:
        raise InvalidAdapter(f"alpha {config.alpha:g} with rank {config.r} gives a scale alpha/r = {scale:g}, "
                             f"over the limit of {MAX_ABS_VALUE:g} (it would overflow float16 at use)")
    named = {n: t for n, t in global_tensors.items()}
    named.update({f"{m}.{s}": t for m, group in tensors.items() for s, t in group.items()})
    for name, tensor in named.items():
        peak = float(tensor.detach().abs().max()) if tensor.numel() else 0.0
        if peak > MAX_ABS_VALUE:
            raise InvalidAdapter(f"tensor {name!r} holds a value of magnitude {peak:.3g}, over the limit of "
                                 f"{MAX_ABS_VALUE:g} (finite, but it would overflow float16 at use)")
    for module, group in sorted(tensors.items()):
        _check_layer(module, kind.to_slot(config, group), scale)


def _check_layer(module: str, slot, scale: float) -> None:
    a = _expert_norms(slot.A)
    b = _expert_norms(slot.B)
    checks = [("‖A‖ (the low-rank input projection)", a)]
    if slot.G is not None:
        checks.append(("‖G‖ (the low-rank gate)", _norm(slot.G)))
    checks.append(("‖B‖·‖A‖", b * a))
    if slot.C is not None:
        checks.append(("‖C‖·‖A‖ (the output gate)", _norm(slot.C) * a))
    checks.append(("the gain alpha/r·‖B‖·‖A‖", scale * b * a))
    for what, value in checks:
        if value > MAX_FACTOR_NORM:
            raise InvalidAdapter(
                f"module {module!r}: {what} is {value:.3g}, over the limit of {MAX_FACTOR_NORM:g}: on a layer "
                f"input of norm {INPUT_NORM:g} the update could reach {value * INPUT_NORM:.3g} and overflow "
                "float16 (trained adapters stay below about 5)"
            )
