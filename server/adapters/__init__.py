"""Per-user adapters on a frozen backbone: kinds, slot bank, file format, PEFT interop.

Typical serving use::

    spec = BackboneSpec.from_model("whisper-tiny.en", model)
    attach_bank(model, "all", num_slots=64, limits=AdapterLimits())
    adapter = load_adapter(path, expected_backbone=spec, limits=AdapterLimits())
    load_into_slot(model, 3, adapter)
    emb = utterance_embedding(input_features, num_frames)
    with bank_context(model, slots=torch.tensor([0, 3]), utterance_embedding=emb):
        logits = model(input_features=input_features, decoder_input_ids=ids).logits
"""

from . import glora, lora, saml  # noqa: F401  (registers the built-in kinds)
from .adapter import Adapter, AdapterLimits, BackboneSpec, new_adapter
from .bank import AdapterBank, attach_bank, bank_layers, detach_bank
from .context import SlotContext, bank_context
from .fileformat import adapter_to_bytes, load_adapter, save_adapter
from .glora import GLoRAConfig
from .kinds import AdapterKind, KindConfig, get_kind, register, registered_kinds
from .peft_interop import export_peft, import_peft
from .saml import SAMLConfig, utterance_embedding
from .slots import (
    clear_slot,
    export_slot,
    load_into_slot,
    set_trainable,
    slot_occupant,
    stage_families,
)
from .targets import PRESETS, resolve_targets

__all__ = [
    "PRESETS",
    "Adapter",
    "AdapterBank",
    "AdapterKind",
    "AdapterLimits",
    "BackboneSpec",
    "GLoRAConfig",
    "KindConfig",
    "SAMLConfig",
    "SlotContext",
    "adapter_to_bytes",
    "attach_bank",
    "bank_context",
    "bank_layers",
    "clear_slot",
    "detach_bank",
    "export_peft",
    "export_slot",
    "get_kind",
    "import_peft",
    "load_adapter",
    "load_into_slot",
    "new_adapter",
    "register",
    "registered_kinds",
    "resolve_targets",
    "save_adapter",
    "set_trainable",
    "slot_occupant",
    "stage_families",
    "utterance_embedding",
]
