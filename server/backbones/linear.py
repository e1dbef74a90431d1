"""Faster float32 linear layers on x86 CPUs: large products through oneDNN rather than MKL.

PyTorch's CPU ``nn.Linear`` calls MKL's sgemm. On AMD CPUs MKL does not take its fastest code path:
one thread of an AMD EPYC (Zen 4, AVX-512) ran a 1500 x 384 x 1536 product (a tiny.en encoder
feed-forward layer) at 91 GFLOPS through ``F.linear`` and at 229 GFLOPS through oneDNN, and the
vocabulary projection of one decoder row (384 -> 51 864) in 2.7 ms instead of 5.5 ms. oneDNN (the
``mkldnn`` library every x86 PyTorch wheel bundles) picks its kernels by instruction set, whoever
made the CPU. ``torch.ops.mkldnn._linear_pointwise`` takes the layer's ordinary weight, so no second
copy of the weights is kept.

Small products (a decoder step's few rows through a 384-wide layer) stay on ``F.linear``: there
oneDNN's fixed cost per call is larger than the product (9 us against 20 us for one row).
``scripts/measure_linear_kernels.py`` prints both kernels' times per shape on the machine at hand.

Only inference uses oneDNN: when autograd needs the product (training), the layer is ``F.linear``.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

# Products of at least this many multiply-adds (rows x in x out) go to oneDNN: the measured crossover
# for 384- and 1536-wide layers lies between 0.6 M (one row of a feed-forward layer, F.linear faster)
# and 2.4 M (four such rows, or 16 rows of a 384 x 384 layer, oneDNN faster).
MIN_ONEDNN_MACS = 2_000_000


def _onednn_linear():
    """oneDNN's linear on dense tensors, or None where this PyTorch build lacks it."""
    if not torch.backends.mkldnn.is_available():
        return None
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if op is None:
        return None
    try:
        x, w = torch.ones(2, 3), torch.ones(4, 3)
        if not torch.equal(op(x, w, None, "none", [], ""), F.linear(x, w)):
            return None
    except (RuntimeError, NotImplementedError):
        return None
    return op


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` whose large inference products run through oneDNN (same weights, same results up
    to float rounding)."""

    _op = None  # set by use_onednn_linears

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        rows = x.numel() // max(1, x.shape[-1])
        if (x.dtype is not torch.float32 or x.device.type != "cpu"
                or rows * weight.shape[0] * weight.shape[1] < MIN_ONEDNN_MACS
                or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
            return F.linear(x, weight, self.bias)
        return OneDNNLinear._op(x, weight, self.bias, "none", [], "")


def use_onednn_linears(model: nn.Module) -> int:
    """Make the model's float32 CPU ``nn.Linear`` layers :class:`OneDNNLinear` in place (parameters,
    state dict and ``isinstance`` unchanged); returns how many. Nothing changes where oneDNN is not
    available (another architecture, another build)."""
    op = _onednn_linear()
    if op is None:
        return 0
    OneDNNLinear._op = op
    count = 0
    for module in model.modules():
        if (type(module) is nn.Linear and module.weight.dtype is torch.float32
                and module.weight.device.type == "cpu"):
            module.__class__ = OneDNNLinear
            count += 1
    log.debug("%d linear layers run large products through oneDNN", count)
    return count
