"""Adapter uploads in other formats: a zipped PEFT LoRA folder becomes a SplitASR adapter file.

The zip is read in memory under the same limits as an import from the command line (member count,
sizes, compression ratio: zip bombs are refused before anything is decompressed; paths, symlinks and
encryption are checked), converted with :func:`splitasr.adapters.import_peft` for the served
backbone, and then validated and stored like any adapter file, under the sha256 of the converted file.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import PurePosixPath

from ..errors import InvalidAdapter, InvalidInput, NotReady
from ..storage.store import check_sha256
from . import AdapterLimits, BackboneSpec, adapter_to_bytes, import_peft
from .peft_interop import CONFIG_NAME, WEIGHTS_NAME

ZIP_MAGIC = b"PK\x03\x04"
PEFT_CREATOR = "peft-upload"


def is_peft_zip(data: bytes) -> bool:
    """A zip whose members include a PEFT folder's files (read from the central directory only).

    Other zips (a ``torch.save`` file is one) are left to the adapter file checks, which refuse them.
    """
    if data[:4] != ZIP_MAGIC:
        return False
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = {PurePosixPath(name).name for name in zf.namelist()}
    except (zipfile.BadZipFile, ValueError) as exc:
        raise InvalidAdapter(f"the upload starts like a zip but is not a readable one ({exc}): send a complete "
                             "zip of a PEFT LoRA folder, or an adapter .safetensors file") from None
    return bool(names & {CONFIG_NAME, WEIGHTS_NAME})


def adapter_file(data: bytes, spec: BackboneSpec | None, limits: AdapterLimits,
                 expected_sha256: str | None = None) -> tuple[bytes, str | None, str | None]:
    """``(bytes to store, sha256 they must have, format converted from)`` for an uploaded file.

    An adapter file passes through. A zip with a PEFT folder's files is converted: ``expected_sha256``
    (if any) is checked against the zip the client sent, then the converted file is returned.
    """
    if not is_peft_zip(data):
        return data, expected_sha256, None
    if expected_sha256:
        actual = hashlib.sha256(data).hexdigest()
        if check_sha256(expected_sha256) != actual:
            raise InvalidInput(f"upload is corrupt: sha256 is {actual}, the client announced {expected_sha256}",
                               param="sha256")
    if spec is None:
        raise NotReady("the backbone is still loading; retry shortly")
    return adapter_to_bytes(import_peft(data, spec, limits=limits, creator=PEFT_CREATOR)), None, "peft"
