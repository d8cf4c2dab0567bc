"""The model store: installed model artifacts side by side, the one in use and the history for rollback.

Layout (``$MNEDGE_HOME``, else ``~/.local/share/mnedge``)::

    models/<model_id>/   verified copies of installed artifacts
    state.json           {"in_use": model_id or null, "history": [previously used ids, oldest first;
                          null: no model in use, i.e. the embedded default]}
    .lock                held (``flock``) exclusively while the store is changed, shared
                         while a reader resolves and reads the model in use

Every change of ``state.json`` is written to a temporary file and moved into
place with :func:`os.replace`, and an artifact is copied and verified under a
temporary name before it is renamed into ``models/``, so a crash never leaves
a half-written record or a half-copied model under its id.

Readers (:func:`mnedge_live.artifact.load_artifact` without a path, ``mnedge
models list``) hold the lock shared while they read ``state.json`` and the
model's files, and keep the verified bytes: a concurrent ``install --force``
of the same id (which swaps the folders while it holds the lock exclusively)
is seen either wholly before or wholly after, never a mix of two builds or a
folder in the middle of its replacement.

An ``install --force`` killed between its two renames (the old folder moved
aside, the new one not yet in place) leaves the model under
``models/.<id>.*.replaced/<id>``: the next command that changes the store
moves it back (or, where the new folder did arrive, removes it) before
anything else, logged.  A copy killed before it was complete leaves
``models/.<id>.*.installing``; each copy holds a ``flock`` on its folder while
it is made, so the next change of the store removes the folders no process
holds any more (logged), never the copy of an install still running.

Ids read from ``state.json`` are checked like installed ids: a record naming
``../x`` (hand-edited or corrupted) is refused rather than made to load a
folder outside the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mnedge_live.artifact import CARD_NAME, Artifact, ArtifactError, default_artifact_path, load_artifact

#: Environment variable naming the store directory.
HOME_ENV = "MNEDGE_HOME"
STATE_NAME = "state.json"
MODELS_DIR = "models"
LOCK_NAME = ".lock"
#: Suffix of the folder ``install --force`` moves the replaced model into while it swaps the folders.
REPLACED_SUFFIX = ".replaced"
#: Suffix of the folder an artifact is copied into and verified in before it is renamed into place.
INSTALLING_SUFFIX = ".installing"

log = logging.getLogger(__name__)

#: Model ids become directory names: no separators, no leading dot.
_SAFE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]*")
#: What a model id may hold, as messages state it (:func:`is_model_id`).
MODEL_ID_RULE = "letters, digits and '._+-', not starting with a dot"


def is_model_id(model_id: object) -> bool:
    """Whether ``model_id`` can name a model in the store (:data:`MODEL_ID_RULE`): the one rule for
    installing, reading the store's record and exporting an artifact."""
    return isinstance(model_id, str) and _SAFE_ID.fullmatch(model_id) is not None


class StoreError(RuntimeError):
    """A store operation that cannot be done (unknown id, duplicate, nothing to roll back to, ...)."""


class StoreUnusableError(StoreError):
    """The store's path cannot hold a store (it is a regular file): no operation can be done on it."""


def default_store_dir() -> Path:
    """``$MNEDGE_HOME`` when set, else ``~/.local/share/mnedge``."""
    home = os.environ.get(HOME_ENV)
    return Path(home).expanduser() if home else Path.home() / ".local" / "share" / "mnedge"


@dataclass
class StoreState:
    """Contents of ``state.json``."""

    in_use: str | None = None
    #: previously used models, oldest first; None stands for "none in use" (the embedded default)
    history: list[str | None] = field(default_factory=list)


#: Mode of the store's record: readable by everyone (it names models, nothing secret). A temporary
#: file is made 0600; renamed over the record as is, an administrator's ``mnedge models use`` run as
#: root left a record the service user could not read, and the service refused to start.
RECORD_MODE = 0o644


