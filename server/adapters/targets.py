"""Which backbone linear layers an adapter attaches to: presets and module-name globs.

Module names are Hugging Face ``WhisperForConditionalGeneration`` names, e.g.
``model.encoder.layers.0.self_attn.q_proj``. A target spec is a comma-separated list (or a sequence) of
preset names and ``fnmatch`` globs; the result is the sorted union. ``proj_out`` (tied to the token
embedding) is never a target.

=========  ==================================================================  =======================
preset     modules (``*`` = every layer index)                                 GLoRA paper variant
=========  ==================================================================  =======================
attn       ``model.{encoder,decoder}.layers.*.self_attn.{q,k,v,out}_proj``     self-attention
cross      ``model.decoder.layers.*.encoder_attn.{q,k,v,out}_proj``            cross-attention
ffn        ``model.{encoder,decoder}.layers.*.{fc1,fc2}``                      feed-forward
qv         ``model.{encoder,decoder}.layers.*.self_attn.{q,v}_proj``           (original LoRA choice)
all        attn + cross + ffn                                                  all of the above
encoder    every encoder linear (self_attn + ffn)                              encoder only
decoder    every decoder linear (self_attn + encoder_attn + ffn)               decoder only
=========  ==================================================================  =======================

Encoder-only CTC backbones have no decoder: ``attn``, ``ffn``, ``qv``, ``encoder`` and ``all`` also
match their Conformer blocks (``Wav2Vec2ConformerForCTC``: ``*.encoder.layers.*.self_attn.linear_{q,k,v,out}``
and ``ffn{1,2}.{intermediate,output}_dense``; ``ParakeetForCTC``: ``encoder.layers.*.self_attn.{q,k,v,o}_proj``
and ``feed_forward{1,2}.linear{1,2}``), while ``cross`` and ``decoder`` match nothing there. The CTC
output head ``lm_head`` is never a target.

The paper's "hidden features" vs "low-rank features" variants are the ``glora`` gate position
(``gate="output"`` / ``gate="lowrank"``), not a target set; combine freely, e.g. ``"cross,ffn"`` with
``gate="lowrank"``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

from ..errors import InvalidInput

_ATTN = ("q_proj", "k_proj", "v_proj", "out_proj")
_STACKS = ("encoder", "decoder")


def _attn(stack: str, block: str, projections: Iterable[str] = _ATTN) -> list[str]:
    return [f"model.{stack}.layers.*.{block}.{p}" for p in projections]


def _ffn(stack: str) -> list[str]:
    return [f"model.{stack}.layers.*.fc1", f"model.{stack}.layers.*.fc2"]


PRESETS: dict[str, tuple[str, ...]] = {
    "attn": tuple(g for s in _STACKS for g in _attn(s, "self_attn")),
    "cross": tuple(_attn("decoder", "encoder_attn")),
    "ffn": tuple(g for s in _STACKS for g in _ffn(s)),
    "qv": tuple(g for s in _STACKS for g in _attn(s, "self_attn", ("q_proj", "v_proj"))),
    "encoder": tuple(_attn("encoder", "self_attn") + _ffn("encoder")),
    "decoder": tuple(_attn("decoder", "self_attn") + _attn("decoder", "encoder_attn") + _ffn("decoder")),
}
# Conformer / FastConformer CTC encoders (transformers module names).
_CTC_ATTN = ("*encoder.layers.*.self_attn.linear_q", "*encoder.layers.*.self_attn.linear_k",
             "*encoder.layers.*.self_attn.linear_v", "*encoder.layers.*.self_attn.linear_out",
             "encoder.layers.*.self_attn.q_proj", "encoder.layers.*.self_attn.k_proj",
             "encoder.layers.*.self_attn.v_proj", "encoder.layers.*.self_attn.o_proj")
_CTC_QV = ("*encoder.layers.*.self_attn.linear_q", "*encoder.layers.*.self_attn.linear_v",
           "encoder.layers.*.self_attn.q_proj", "encoder.layers.*.self_attn.v_proj")
_CTC_FFN = ("*encoder.layers.*.ffn[12].intermediate_dense", "*encoder.layers.*.ffn[12].output_dense",
            "encoder.layers.*.feed_forward[12].linear[12]")
PRESETS["attn"] += _CTC_ATTN
PRESETS["ffn"] += _CTC_FFN
PRESETS["qv"] += _CTC_QV
PRESETS["encoder"] += _CTC_ATTN + _CTC_FFN
PRESETS["all"] = PRESETS["attn"] + PRESETS["cross"] + PRESETS["ffn"]

EXCLUDED = ("proj_out", "lm_head")


def split_spec(spec: str | Sequence[str]) -> list[str]:
    """A target spec as a list of preset names / globs."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    items = [item.strip() for item in items if item.strip()]
    if not items:
        raise InvalidInput("target spec is empty; use a preset like 'attn' or module-name globs")
    return items


def resolve_targets(spec: str | Sequence[str], module_names: Iterable[str]) -> list[str]:
    """The sorted module names selected by ``spec`` among ``module_names`` (the backbone's linears).

    Every preset or glob must match at least one module, so a typo is an error rather than an
    adapter that silently adapts nothing.
    """
    names = [n for n in module_names if n not in EXCLUDED]
    selected: set[str] = set()
    for item in split_spec(spec):
        patterns = PRESETS.get(item, (item,))
        matched = {n for n in names for p in patterns if fnmatch.fnmatchcase(n, p)}
        if not matched:
            hint = f"presets: {sorted(PRESETS)}" if item not in PRESETS else "the backbone has no such layers"
            raise InvalidInput(f"target {item!r} matches no linear layer of the backbone ({hint})")
        selected |= matched
    return sorted(selected)
