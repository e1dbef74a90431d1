"""Write a fresh (untrained) LoRA adapter for the configured backbone: the compose demo's device adapter.

Its update starts at exactly zero, so it transcribes like the plain backbone; it shows enrolment and
per-request adapters end to end. Real adapters come from ``splitasr train``.

    python sample_adapter.py OUT.safetensors      # backbone from SPLITASR_BACKBONE / SPLITASR_CACHE_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

from splitasr.adapters import BackboneSpec, get_kind, new_adapter, resolve_targets, save_adapter
from splitasr.backbones.whisper import WhisperBackbone
from splitasr.config import Settings


def main(out: Path) -> int:
    if out.is_file():
        print(f"sample adapter already at {out}")
        return 0
    settings = Settings()
    backbone = WhisperBackbone.load(settings.backbone, cache_dir=settings.backbone_cache_dir, device="cpu")
    spec = BackboneSpec.from_model(backbone.name, backbone.model)
    config = get_kind("lora").make_config(r=8, alpha=16.0)
    adapter = new_adapter("lora", config, resolve_targets("decoder", spec.linear_shapes), spec, creator="compose demo")
    save_adapter(out, adapter)
    print(f"wrote sample adapter {out} for backbone {backbone.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
