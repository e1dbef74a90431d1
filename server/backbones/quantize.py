"""Weight quantization of a frozen backbone's linear layers: ``none``, ``int8`` or ``nf4``.

* ``nf4``: 4-bit NormalFloat (QLoRA) through bitsandbytes ``Linear4bit``, blockwise absmax over 64
  weights with double-quantized block statistics; the weight is dequantized on the fly in every
  forward. bitsandbytes >= 0.48 runs this on the CPU as well as on CUDA.
* ``int8``: per-output-channel symmetric int8 weights. On the CPU the matmul is PyTorch's dynamic
  quantized kernel (fbgemm: activations quantized per call), the kernel ``splitasr bench rtf`` times;
  on CUDA it is bitsandbytes ``Linear8bitLt``.

Every replacement is still an ``nn.Linear`` (``in_features``, ``out_features``, a ``weight``
parameter whose logical shape is (out, in)), so adapter banks wrap it like any linear and
:class:`~splitasr.adapters.BackboneSpec` gives a quantized backbone the same fingerprint as its
full-precision checkpoint: an adapter trained on fp32 loads on NF4 and vice versa (the SAML paper's
PQM setting: the adapter recovers what quantization loses). Gradients flow through the frozen
quantized weight to the input, so adapters train on a quantized backbone too.

Kept in full precision: embeddings, convolutions, norms and a CTC model's ``lm_head``, as QLoRA does.
Whisper's output head ``proj_out`` shares its weight with the token embedding: ``nf4`` keeps it tied
and in full precision; ``int8`` gives it an untied int8 copy (:data:`QUANTIZED_TIED_HEADS`), because
on the CPU that matmul (d_model × vocabulary, 384 × 51864 for tiny.en) is about half of a decoder
step, while the embedding lookup keeps its full-precision table.
"""

from __future__ import annotations

import logging
import warnings
from typing import Literal

import torch
from torch import nn

from ..errors import BackboneUnavailable, InvalidInput

log = logging.getLogger(__name__)

Quantization = Literal["none", "int8", "nf4"]
QUANTIZATIONS: tuple[str, ...] = ("none", "int8", "nf4")
NF4_BLOCK_SIZE = 64
KEEP_FULL_PRECISION = ("proj_out", "lm_head")
# tied output heads that a mode still quantizes, as an untied copy (the embedding keeps its table)
QUANTIZED_TIED_HEADS: dict[str, tuple[str, ...]] = {"int8": ("proj_out",)}
BNB_REQUIREMENT = "bitsandbytes==0.50.2"


def check_quantization(mode: str) -> str:
    """``mode`` if it names a quantization, else :class:`InvalidInput` listing the choices."""
    if mode not in QUANTIZATIONS:
        raise InvalidInput(f"unknown quantization {mode!r}; use one of {', '.join(QUANTIZATIONS)}")
    return mode


def _bitsandbytes():
    try:
        import bitsandbytes
    except ImportError as exc:  # an optional extra
        raise BackboneUnavailable(
            f"quantization needs bitsandbytes: pip install 'splitasr[quant]' (or '{BNB_REQUIREMENT}')"
        ) from exc
    return bitsandbytes


