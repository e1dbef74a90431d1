"""Small file builders the tests share."""

from __future__ import annotations

import io
import zipfile


def zip_bytes(files: dict[str, bytes], folder: str = "", compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip archive holding ``files`` (name -> content), under ``folder`` when given."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, content in files.items():
            archive.writestr(f"{folder}{name}", content)
    return buffer.getvalue()
