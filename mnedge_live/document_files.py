"""Bluesky documents saved to files: read back one ``(name, doc)`` pair at a time, and written (``mnedge replay``).

Reads what bluesky's own writers save (:mod:`bluesky.callbacks.json_writer`): ``JSONLinesWriter``'s
``{"name": ..., "doc": ...}`` per line and ``JSONWriter``'s JSON array of them (one per line, the
closing ``]`` missing when the run never stopped), suitcase-jsonl's ``[name, doc]`` per line, and a
JSON array of either written in one piece (``json.dump``, pretty-printed or not). Files are read a line
at a time, so the documents of a large spectrum image are never held whole; only a file in which more
than one of its first five lines is not a JSON object or array (a value pretty-printed or wrapped over
many lines) is parsed in one piece, up to :data:`MAX_WHOLE_FILE_BYTES`, and read a line at a time when
that fails.

What is not a document (a line that is not JSON, not a name/doc pair, a name event-model does not
know) comes back as a :class:`BadEntry` with its line number, never raised: the caller counts and
reports it, and the documents around it are still read. JSON carries no code: nothing here unpickles.
:class:`DocumentFileWriter` writes documents in ``JSONLinesWriter``'s layout, which this module reads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from event_model import DocumentNames

#: Largest file parsed in one piece when it is not one document per line (bytes).
MAX_WHOLE_FILE_BYTES = 256 * 2**20
#: Longest line read (characters): an event page of 1,000 spectra of 2,048 channels is about 20 million.
MAX_LINE_CHARS = 256 * 2**20
#: Lines looked at (not blank, not ``[`` or ``]``) to tell one document per line from a value over many lines.
LINES_TRIED = 5
#: Document names event-model defines (``start``, ``descriptor``, ``event``, ``event_page``, ...).
DOCUMENT_NAMES = frozenset(n.value for n in DocumentNames)


@dataclass(frozen=True)
class BadEntry:
    """A part of a document file that is not a document, and why.

    Attributes
    ----------
    line : int
        1-based line of the file (0: the file as a whole).
    reason : str
        What is wrong with it.
    """

    line: int
    reason: str


def document_pair(entry: Any) -> tuple[str, dict]:
    """``(name, doc)`` of one saved entry: ``{"name": ..., "doc": ...}`` or ``[name, doc]``.

    Raises
    ------
    ValueError
        Neither layout, a name event-model does not know, or a document that is not a JSON object.
    """
    if isinstance(entry, dict) and set(entry) >= {"name", "doc"}:
        name, doc = entry["name"], entry["doc"]
    elif isinstance(entry, list) and len(entry) == 2:
        name, doc = entry
    else:
        raise ValueError('not a document: expected {"name": ..., "doc": ...} or [name, doc]')
    if not isinstance(name, str) or name not in DOCUMENT_NAMES:
        raise ValueError(f"{str(name)[:40]!r} is not a Bluesky document name")
    if not isinstance(doc, dict):
        raise ValueError(f"the {name} document is a {type(doc).__name__}, not an object")
    return name, doc


def _entries(value: Any, line: int) -> Iterator[tuple[str, dict] | BadEntry]:
    """The documents of one parsed JSON value: an entry, or an array of entries (one level)."""
    is_array = isinstance(value, list) and not (len(value) == 2 and isinstance(value[0], str))
    for item in value if is_array else (value,):
        try:
            yield document_pair(item)
        except ValueError as exc:
            yield BadEntry(line, str(exc))


def _parse(text: str) -> Any:
    """One JSON value; ValueError for what is not JSON, nesting too deep for the parser included."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _lines(fh: Any) -> Iterator[tuple[int, str | None]]:
    """``(number, text)`` of each line; text None for a line longer than :data:`MAX_LINE_CHARS` (skipped unread)."""
    number = 0
    while True:
        raw = fh.readline(MAX_LINE_CHARS + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_LINE_CHARS and not raw.endswith("\n"):
            while raw and not raw.endswith("\n"):   # the rest of the line, a piece at a time
                raw = fh.readline(MAX_LINE_CHARS)
            yield number, None
            continue
        yield number, raw


def _whole_file(path: Path) -> Any | None:
    """The file parsed as one JSON value, or None when it is not one (or too large to try)."""
    if path.stat().st_size > MAX_WHOLE_FILE_BYTES:
        return None
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return _parse(fh.read())
    except (ValueError, UnicodeDecodeError):   # several values (JSON Lines), cut short, not JSON
        return None


#: Lines of ``JSONWriter``'s framing (the array's brackets), skipped like blank lines.
FRAMING = ("[", "]")


def _entry_text(raw: str) -> str:
    """A line without its surrounding blanks and the comma that ends an entry of ``JSONWriter``'s array."""
    return raw.strip().rstrip(",").strip()


def _layout(path: Path) -> tuple[bool, bool]:
    """(the file holds anything but blanks, it is one document per line).

    One per line when all but at most one of its first :data:`LINES_TRIED` lines that are
    not blank or ``JSONWriter``'s framing (``[``, ``]``) are JSON objects or arrays: a
    damaged first line does not make the file unreadable, a ``JSONWriter`` file is read a
    line at a time, and an array whose long documents are wrapped over several lines (as
    some formatters write it) is parsed whole.
    """
    tried = parsed = 0
    content = False
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        for _, raw in _lines(fh):
            if raw is not None and not raw.strip():
                continue
            content = True
            text = None if raw is None else _entry_text(raw)
            if text in FRAMING:
                continue
            tried += 1
            try:
                parsed += text is not None and isinstance(_parse(text), (dict, list))
            except ValueError:
                pass
            if tried >= LINES_TRIED:
                break
    return content, tried > 0 and parsed >= max(1, tried - 1)


def read_documents(path: str | Path) -> Iterator[tuple[str, dict] | BadEntry]:
    """Every document saved in ``path``, in file order; what is not one as a :class:`BadEntry`.

    Parameters
    ----------
    path : str or Path
        A JSON Lines file or a JSON array of documents (see the module's description).

    Raises
    ------
    OSError
        The file cannot be opened or read.
    """
    path = Path(path)
    content, line_oriented = _layout(path)
    if not content:
        yield BadEntry(0, "the file holds no documents")
        return
    if not line_oriented:   # a JSON value over many lines (pretty-printed), or no JSON at all
        whole = _whole_file(path)
        if whole is not None:
            yield from _entries(whole, 0)
            return
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        for number, raw in _lines(fh):
            if raw is None:
                yield BadEntry(number, f"a line of more than {MAX_LINE_CHARS} characters, skipped unread")
                continue
            text = _entry_text(raw)
            if not text or text in FRAMING:
                continue
            try:
                value = _parse(text)
            except ValueError as exc:
                yield BadEntry(number, f"not JSON ({getattr(exc, 'msg', exc)}; a line cut short?)")
                continue
            yield from _entries(value, number)


class DocumentFileWriter:
    """Writes documents as bluesky's ``JSONLinesWriter`` does (``{"name": ..., "doc": ...}`` per line).

    Numpy values are written as JSON numbers and lists (event-model's ``NumpyEncoder``), NaN as
    ``NaN`` (as Python's ``json`` reads it back). The documents go to ``PATH.partial``, renamed to
    ``PATH`` by :meth:`close`, so a file at ``PATH`` is always whole.

    Parameters
    ----------
    path : str or Path
        The file to write (its folder is made when missing).
    """

    def __init__(self, path: str | Path):
        from event_model import NumpyEncoder

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._partial = self.path.with_name(self.path.name + ".partial")
        self._fh = open(self._partial, "w", encoding="utf-8")
        self._encoder = NumpyEncoder()
        self.documents = 0

    def __call__(self, name: str, doc: dict) -> None:
        """Append one document."""
        self._fh.write(self._encoder.encode({"name": name, "doc": doc}) + "\n")
        self.documents += 1

    def discard(self) -> None:
        """Close and remove what was written, leaving no file (nothing worth keeping was written)."""
        if not self._fh.closed:
            self._fh.close()
        self._partial.unlink(missing_ok=True)

    def close(self) -> Path:
        """Finish the file (flushed, synced, renamed into place); returns its path."""
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            os.replace(self._partial, self.path)
        return self.path