class _Int8Matmul(torch.autograd.Function):
    """x Wᵀ with the int8 kernel; the backward pass uses the dequantized weight (W itself is frozen)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: Int8Linear) -> torch.Tensor:  # type: ignore[override]
        ctx.layer = layer
        return layer.int8_matmul(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad @ ctx.layer.dequantized_weight().to(grad.dtype), None


class Int8Linear(nn.Linear):
    """A frozen linear layer with per-channel int8 weights, run by PyTorch's dynamic int8 CPU kernel.

    ``weight`` is an empty placeholder parameter (the int8 weight lives in the packed kernel
    parameters); ``in_features`` / ``out_features`` keep the logical shape. The bias is packed with
    the weight, so the kernel adds it in its output pass; ``bias`` keeps a copy for the interface.
    """

    def __init__(self, linear: nn.Linear) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float().cpu()
        scales = (weight.abs().amax(dim=1) / 127.0).clamp_min(1e-12).double()
        with warnings.catch_warnings():  # the quantized-tensor constructors warn about a future removal
            warnings.simplefilter("ignore")
            qweight = torch.quantize_per_channel(
                weight, scales, torch.zeros_like(scales, dtype=torch.long), 0, torch.qint8
            )
            bias = None if linear.bias is None else linear.bias.detach().float().cpu()
            self._packed = torch.ops.quantized.linear_prepack(qweight, bias)  # the kernel adds the bias
        self.weight = nn.Parameter(torch.empty(0), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def int8_matmul(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        out = torch.ops.quantized.linear_dynamic(x.reshape(-1, shape[-1]).float().contiguous(), self._packed, True)
        return out.reshape(*shape[:-1], self.out_features)

    def dequantized_weight(self) -> torch.Tensor:
        """The weight the kernel uses, as float32 [out, in]."""
        return torch.ops.quantized.linear_unpack(self._packed)[0].dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _Int8Matmul.apply(x, self) if torch.is_grad_enabled() and x.requires_grad else self.int8_matmul(x)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


def _nf4_linear(linear: nn.Linear) -> nn.Linear:
    bnb = _bitsandbytes()
    weight = linear.weight
    layer = bnb.nn.Linear4bit(
        linear.in_features, linear.out_features, bias=linear.bias is not None,
        compute_dtype=weight.dtype, compress_statistics=True, quant_type="nf4", device="meta",
    )
    layer.weight = bnb.nn.Params4bit(
        weight.detach().to("cpu"), requires_grad=False, blocksize=NF4_BLOCK_SIZE, compress_statistics=True,
        quant_type="nf4", module=layer,
    )
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
    return layer.to(weight.device)  # moving the parameter quantizes it


def _int8_cuda_linear(linear: nn.Linear) -> nn.Linear:
    bnb = _bitsandbytes()
    layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                has_fp16_weights=False, threshold=6.0, device="meta")
    layer.weight = bnb.nn.Int8Params(linear.weight.detach().to("cpu"), requires_grad=False, has_fp16_weights=False)
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
    return layer.to(linear.weight.device)


def quantize_linear(linear: nn.Linear, mode: str) -> nn.Linear:
    """A quantized copy of one frozen linear layer."""
    if mode == "nf4":
        return _nf4_linear(linear)
    if mode == "int8":
        return _int8_cuda_linear(linear) if linear.weight.device.type == "cuda" else Int8Linear(linear)
    raise InvalidInput(f"cannot quantize a layer to {mode!r}")


def _tied_ids(model: nn.Module) -> set[int]:
    counts: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        counts[id(param)] = counts.get(id(param), 0) + 1
    return {pid for pid, n in counts.items() if n > 1}


def quantize_model(model: nn.Module, mode: str, keep: tuple[str, ...] = KEEP_FULL_PRECISION) -> list[str]:
    """Replace the plain ``nn.Linear`` layers of a frozen ``model`` in place; returns their names.

    Layers whose last name part is in ``keep`` and layers sharing their weight (tied heads) stay as
    they are, except the tied heads :data:`QUANTIZED_TIED_HEADS` names for ``mode``: those get an
    untied quantized copy (the module they share the weight with keeps the full-precision tensor).
    Call before attaching an adapter bank.
    """
    check_quantization(mode)
    if mode == "none":
        return []
    tied = _tied_ids(model)
    heads = QUANTIZED_TIED_HEADS.get(mode, ())
    names = [
        name for name, module in model.named_modules()
        if type(module) is nn.Linear and (
            name.rpartition(".")[2] in heads
            or (name.rpartition(".")[2] not in keep and id(module.weight) not in tied)
        )
    ]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, quantize_linear(getattr(parent, child), mode))
    model.requires_grad_(False)
    log.info("quantized %d linear layers to %s", len(names), mode)
    return names


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters, buffers and int8 kernel weights (quantization statistics
    of NF4 layers included)."""
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    for module in model.modules():
        if isinstance(module, Int8Linear):
            total += module.in_features * module.out_features + 8 * module.out_features  # int8 + scales
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None:
            total += _quant_state_bytes(state)
    return total


def _quant_state_bytes(state) -> int:
    total = 0
    for name in ("absmax", "code"):
        tensor = getattr(state, name, None)
        if isinstance(tensor, torch.Tensor):
            total += tensor.numel() * tensor.element_size()
    nested = getattr(state, "state2", None)
    return total + (_quant_state_bytes(nested) if nested is not None else 0)