def _atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, fsync it, then rename it over ``path``
    (with mode :data:`RECORD_MODE`)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, RECORD_MODE)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class ModelStore:
    """A directory of installed model artifacts with the one in use and a rollback history.

    Parameters
    ----------
    root : path, optional
        Store directory (default: :func:`default_store_dir`).  It is created on
        the first change, never by reading.
    """

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root is not None else default_store_dir()

    @property
    def models_dir(self) -> Path:
        """Directory holding one folder per installed model."""
        return self.root / MODELS_DIR

    def check_root(self) -> None:
        """Refuse a store path that exists but is no folder (a file given as ``--store`` or ``$MNEDGE_HOME``).

        Read as an absent store, such a path would list no models and make every
        command load the embedded default model instead of the one meant.

        Raises
        ------
        StoreUnusableError
            ``root`` exists and is not a folder.
        """
        if self.root.exists() and not self.root.is_dir():
            raise StoreUnusableError(f"model store {self.root} is a file, not a folder: point --store or "
                                     f"${HOME_ENV} at a folder (it is created by the first install)")

    def model_path(self, model_id: str) -> Path:
        """Folder of an installed model (it may not exist).

        Raises
        ------
        StoreError
            ``model_id`` is not a model id (it could name a folder outside the store).
        """
        if not is_model_id(model_id):
            raise StoreError(f"{model_id!r} is not a model id ({MODEL_ID_RULE})")
        return self.models_dir / model_id

    # -- reading -------------------------------------------------------------------------------------

    def state(self) -> StoreState:
        """The recorded state; an absent store reads as empty.

        Raises
        ------
        StoreError
            ``state.json`` exists but is not a valid record.
        """
        self.check_root()
        path = self.root / STATE_NAME
        if not path.is_file():
            return StoreState()
        try:
            data = json.loads(path.read_text())
            in_use = data.get("in_use")
            history = [None if x is None else str(x) for x in data.get("history", [])]
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            raise StoreError(f"model store {self.root}: {STATE_NAME} is not a valid record: {exc}") from exc
        if in_use is not None and not isinstance(in_use, str):
            raise StoreError(f"model store {self.root}: {STATE_NAME} has an invalid in_use {in_use!r}")
        for what, name in [("the model in use", in_use)] + [("a model in its history", h) for h in history]:
            if name is not None and not is_model_id(name):
                raise StoreError(f"model store {self.root}: {STATE_NAME} names {name!r} as {what}, which is not a "
                                 f"model id ({MODEL_ID_RULE}); refusing to load anything outside {self.models_dir}: "
                                 f"fix or remove {path}")
        return StoreState(in_use=in_use, history=history)

    def installed(self) -> list[str]:
        """Ids of the installed models, sorted."""
        self.check_root()
        if not self.models_dir.is_dir():
            return []
        return sorted(p.name for p in self.models_dir.iterdir() if p.is_dir() and is_model_id(p.name))

    def in_use_path(self) -> Path | None:
        """Folder of the model in use, or None when the store has none in use."""
        in_use = self.state().in_use
        return self.model_path(in_use) if in_use else None

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Hold the store's lock shared: no install, switch or rollback changes the store meanwhile.

        Read ``state.json`` and the files of a model under it (and keep what
        was read) to see the store as one consistent whole.  A store without a
        lock file has never been changed by this module: it is read unlocked,
        and reading never creates the lock file (a reader may not be allowed
        to write there).

        Raises
        ------
        StoreError
            The lock file exists but cannot be opened (:class:`StoreUnusableError`: the store is a file).
        """
        self.check_root()
        try:
            fh = open(self.root / LOCK_NAME, "rb")
        except (FileNotFoundError, NotADirectoryError):
            fh = None
        except OSError as exc:
            raise StoreError(f"model store {self.root}: cannot open its lock {LOCK_NAME} for reading: {exc}") from exc
        if fh is None:
            yield
            return
        with fh:
            fcntl.flock(fh, fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # -- changing ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the store's lock exclusively so two commands do not change it at once and no reader
        (:meth:`reading`) sees a change half done."""
        self.check_root()
        self.models_dir.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_NAME, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                self._finish_interrupted_replacements()
                self._remove_abandoned_copies()
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _finish_interrupted_replacements(self) -> None:
        """Put back the models an interrupted ``install --force`` left aside (call under the exclusive lock).

        Such a folder (``.<id>.*.replaced``) exists outside the lock only when
        an install was killed between moving the old folder aside and moving
        the new one in: where ``models/<id>`` is missing the old model goes
        back, where the new one arrived the old copy is removed.
        """
        for aside in self.models_dir.glob(f".*{REPLACED_SUFFIX}"):
            if not aside.is_dir():
                continue
            for old in aside.iterdir():
                dest = self.models_dir / old.name
                if not (old.is_dir() and is_model_id(old.name)):
                    continue
                if dest.exists():
                    shutil.rmtree(old, ignore_errors=True)
                    log.warning("model store %s: removed the copy of %s that an interrupted install --force had "
                                "replaced (%s)", self.root, old.name, aside.name)
                else:
                    os.replace(old, dest)
                    log.warning("model store %s: restored model %s, moved aside by an install --force that was "
                                "interrupted before the new copy was in place (%s)", self.root, old.name, aside.name)
            with contextlib.suppress(OSError):
                aside.rmdir()

    def _remove_abandoned_copies(self) -> None:
        """Remove the partial copies of installs that were killed (call under the exclusive lock).

        Every copy (``.<id>.*.installing``) is locked (``flock`` on its folder) by
        the install making it, from its creation, which happens under the store's
        lock, until it is renamed into place or removed: a folder whose lock can
        be taken belongs to no running install.
        """
        for tmp in self.models_dir.glob(f".*{INSTALLING_SUFFIX}"):
            if not tmp.is_dir() or tmp.is_symlink():
                continue
            try:
                fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue        # an install is copying into it now
            else:
                shutil.rmtree(tmp, ignore_errors=True)
                log.warning("model store %s: removed %s, the partial copy of an install that was interrupted",
                            self.root, tmp.name)
            finally:
                os.close(fd)

    @contextlib.contextmanager
    def _copy_folder(self, model_id: str) -> Iterator[Path]:
        """A new, locked folder ``models/.<id>.*.installing`` for a copy, removed again unless renamed away.

        It is created under the store's lock and locked at once, so that
        :meth:`_remove_abandoned_copies` never takes it for a killed install's
        leftover; the lock goes with the folder's inode when it is renamed into place.
        """
        with self._locked():
            tmp = Path(tempfile.mkdtemp(prefix=f".{model_id}.", suffix=INSTALLING_SUFFIX, dir=self.models_dir))
            fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)   # a no-op once renamed into place
            os.close(fd)

    def _write_state(self, state: StoreState) -> None:
        text = json.dumps({"in_use": state.in_use, "history": state.history}, indent=2) + "\n"
        _atomic_write_text(self.root / STATE_NAME, text)

    def install(self, source: str | Path, force: bool = False, use: bool = False) -> Artifact:
        """Verify the artifact at ``source`` and copy it into the store under its model id.

        Parameters
        ----------
        source : path
            Artifact directory.
        force : bool
            Replace an installed model with the same id.
        use : bool
            Also make it the model in use.

        Returns
        -------
        Artifact
            The verified installed copy.

        Raises
        ------
        ArtifactError
            The source (or the copy) fails verification.
        StoreError
            Duplicate id without ``force``, or an id unfit for a folder name.
        """
        self.check_root()
        src = load_artifact(Path(source))
        model_id = src.model_id
        if not is_model_id(model_id):
            raise StoreError(f"model id {model_id!r} cannot be a folder name ({MODEL_ID_RULE})")
        dest = self.model_path(model_id)
        if dest.exists() and not force:  # refuse before copying; checked again under the lock
            raise StoreError(f"model {model_id} is already installed in {self.root}; pass --force to replace it")
        # Copy and verify outside the lock (readers wait only for the swap), under a temporary name.
        with self._copy_folder(model_id) as tmp:
            # the card and the files it lists, as verified, and nothing else: a source folder with a training
            # run beside the files (or a symlink to one, or a link loop) was copied whole
            for name, data in src.contents.items():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / name).write_bytes(data)
            shutil.copyfile(src.path / CARD_NAME, tmp / CARD_NAME)
            verified = load_artifact(tmp)  # the copy is what will be used: verify it, not only the source
            old = None
            try:
                with self._locked():
                    if dest.exists() and not force:
                        raise StoreError(f"model {model_id} is already installed in {self.root}; "
                                         "pass --force to replace it")
                    # Readers hold the lock shared while they read a model: none is reading now, and the
                    # next one finds the new folder whole.
                    if dest.exists():
                        old = Path(tempfile.mkdtemp(prefix=f".{model_id}.", suffix=REPLACED_SUFFIX,
                                                    dir=self.models_dir))
                        os.replace(dest, old / model_id)
                        try:
                            os.replace(tmp, dest)
                        except BaseException:
                            os.replace(old / model_id, dest)  # put the installed model back
                            raise
                    else:
                        os.replace(tmp, dest)
                    if old is not None:   # under the lock: a later command must not take it for a leftover
                        shutil.rmtree(old, ignore_errors=True)
                    if use:
                        self._switch(model_id)
            except BaseException:
                if old is not None:
                    with contextlib.suppress(OSError):
                        old.rmdir()  # empty when the replaced model went back; else left for inspection
                raise
        return Artifact(path=dest, card=verified.card, contents=verified.contents)

    def use(self, model_id: str) -> StoreState:
        """Make an installed (and intact) model the one in use; the previous one goes onto the history.

        Raises
        ------
        StoreError
            The id is not installed.
        ArtifactError
            The installed copy fails verification.
        """
        with self._locked():
            return self._switch(model_id)

    def _switch(self, model_id: str) -> StoreState:
        if model_id not in self.installed():
            known = ", ".join(self.installed()) or "none"
            raise StoreError(f"model {model_id} is not installed in {self.root} (installed: {known})")
        load_artifact(self.model_path(model_id))
        state = self.state()
        if state.in_use == model_id:
            return state
        state.history.append(state.in_use)
        state.in_use = model_id
        self._write_state(state)
        return state

    def rollback(self) -> StoreState:
        """Go back to the previously used model (the last entry of the history; the embedded default
        when no model was in use before).

        Raises
        ------
        StoreError
            There is no previous model, or it is no longer installed.
        """
        with self._locked():
            state = self.state()
            if not state.history:
                raise StoreError(f"model store {self.root}: no previously used model to roll back to")
            previous = state.history[-1]
            if previous is not None:
                if previous not in self.installed():
                    raise StoreError(f"cannot roll back to {previous}: it is no longer installed in {self.root}")
                load_artifact(self.model_path(previous))
            state.history.pop()
            state.in_use = previous
            self._write_state(state)
            return state


def resolve_model_path(path: str | Path | None = None) -> Path:
    """The artifact directory a command loads: ``path`` when given, else the store's model in use, else the embedded one.

    This is the one place where "no model given" is turned into a folder, so
    the engine, ``mnedge live``, ``mnedge predict`` and ``mnedge-train
    evaluate`` all read the same model.  A store whose record is broken, or
    whose model in use has gone missing, raises instead of silently falling
    back to another model.

    The folder alone is no snapshot: ``install --force`` may replace it at
    any time.  To read the model, call
    :func:`mnedge_live.artifact.load_artifact` without a path, which resolves
    and reads it under the store's lock and keeps the verified bytes.

    Raises
    ------
    StoreError
        The store's record cannot be read.
    ArtifactError
        The store names a model in use that is not installed.
    """
    if path is not None:
        return Path(path)
    store = ModelStore()
    in_use = store.in_use_path()
    if in_use is not None:
        if not in_use.is_dir():
            raise ArtifactError(f"the model in use in {store.root} ({in_use.name}) is not installed there; "
                                "choose one with 'mnedge models use ID' (which first puts back a model an "
                                "interrupted install --force left aside)")
        return in_use
    return default_artifact_path()
