"""Model artifacts: a directory with the ONNX graph, the weights and a model card.

Layout::

    model_card.json   schema version, model id, input grid and preprocessing,
                      outputs, calibration, training config and git commit,
                      evaluation metrics, SHA-256 of every other file
    model.onnx        the network (opset 17), inputs ``x``, outputs as in
                      :data:`mnedge_live.network.OUTPUT_NAMES`
    weights.pt        PyTorch state dict (loaded with ``weights_only=True``)
    tensorrt/*.ts     optional TensorRT engines (with GPU name and versions in the card)

:func:`load_artifact` refuses a directory whose files do not match their
checksums, that lacks a listed file, whose card was edited after it was
written (``card_sha256``: the card's own checksum) or whose schema version is
unknown.  It reads the card and every listed file once, checks the bytes it
read and keeps them: the runtimes build their sessions from those bytes
(:meth:`Artifact.read`), never by opening the files again, so what was
verified is what runs even if the folder is replaced or removed meanwhile
(``mnedge models install --force`` of the model in use).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

SCHEMA_VERSION = 1
CARD_NAME = "model_card.json"
#: Key of the card's checksum of its own content (:func:`card_digest`).
CARD_DIGEST_KEY = "card_sha256"

_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")

log = logging.getLogger(__name__)


class ArtifactError(RuntimeError):
    """The artifact is missing, partial, tampered with or of an unknown schema."""


def sha256_file(path: str | Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Artifact:
    """A verified model artifact: its card and the verified bytes of every file the card lists."""

    path: Path
    card: dict
    #: file name -> content, as read and checked against the card by :func:`load_artifact`
    contents: Mapping[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    @property
    def model_id(self) -> str:
        """Identifier shown with every readout."""
        return str(self.card["model_id"])

    def file(self, name: str) -> Path:
        """Path of a file listed in the card.

        The file on disk may have been replaced since the artifact was
        verified (a reinstall under the same id): to use its content, call
        :meth:`read`.
        """
        if name not in self.card["files"]:
            raise ArtifactError(f"artifact {self.path} has no file {name!r}")
        return self.path / name

    def read(self, name: str) -> bytes:
        """The content of a file listed in the card, as it was read and verified at load."""
        if name not in self.card["files"]:
            raise ArtifactError(f"artifact {self.path} has no file {name!r}")
        try:
            return self.contents[name]
        except KeyError:
            raise ArtifactError(f"artifact {self.path}: {name} was not read at load (use load_artifact)") from None


def default_artifact_path() -> Path:
    """The model shipped inside the package."""
    return Path(str(resources.files("mnedge_live") / "models" / "default"))


def card_digest(card: dict) -> str:
    """SHA-256 of a card's content without its own checksum: canonical JSON (sorted keys, no spaces).

    The card holds what the readouts depend on besides the weights (the
    calibration of the stated uncertainty, the OOD thresholds, the
    preprocessing): an edit to it must be caught as an edit to a file is.
    """
    content = {k: v for k, v in card.items() if k != CARD_DIGEST_KEY}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_card(directory: str | Path, card: dict) -> Path:
    """Write ``model_card.json`` with the SHA-256 of every other file in ``directory`` and of its own content."""
    d = Path(directory)
    files = {}
    for p in sorted(d.rglob("*")):
        if p.is_file() and p.name != CARD_NAME:
            files[p.relative_to(d).as_posix()] = sha256_file(p)
    card = dict(card, schema_version=SCHEMA_VERSION, files=files)
    card[CARD_DIGEST_KEY] = card_digest(card)
    path = d / CARD_NAME
    path.write_text(json.dumps(card, indent=2, sort_keys=True))
    return path


def load_artifact(path: str | Path | None = None) -> Artifact:
    """Read and verify an artifact directory.

    Without ``path`` the model is found by
    :func:`mnedge_live.model_store.resolve_model_path`: the model in use in the
    model store, else the embedded model.  The store's record and the model's
    files are then read while the store's lock is held shared, so an install
    into the store (which holds it exclusively) can never be seen half done.

    Every listed file is read once into memory and checked there: the
    returned :class:`Artifact` holds those bytes (:meth:`Artifact.read`).

    Raises
    ------
    ArtifactError
        Missing card or file, checksum mismatch, or unknown schema version.
    """
    if path is not None:
        return _read_verified(Path(path))
    # imported here: the store imports this module
    from mnedge_live.model_store import ModelStore, StoreError, resolve_model_path

    try:
        with ModelStore().reading():
            d = resolve_model_path(None)
            if d == default_artifact_path() and not (d / CARD_NAME).is_file():
                raise ArtifactError(f"no model given, none in use in the model store and no embedded model at {d}; "
                                    "pass a model artifact (--model DIR) or install one with 'mnedge models install'")
            return _read_verified(d)
    except StoreError as exc:
        raise ArtifactError(str(exc)) from exc


def _read_verified(d: Path) -> Artifact:
    """Read the card and every file it lists from ``d`` once, and check what was read."""
    card_path = d / CARD_NAME
    try:
        raw = card_path.read_bytes()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise ArtifactError(f"{d} is not a model artifact: {CARD_NAME} is missing") from None
    try:
        card = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{card_path} is not valid JSON: {exc}") from exc
    if not isinstance(card, dict):
        raise ArtifactError(f"{card_path} is not a model card: a JSON object was expected, not {type(card).__name__}")
    version = card.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ArtifactError(f"{d}: model card schema version {version!r} is not supported (this build reads {SCHEMA_VERSION})")
    if CARD_DIGEST_KEY in card:
        if card[CARD_DIGEST_KEY] != card_digest(card):
            raise ArtifactError(f"{card_path} was changed after it was written: its content fails its SHA-256 "
                                f"check ({CARD_DIGEST_KEY}); re-export or recalibrate the model instead of editing the card")
    else:
        log.warning("%s has no checksum of its own (written before cards carried one): an edit to its calibration "
                    "or thresholds would go unnoticed; re-export or recalibrate to add it", card_path)
    _check_card_content(card_path, card)
    files = card.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"{card_path} lists no files")
    contents = {}
    for name, digest in files.items():
        _check_listed_file(card_path, name, digest)
        try:
            data = (d / name).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ArtifactError(f"artifact {d} is partial: {name} is missing") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise ArtifactError(f"artifact {d}: {name} fails its SHA-256 check (expected {digest[:12]}..., got {actual[:12]}...)")
        contents[name] = data
    return Artifact(path=d, card=card, contents=contents)


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_card_content(card_path: Path, card: dict) -> None:
    """Refuse a card that lacks what loading its model reads (a signed card of another tool, or cut short):
    the store installed and listed such a model as fine, and every later load of it failed."""
    from mnedge_live.calibration import StdCalibration

    problems = []
    if not isinstance(card.get("model_id"), str) or not card["model_id"]:
        problems.append("model_id (a non-empty string)")
    inp = card.get("input")
    if not (isinstance(inp, dict) and _number(inp.get("work_step_eV")) and isinstance(inp.get("preprocessing"), str)
            and isinstance(inp.get("grid_points"), int) and inp["grid_points"] > 0):
        problems.append("input (work_step_eV, preprocessing, grid_points)")
    if not isinstance(card.get("network"), dict):
        problems.append("network (the architecture)")
    try:
        StdCalibration(card["calibration"])
    except Exception as exc:   # noqa: BLE001 - a missing key, a wrong type or shape: all mean "unusable"
        problems.append(f"calibration ({type(exc).__name__}: {exc})")
    if problems:
        raise ArtifactError(f"{card_path} is not a usable model card: missing or malformed {'; '.join(problems)}")


def _check_listed_file(card_path: Path, name: object, digest: object) -> None:
    """Refuse a card entry that is not a relative path inside the artifact with a SHA-256 hex digest."""
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name or ".." in name.split("/"):
        raise ArtifactError(f"{card_path} lists {name!r}: not a relative path inside the artifact")
    if not isinstance(digest, str) or not _HEX_DIGEST.fullmatch(digest):
        raise ArtifactError(f"{card_path} lists {name!r} with {digest!r}: not a SHA-256 hex digest")
