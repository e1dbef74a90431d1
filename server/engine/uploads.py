"""Adapter uploads in other formats: a zipped PEFT LoRA folder becomes a SplitASR adapter file.

The zip is read in memory under the same limits as an import from the command line (member count,
sizes, compression ratio: zip bombs are refused before anything is decompressed; paths, symlinks and
encryption are checked), converted with :func:`splitasr.adapters.import_peft` for the served
backbone, and then validated and stored like any adapter file, under the sha256 of the converted file.
"""

from __future__ import annotations

import hashlib

from ..adapters import AdapterLimits, BackboneSpec, adapter_to_bytes, import_peft
from ..errors import InvalidInput, NotReady
from .store import check_sha256

ZIP_MAGIC = b"PK\x03\x04"
PEFT_CREATOR = "peft-upload"


def is_zip(data: bytes) -> bool:
    return data[:4] == ZIP_MAGIC


def adapter_file(data: bytes, spec: BackboneSpec | None, limits: AdapterLimits,
                 expected_sha256: str | None = None) -> tuple[bytes, str | None, str | None]:
    """``(bytes to store, sha256 they must have, format converted from)`` for an uploaded file.

    An adapter file passes through. A zip is a PEFT LoRA folder: ``expected_sha256`` (if any) is
    checked against the zip the client sent, then the converted file is returned.
    """
    if not is_zip(data):
        return data, expected_sha256, None
    if expected_sha256:
        actual = hashlib.sha256(data).hexdigest()
        if check_sha256(expected_sha256) != actual:
            raise InvalidInput(f"upload is corrupt: sha256 is {actual}, the client announced {expected_sha256}",
                               param="sha256")
    if spec is None:
        raise NotReady("the backbone is still loading; retry shortly")
    return adapter_to_bytes(import_peft(data, spec, limits=limits, creator=PEFT_CREATOR)), None, "peft"
