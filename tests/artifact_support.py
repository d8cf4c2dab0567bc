"""Helpers of the model-store tests: real artifacts under other ids, tampered copies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mnedge_live.artifact import CARD_NAME, write_card


def copy_as(artifact: str | Path, dest: str | Path, model_id: str, **card_changes) -> Path:
    """Copy an artifact and re-sign its card under another model id (a valid artifact)."""
    dest = Path(dest)
    shutil.copytree(artifact, dest)
    card = json.loads((dest / CARD_NAME).read_text())
    card.update(model_id=model_id, **card_changes)
    card.pop("files", None)
    write_card(dest, card)
    return dest


def tampered(artifact: str | Path, dest: str | Path, name: str = "model.onnx") -> Path:
    """Copy an artifact and flip one byte of ``name`` without updating the card."""
    dest = Path(dest)
    shutil.copytree(artifact, dest)
    data = bytearray((dest / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (dest / name).write_bytes(bytes(data))
    return dest
