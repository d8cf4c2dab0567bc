"""Column text files: energy and intensity columns chosen by their names, layouts of instruments and programs."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from mnedge_live.readers.column_names import (
    COMPANION_WORDS,
    INSTRUMENT_WORDS,
    MONITOR_COLUMN_NAMES,
    SPECTRUM_COLUMN_NAMES,
    column_key,
    i0_monitors,
    is_energy_key,
    is_index_key,
    is_known_key,
    is_normalized_yield_key,
    is_raw_yield_key,
    is_units_row,
)
from mnedge_live.readers.items import ENERGY_UNITS, Item, MeasuredSpectrum, ReadError, RefusedSignal
from mnedge_live.readers.text_fields import (
    is_number,
    number_pair,
    numbers_and_gaps,
    parse_number,
    split_fields,
    tab_fields_with_leading_gaps,
)

#: Largest text file read (bytes): a measured spectrum is kilobytes.
MAX_TEXT_BYTES = 64 * 1024 * 1024


log = logging.getLogger(__name__)


def read_text(path: str | Path, column: str | None = None) -> MeasuredSpectrum:
    """Read an (energy, intensity) text file.

    Header lines before the first numeric row and lines starting with ``#``
    are skipped; fields are separated by commas, semicolons, tabs or spaces.
    The names are those of the last line before the data with one field per
    column and a known name (past a units row or a comment), else XDI
    ``# Column.N`` headers (SPEC ``#L`` labels split on two spaces).  The
    first column is the energy unless it is unnamed or named as an index or a
    clock (then the column named as an energy; refused without one); in a
    file of more than two columns the intensity column is chosen by
    :func:`intensity_column` (``column``, else the header's names, else the
    second column with a logged warning), and a raw yield chosen by default
    is divided by the file's one I0 monitor (``column`` ``A/B``: A divided by
    B).  Only the first scan of a SPEC file of several (``#S``) is read
    (:func:`read_text_items` reads each).

    Passed over with a logged warning: a block of text lines after the data
    (``END OF SCAN``; numbers after it are refused); an empty or non-numeric
    cell in a column that is not read, in a row with every column (between
    spaces a missing cell cannot be told from a separator); one or two rows
    of numbers before a line of names (as many fields as the data or more)
    followed by ten or more data rows (metadata).  Decimal commas are read
    where the columns are separated by tabs, semicolons or spaces and no
    number has a decimal point (logged once); mixed with decimal points, or
    between commas, they are refused.

    Raises
    ------
    ReadError
        Binary content, no numeric rows, a single column, a non-numeric
        row among the data, numbers after a footer, an empty cell in a
        column read, or ambiguous decimal commas.
    """
    p = Path(path)
    ((_, energy, intensity),) = _parse_table(_read_text_file(p), str(p), column)
    return MeasuredSpectrum(str(p), 0, energy, intensity)


def read_text_items(p: Path, column: str | None) -> list[Item]:
    """Every spectrum of a text file: one, each of a table of several (:func:`spectrum_columns`), or each
    scan of a SPEC file of several (``#S`` lines; :func:`spec_scans`), labelled ``scan N``; a scan that
    cannot be read is a :class:`RefusedSignal` with the reason, the others are still read."""
    text = _read_text_file(p)
    scans = spec_scans(text)
    if scans is None:
        spectra = _parse_table(text, str(p), column, every=True)
        return [MeasuredSpectrum(str(p), k, energy, intensity, None, label)
                for k, (label, energy, intensity) in enumerate(spectra)]
    items: list[Item] = []
    for number, line, block in scans:
        try:
            spectra = _parse_table(block, f"{p} (#S {line})", column, every=True)
        except ReadError as exc:
            items.append(RefusedSignal(str(p), len(items), f"scan {number} not read: {exc}"))
            continue
        for label, energy, intensity in spectra:
            items.append(MeasuredSpectrum(str(p), len(items), energy, intensity, None,
                                          f"scan {number}" + ("" if label is None else f" {label}")))
    if not any(isinstance(it, MeasuredSpectrum) for it in items):
        raise ReadError(f"{p}: no scan of the SPEC file could be read: "
                        + "; ".join(it.reason for it in items if isinstance(it, RefusedSignal)))
    return items


def spec_scans(text: str) -> list[tuple[str, str, str]] | None:
    """The scans of a SPEC file of several: ``(number, #S line after "#S", text)`` each, the text being the
    file's header (the lines before the first ``#S``: ``#F``, ``#E``, ``#O`` ...) and the scan's own lines at
    their lines of the file; None for a file with fewer than two ``#S`` lines."""
    lines = text.lstrip("\ufeff").splitlines()
    starts = [i for i, line in enumerate(lines) if _SPEC_SCAN.match(line.strip())]
    if len(starts) < 2:
        return None
    header = lines[:starts[0]]
    out = []
    for a, b in zip(starts, starts[1:] + [len(lines)]):
        line = lines[a].strip()[2:].strip()
        # the other scans' lines kept as blank lines: line numbers in messages are the file's
        out.append((line.split()[0], line, "\n".join(header + [""] * (a - len(header)) + lines[a:b])))
    return out


def _read_text_file(p: Path) -> str:
    """The text of a file of at most :data:`MAX_TEXT_BYTES` (:func:`_decode_text`); ReadError when it cannot be read."""
    try:
        size = p.stat().st_size
        if size > MAX_TEXT_BYTES:
            raise ReadError(f"{p}: {size / 2**20:.0f} MiB is too large for a two-column text spectrum")
        raw = p.read_bytes()
    except OSError as exc:
        raise ReadError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    return _decode_text(raw, p)


def _decode_text(raw: bytes, p: Path) -> str:
    """The file's text: UTF-16 when it starts with a UTF-16 byte-order mark (spreadsheet "Unicode text"
    exports), else UTF-8 (with or without a byte-order mark), else Latin-1; NUL bytes otherwise mean binary."""
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise ReadError(f"{p}: starts as UTF-16 text but does not decode as UTF-16: {exc}") from exc
    if b"\x00" in raw[:4096]:
        raise ReadError(f"{p}: binary content (NUL bytes), not a text spectrum nor a known binary format")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def parse_columns(text: str, name: str = "<text>", column: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Parse column text into ``(energy, intensity)`` float arrays (see :func:`read_text`)."""
    ((_, energy, intensity),) = _parse_table(text, name, column)
    return energy, intensity


#: A spectrum of a text file: its column's name (None where one spectrum is read), energy, intensity.
_Column = tuple[str | None, np.ndarray, np.ndarray]


def _parse_table(text: str, name: str, column: str | None, every: bool = False) -> list[_Column]:
    """The spectra of a table: one, or with ``every`` each of :func:`spectrum_columns` when it holds several.
    The data of a SPEC file stop at its second ``#S`` line (:func:`spec_scans` splits the scans first)."""
    header: list[str] | None = None       # the last line of names before the data
    data: list[tuple[int, list[str]]] = []
    lines: list[str] = []                 # the text lines before the data (SSRL: one name a line after "Data:")
    candidates: list[list[str]] = []      # every line of two or more fields before the data: names, units, notes
    xdi: dict[int, str] = {}              # XDI "# Column.N: name units" headers
    scans: list[str] = []                 # SPEC "#S" scan lines: the data of the first only are read
    footer: tuple[int, str] | None = None  # the first text line after the data (line number, text)
    meta: list[tuple[int, list[str]]] = []  # rows of numbers before the names line: metadata, not data
    gaps: list[int] = []                  # data rows (their places in `data`) whose first cells are empty
    all_lines = text.lstrip("\ufeff").splitlines()
    for idx, line in enumerate(all_lines):
        lineno = idx + 1
        s = line.strip()
        if not s:
            continue
        if _SPEC_SCAN.match(s):
            scans.append(s[2:].strip())
            continue
        if len(scans) > 1:
            continue                      # a later scan of a SPEC file: not read
        if s.startswith("#"):
            body = s.lstrip("#").strip()
            names = split_fields(body)
            if s.startswith("#L ") and not data:    # SPEC labels: separated by two spaces or more
                body = s[3:].strip()
                spec = re.split(r"\s{2,}", body)
                names = spec if len(spec) >= 2 else body.split()
            m = _XDI_COLUMN.match(body)
            if m and not data:
                xdi[int(m.group(1))] = (m.group(2).split() or [""])[0]
            if data and not meta and footer is None and _names_after_metadata(names, data, all_lines, idx) \
                    and any(is_known_key(column_key(w)) for w in names):
                # "# Energy  mu" after one or two rows of numbers: those rows are metadata (they were read as data
                # points); a comment is passed over between data rows, so it must name a known column
                meta, data = data, []
            if not data and len(names) >= 2:
                header = names
                candidates += [names] + _spaced_variants(body, names)
            continue
        fields = split_fields(s)
        if data and line[:1] == "\t" and all_lines[data[0][0] - 1][:1] != "\t":
            fields = tab_fields_with_leading_gaps(line)   # strip() took the empty first cells of this row
        values = number_pair(fields[:2])
        numeric = values is not None or is_number(fields, 0)   # a row, a lone number or a row starting with one
        row = values is not None and len(fields) >= 2
        if not row and numeric and len(fields) >= 3 and footer is None:
            # An empty or non-numeric cell (an I0 that was not recorded): a data row if it has every column (the
            # first row's, else the next row's); its cells are checked where its columns are read.
            row = len(fields) == (len(data[0][1]) if data else _next_row_width(all_lines, idx))
        elif not row and data and footer is None and len(fields) <= len(data[0][1]) and numbers_and_gaps(fields):
            # First cells empty, the others numbers or empty: a row of X/Y pairs whose first pair has ended, read
            # as data where the table holds several spectra (below: otherwise a footer, as text after the data)
            numeric = row = True
            gaps.append(len(data))
        if data and (numeric or footer is None):
            if footer is not None:   # numbers after the text that followed the data: two scans, or a corrupt file
                raise ReadError(f"{name}: line {footer[0]} is not two numbers after the data began (line "
                                f"{data[0][0]}): {footer[1][:60]!r}; numbers follow it again (line {lineno}): "
                                "a second block of data, or a corrupt file")
            if not row and not meta and _names_after_metadata(fields, data, all_lines, idx):
                # One or two short rows of numbers, then the column names and the data: those rows are metadata
                meta, data = data, []
                header = fields
                lines.append(s)
                candidates += [fields] + _spaced_variants(s, fields)
                continue
            if not row:
                if numeric:   # a lone number, or a row that starts with a number: a broken data row
                    raise ReadError(f"{name}: line {lineno} is not two numbers after the data began "
                                    f"(line {data[0][0]}): {s[:60]!r}")
                footer = (lineno, s)   # text after the data: a footer, if only text and comments follow
                continue
        elif data:
            continue                      # more footer text
        if not row:
            if values is not None:  # a lone number: one column of data, not a header
                raise ReadError(f"{name}: line {lineno} has one column; expected energy and intensity")
            header = fields
            lines.append(s)
            candidates += [fields] + _spaced_variants(s, fields)
            continue
        data.append((lineno, fields))
    if meta:
        log.warning("%s: line%s %s, before the column names and the data (line %d on), hold%s numbers that are not "
                    "data: read as metadata and ignored: %s", name, "s" if len(meta) > 1 else "",
                    " and ".join(str(n) for n, _ in meta), data[0][0] if data else 0, "" if len(meta) > 1 else "s",
                    "; ".join(repr(all_lines[n - 1].strip()[:40]) for n, _ in meta))
    if footer is not None:
        log.warning("%s: line %d and what follows it are not data rows: ignored as a footer after the data "
                    "(lines %d to %d): %r", name, footer[0], data[0][0], data[-1][0], footer[1][:60])
    if not data:
        raise ReadError(f"{name}: no numeric two-column (energy, intensity) rows found{_decimal_comma_hint(text)}")
    if len(data) < 2:
        raise ReadError(f"{name}: only one data row")
    _check_decimal_commas(data, all_lines, name)
    n_columns = len(data[0][1])
    names = _choose_names(candidates, header, n_columns, xdi)
    ssrl = [i for i, t in enumerate(lines) if t.lower() == "data:"]
    if ssrl and len(lines) - ssrl[-1] - 1 == n_columns:   # SSRL EXAFS Data Collector: a name a line
        header = names = lines[ssrl[-1] + 1:]
    gap_rows = set(gaps)
    plain = [r for k, r in enumerate(data) if k not in gap_rows]
    e, skip = _energy_column(names, plain, n_columns, name)
    several = spectrum_columns(names, data, n_columns, e, skip) if every and column is None else None
    if several is not None:
        return _read_spectrum_columns(several, names, candidates, data, n_columns, name)
    if gaps:   # one spectrum: rows with empty first cells end the data, as any text would
        if len(plain) != gaps[0]:
            nxt = data[next(k for k in range(gaps[0], len(data)) if k not in gap_rows)][0]
            raise ReadError(f"{name}: line {data[gaps[0]][0]} has no number in column 1 after the data began (line "
                            f"{data[0][0]}); numbers follow it again (line {nxt}): a second block of data, or "
                            "a corrupt file")
        log.warning("%s: line %d and what follows it are not data rows (the first cells empty): ignored as a "
                    "footer after the data (lines %d to %d)", name, data[gaps[0]][0], data[0][0], plain[-1][0])
        data = plain
        if len(data) < 2:
            raise ReadError(f"{name}: only one data row")
    if header is not None and names is None and column is None and n_columns > 2:
        _refuse_unaligned_header(header, n_columns, name)
    j, m = _intensity_and_monitor(n_columns, names, column, name, e, skip)
    arr = np.empty((len(data), 3))
    for i, (lineno, fields) in enumerate(data):
        try:
            arr[i] = parse_number(fields[e]), parse_number(fields[j]), (1.0 if m is None else parse_number(fields[m]))
        except (ValueError, IndexError):
            bad = [k for k in (e, j, m) if k is not None and not is_number(fields, k)][0]
            what = {e: "the energy", j: "the intensity"}.get(bad, "the I0 monitor")
            if bad == m:
                what += (f" {names[m]!r} that {names[j]!r} is divided by" if names else
                         f" that column {j + 1} is divided by")
            raise ReadError(f"{name}: line {lineno} has no number in column {bad + 1} ({what}): "
                            f"{' '.join(fields)[:60]!r}") from None
    _log_unread_holes(data, n_columns, {e, j, m}, names, name)
    if m is not None:
        if not np.all(np.isfinite(arr[:, 2]) & (arr[:, 2] != 0)):
            raise ReadError(f"{name}: the I0 monitor (column {m + 1}, {names[m]!r}) has zero or non-finite values: "
                            f"{names[j]} / {names[m]} cannot be read")
        log.warning("%s: column %d (%r) is a raw yield: read divided by the I0 monitor, column %d (%r)",
                    name, j + 1, names[j], m + 1, names[m])
        arr[:, 1] /= arr[:, 2]
    arr[:, 0] *= _energy_factor(names, candidates, e, n_columns, name)
    return [(None, arr[:, 0].copy(), arr[:, 1].copy())]


def _energy_factor(names: list[str] | None, candidates: list[list[str]], e: int, n_columns: int, name: str) -> float:
    """The factor from energy column ``e``'s stated unit to eV: 1000 where its header states keV (logged), else 1."""
    if _energy_unit(names, candidates, e, n_columns) != "kev":
        return 1.0
    log.warning("%s: the energy column (%s) is in keV: read as eV times 1000", name,
                repr(names[e]) if names else f"column {e + 1}")
    return ENERGY_UNITS["kev"]


#: Least spread (max - min, relative to the largest magnitude) of a column read as a spectrum of a table:
#: below it the column is constant (an I0 written as 1e5 throughout), not a spectrum.
FLAT_COLUMN = 1e-6


def spectrum_columns(names: list[str] | None, data: list[tuple[int, list[str]]], n_columns: int, energy: int,
                     skip: frozenset[int] = frozenset()) -> tuple[list[tuple[int, int]], dict[int, str]] | None:
    """The spectra of a table of several, each with its energy column, and the columns passed over with why.

    A table whose header names two or more columns that hold spectra, and none that
    :func:`intensity_column` recognizes (a spectrum, a raw or normalized yield, a monitor, an
    index), holds one spectrum per such column: ``Energy, MnO, Mn2O3, MnO2`` (published
    supplementary data), ``Energy, scan1, scan2``, ``Energy, mu_plus, mu_minus``. Not spectra:
    other energy axes (named as one, or rising or falling throughout over energies that the
    energy column's range shares: ``X`` in ``X, MnO, X, Mn2O3``), columns named with a
    :data:`COMPANION_WORDS` or :data:`INSTRUMENT_WORDS` word or as ``d`` and another column's
    name (``dMnO``), columns rising or falling throughout (a motor) and constant ones
    (:data:`FLAT_COLUMN`). Each spectrum reads against the nearest energy axis on its left
    (X/Y pairs), else the energy column ``energy``.

    Returns ``([(intensity, energy), ...], {column: why passed over})``, or None for every other
    table (one spectrum, chosen by :func:`intensity_column`) and for an unnamed one: there a
    column after the intensity may be its uncertainty, and reading it as a spectrum would give a
    second, wrong readout.
    """
    if not names:
        return None
    keys = [column_key(n) for n in names]
    cols = [j for j in range(n_columns) if j != energy and j not in skip]
    if any(is_known_key(keys[j]) and not is_energy_key(keys[j]) for j in cols):
        return None   # a detector export or a named spectrum: intensity_column's (checked before any number is read)
    values = {j: _column_values(data, j) for j in [energy, *cols]}
    e = values[energy][np.isfinite(values[energy])]
    if e.size < 2:
        return None
    lo, hi = float(e.min()), float(e.max())

    def monotonic(v: np.ndarray) -> bool:
        d = np.diff(v[np.isfinite(v)])
        return d.size > 0 and (bool(np.all(d > 0)) or bool(np.all(d < 0)))

    axes = {j for j in cols if is_energy_key(keys[j]) or (   # rising or falling over energies the axis shares
        monotonic(values[j]) and np.nanmin(values[j]) <= hi and np.nanmax(values[j]) >= lo)}

    def why_not(j: int) -> str | None:
        words = set(keys[j].split("_"))
        words |= {w.rstrip("0123456789") for w in words}
        if words & COMPANION_WORDS or any(keys[j] == "d" + keys[k] for k in cols if k != j):
            return "an uncertainty, fit, difference or reference"
        if words & INSTRUMENT_WORDS:
            return "an instrument column"
        v = values[j][np.isfinite(values[j])]
        if v.size < 2:
            return "fewer than two numbers"
        if monotonic(v):
            return "rising or falling throughout (a motor)"
        if float(v.max() - v.min()) <= FLAT_COLUMN * max(abs(float(v.max())), abs(float(v.min()))):
            return "constant"
        return None

    passed = {j: why for j in cols if j not in axes and (why := why_not(j)) is not None}
    rest = [j for j in cols if j not in axes and j not in passed]
    if len(rest) < 2:
        return None
    return [(j, max([a for a in axes if a < j], default=energy)) for j in rest], passed


def _column_values(data: list[tuple[int, list[str]]], j: int) -> np.ndarray:
    """Column ``j`` of the data rows as floats, NaN where a cell is empty, missing or not a number."""
    out = np.full(len(data), np.nan)
    for i, (_, fields) in enumerate(data):
        if j < len(fields) and is_number(fields, j):
            out[i] = parse_number(fields[j])
    return out


def _read_spectrum_columns(several: tuple[list[tuple[int, int]], dict[int, str]], names: list[str],
                           candidates: list[list[str]], data: list[tuple[int, list[str]]], n_columns: int,
                           name: str) -> list[_Column]:
    """Each spectrum column with its energy column (:func:`spectrum_columns`), as floats in eV; the columns
    passed over are named in the note.

    A row whose two cells are both empty is passed over (X/Y pairs of different lengths end in empty
    cells); a row with one of the two, or a cell that is no number, is refused, naming both.
    """
    spectra, passed = several
    log.warning("%s: %d spectrum columns (%s): each read as a spectrum of its own (index 0 to %d, labelled with "
                "its column's name; --column reads one)%s", name, len(spectra),
                ", ".join(names[j] for j, _ in spectra), len(spectra) - 1,
                "".join(f"; passed over: {names[j]!r} ({why})" for j, why in passed.items()))
    factor = {e: _energy_factor(names, candidates, e, n_columns, name) for e in sorted({e for _, e in spectra})}
    out = []
    for j, e in spectra:
        points = []
        for lineno, fields in data:
            cells = [fields[k].strip() if k < len(fields) else "" for k in (e, j)]
            if cells == ["", ""]:
                continue
            for k, cell in zip((e, j), cells):
                if not is_number([cell], 0):
                    raise ReadError(f"{name}: line {lineno} has no number in column {k + 1} ({names[k]!r}; spectrum "
                                    f"{names[j]!r} read against {names[e]!r}): {' '.join(fields)[:60]!r}")
            points.append((parse_number(cells[0]), parse_number(cells[1])))
        if len(points) < 2:
            raise ReadError(f"{name}: column {j + 1} ({names[j]!r}) has fewer than two numbers")
        arr = np.asarray(points, dtype=float)
        arr[:, 0] *= factor[e]
        out.append((names[j], arr[:, 0].copy(), arr[:, 1].copy()))
    return out


#: A unit in brackets after a column name: ``Energy (keV)``, ``E [eV]``.
_BRACKETED_UNIT = re.compile(r"[(\[{]\s*([^)\]}]*?)\s*[)\]}]")


def _energy_unit(names: list[str] | None, candidates: list[list[str]], e: int, n_columns: int) -> str:
    """The energy column's unit as the header states it, lower case (``"kev"``; ``""`` when not stated): the
    bracketed unit of its name (``Energy (keV)``), else its field of the last units row with one field per
    column (``Energy  mu`` / ``keV  a.u.``)."""
    if names:
        found = _BRACKETED_UNIT.search(names[e])
        if found:
            return found.group(1).strip().lower()
    rows = [c for c in candidates if len(c) == n_columns and is_units_row(c)]
    return rows[-1][e].strip("()[]{} ").lower() if rows else ""


def _check_decimal_commas(data: list[tuple[int, list[str]]], lines: list[str], name: str) -> None:
    """Log a file whose numbers are written with decimal commas (read as decimal points), once; refuse one
    that mixes decimal commas and decimal points, and comma-separated rows of numbers with decimal commas
    (``636,31828,0,020000``: split on every comma, they read as four columns of integers)."""
    comma = point = None
    for lineno, fields in data:
        for f in fields:
            if comma is None and "," in f and is_number([f], 0):
                comma = (lineno, f)
            elif point is None and "." in f and is_number([f], 0):
                point = (lineno, f)
    if comma and point:
        raise ReadError(f"{name}: decimal commas (line {comma[0]}: {comma[1]!r}) and decimal points (line "
                        f"{point[0]}: {point[1]!r}) in the same data: which one a comma is cannot be told; "
                        "write the numbers one way")
    if comma:
        log.warning("%s: decimal commas read as decimal points (first on line %d: %r)", name, comma[0], comma[1])
        return
    raws = [lines[lineno - 1].strip() for lineno, _ in data]
    if (point is None and len(data[0][1]) >= 3 and all("," in r and not any(c in r for c in ';\t"') for r in raws)
            and all(re.fullmatch(r"[-+]?\d+", f.strip()) for _, fields in data for f in fields)):
        # Only integers, split on commas: an energy read as its integer part repeats from row to row.
        firsts = [[int(f[k]) for _, f in data] for k in range(2)]
        if any(a == b for col in firsts for a, b in zip(col, col[1:])):
            raise ReadError(f"{name}: the rows look like numbers with decimal commas separated by commas (line "
                            f"{data[0][0]}: {raws[0][:60]!r}): which comma separates the columns cannot be told; "
                            "use decimal points, or tabs, semicolons or spaces between the columns")


#: Most rows of numbers before a names line read as metadata (``Scan 12`` / ``0.5 1.0`` / ``Energy mu`` / data).
MAX_METADATA_ROWS = 2
#: Fewest data rows after such a names line.
MIN_ROWS_AFTER_METADATA = 10


def _names_after_metadata(fields: list[str], data: list[tuple[int, list[str]]], lines: list[str], idx: int) -> bool:
    """Whether line ``idx`` (split into ``fields``), after the rows ``data``, is a line of column names with
    the data after it and those rows metadata: at most :data:`MAX_METADATA_ROWS` rows before it, two or more
    fields none of which is a number, and :func:`_rows_follow`."""
    return (0 < len(data) <= MAX_METADATA_ROWS and len(fields) >= 2
            and not any(is_number(fields, k) for k in range(len(fields))) and _rows_follow(lines, idx, len(fields)))


def _rows_follow(lines: list[str], idx: int, n_names: int) -> bool:
    """Whether at least :data:`MIN_ROWS_AFTER_METADATA` rows of numbers of at most ``n_names`` fields follow line
    ``idx`` (blank lines and comments passed over) before any other line."""
    count = 0
    for line in lines[idx + 1:]:
        s = line.strip()
        if not s or (s.startswith("#") and not _SPEC_SCAN.match(s)):
            continue
        fields = split_fields(s)
        if len(fields) < 2 or len(fields) > n_names or number_pair(fields[:2]) is None:
            return False
        count += 1
        if count >= MIN_ROWS_AFTER_METADATA:
            return True
    return False


def _next_row_width(lines: list[str], idx: int) -> int | None:
    """The number of fields of the data row after line ``idx`` (blank lines and comments passed over), or None
    when the next line is not a row of numbers."""
    for line in lines[idx + 1:]:
        s = line.strip()
        if not s or (s.startswith("#") and not _SPEC_SCAN.match(s)):
            continue
        fields = split_fields(s)
        return len(fields) if len(fields) >= 2 and number_pair(fields[:2]) is not None else None
    return None


def _log_unread_holes(data: list[tuple[int, list[str]]], n_columns: int, read: set[int | None],
                      names: list[str] | None, name: str) -> None:
    """Log the empty or non-numeric cells of columns that are not read, where the column holds numbers on
    other rows (a column of text throughout, such as a timestamp, is no hole)."""
    holes = []
    for k in range(n_columns):
        if k in read:
            continue
        bad = [lineno for lineno, fields in data if not is_number(fields, k)]
        if bad and len(bad) < len(data):
            label = f"column {k + 1}" + (f" ({names[k]!r})" if names else "")
            shown = ", ".join(str(n) for n in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            holes.append(f"{label} on line{'s' if len(bad) > 1 else ''} {shown}")
    if holes:
        log.warning("%s: empty or non-numeric cells in columns that are not read, passed over: %s",
                    name, "; ".join(holes))


def _intensity_and_monitor(n_columns: int, names: list[str] | None, column: str | None, name: str, energy: int,
                           skip: frozenset[int]) -> tuple[int, int | None]:
    """The intensity column and the monitor it is divided by (None: read as it is).

    ``column`` ``A/B`` (not itself a column name) reads column A divided by
    column B; a raw yield (:data:`RAW_YIELD_NAMES`) chosen by default is
    divided by the file's one I0 monitor (:func:`intensity_column` refuses
    when there is none or several); a column the user names is read as it is.
    """
    keys = [column_key(n) for n in names or []]
    if column is not None and "/" in column and column_key(column) not in keys:
        a, _, b = column.partition("/")
        j = intensity_column(n_columns, names, a, name, energy=energy, skip=skip)
        m = intensity_column(n_columns, names, b, name, energy=energy, skip=skip)
        if m == j:
            raise ReadError(f"{name}: --column {column}: a column divided by itself")
        return j, m
    j = intensity_column(n_columns, names, column, name, energy=energy, skip=skip)
    if column is None and names and is_raw_yield_key(keys[j]):
        monitors = i0_monitors(keys, [k for k in range(len(keys)) if k != energy and k not in skip])
        if len(monitors) == 1:
            return j, monitors[0]
    return j, None


#: A SPEC scan line: ``#S 12  ascan  energy 635 663``.
_SPEC_SCAN = re.compile(r"#S\s+\d")
#: An XDI column header: ``# Column.2: i0`` (name, then optional units).
_XDI_COLUMN = re.compile(r"column\.(\d+)\s*:\s*(.*)", re.IGNORECASE)


def _spaced_variants(line: str, fields: list[str]) -> list[list[str]]:
    """Other readings of a space-separated header line: split on runs of two or more spaces
    (``Mono Energy (eV)   I0   TEY``), and with the one bracketed unit joined to every word before it that
    the single-space split left over (tried by :func:`_choose_names` only where one has a field per column)."""
    if any(c in line for c in ";\t,"):
        return []
    out = []
    wide = re.split(r"\s{2,}", line.strip())
    if len(wide) >= 2 and wide != fields:
        out.append(wide)
    bracketed = [i for i, f in enumerate(fields) if re.search(r"[(\[]", f)]
    if len(bracketed) == 1 and bracketed[0] >= 1:
        b = bracketed[0]
        out += [fields[:b - k] + [" ".join(fields[b - k:b + 1])] + fields[b + 1:] for k in range(1, b + 1)]
    return out


def _decimal_comma_hint(text: str) -> str:
    """A hint for a file without numeric rows whose rows look like space-separated numbers with decimal commas
    but are not read as such (a field with a decimal point among them, ``636,4  0.38``): their commas were taken
    as the separator."""
    rows = 0
    for line in text.splitlines()[:200]:
        s = line.strip()
        if "," in s and not any(c in s for c in ";\t") and re.search(r"\d,\d", s):
            parts = s.replace(",", ".").split()
            try:
                [float(x) for x in parts]
            except ValueError:
                continue
            rows += len(parts) >= 2
    if rows >= 2:
        return ("; the rows look like space-separated numbers with decimal commas (636,4  0,38), whose commas "
                "read as separators: use decimal points, or tabs or semicolons between the columns")
    return ""


def _choose_names(candidates: list[list[str]], header: list[str] | None, n_columns: int,
                  xdi: dict[int, str]) -> list[str] | None:
    """The column names: the last line before the data with one field per column, not a units row nor a
    ``key: value`` note, that holds a known column name (a units row or a comment such as ``# scan started``
    between the names and the data is passed over); else the XDI ``# Column.N`` headers when they name
    every column; else the last line before the data when it has one field per column."""
    aligned = [c for c in candidates if len(c) == n_columns and not is_units_row(c) and not c[0].endswith(":")]
    named = [c for c in aligned if any(is_known_key(column_key(w)) for w in c)]
    if named:
        return named[-1]
    if xdi and sorted(xdi) == list(range(1, n_columns + 1)):
        return [xdi[i] for i in range(1, n_columns + 1)]
    return header if header is not None and len(header) == n_columns else None


def _energy_column(names: list[str] | None, data: list[tuple[int, list[str]]], n_columns: int,
                   name: str) -> tuple[int, frozenset[int]]:
    """The energy column (0-based) and the columns not to read at all.

    Column 1, unless it is named as (or, unnamed, counts like) a point index,
    a counter or a clock: then the column named as an energy, with column 1
    left unread; without one the file is refused, naming the column that
    could be the energy.
    """
    if names is not None:
        keys = [column_key(n) for n in names]
        if is_energy_key(keys[0]) or not is_index_key(keys[0]):
            return 0, frozenset()
        energies = [i for i, k in enumerate(keys) if i and is_energy_key(k)]
        what = f"named {names[0]!r}" if names[0].strip() else "unnamed"
        if energies:
            log.info("%s: column 1 (%s) is a point index or a clock; column %d (%r) is read as the energy",
                     name, what, energies[0] + 1, names[energies[0]])
            return energies[0], frozenset({0})
        raise ReadError(f"{name}: column 1 is {what}: a point index or a clock, not an energy, and no column is "
                        f"named as an energy (columns {', '.join(names)}){_energy_candidate(data, n_columns)}")
    if n_columns >= 3 and _counts_points(data):
        raise ReadError(f"{name}: column 1 counts points (0, 1, 2, ... or 1, 2, 3, ...): a point index, not an "
                        f"energy{_energy_candidate(data, n_columns)}")
    return 0, frozenset()


def _counts_points(data: list[tuple[int, list[str]]]) -> bool:
    """Whether the first column holds consecutive integers from 0 or 1 (a point index)."""
    try:
        v = np.array([parse_number(f[0]) for _, f in data])
    except ValueError:
        return False
    return len(v) >= 3 and v[0] in (0.0, 1.0) and bool(np.all(np.diff(v) == 1.0))


def _energy_candidate(data: list[tuple[int, list[str]]], n_columns: int) -> str:
    """``; column K (a to b) could be the energy ...`` for the first monotonic column after the first."""
    for j in range(1, n_columns):
        try:
            v = np.array([parse_number(f[j]) for _, f in data])
        except (ValueError, IndexError):
            continue
        d = np.diff(v)
        if np.all(np.isfinite(v)) and (np.all(d > 0) or np.all(d < 0)) and not np.all(d == 1.0):
            return (f"; column {j + 1} ({v[0]:g} to {v[-1]:g}) could be the energy: name it in the header "
                    "(Energy) or remove column 1")
    return "; no column runs like an energy axis"


def _refuse_unaligned_header(header: list[str], n_columns: int, name: str) -> None:
    """Refuse a file whose header cannot be matched to its columns when it names a monitor or a spectrum.

    Without aligned names the second column would be read; where the header
    shows that the columns include a monitor (I0, time, ...) or a named
    spectrum, that column may well be the monitor, so the user must say which
    column is the spectrum.  A header naming neither leaves the logged
    second-column choice of :func:`intensity_column`.
    """
    keys = {column_key(w) for w in header}
    if keys & ((MONITOR_COLUMN_NAMES - {"energy", "e"}) | set(SPECTRUM_COLUMN_NAMES)):
        raise ReadError(f"{name}: the header ({' '.join(header)}) has {len(header)} fields for {n_columns} columns "
                        "and names a monitor or a spectrum among them: say which column is the spectrum by its "
                        "number (mnedge predict --column N; column 1 is the energy)")


def intensity_column(n_columns: int, names: list[str] | None, column: str | None = None,
                     name: str = "<text>", energy: int = 0, skip: frozenset[int] = frozenset()) -> int:
    """Index of the intensity column of a text file.

    Parameters
    ----------
    n_columns : int
        Number of columns in the data rows.
    names : list of str or None
        The column names from the header line, when it has one per column.
    column : str, optional
        The user's choice: a column name or a 1-based number (not the energy's).
    name : str
        File name for messages.
    energy : int
        0-based index of the energy column (0 unless column 1 is a point index).
    skip : set of int
        0-based columns that are neither (a point index left unread).

    Returns
    -------
    int
        0-based index: ``column`` when given; else the one other column when
        there is one (refused when the names make the energy column a spectrum
        or that column a monitor); else the first of
        :data:`SPECTRUM_COLUMN_NAMES` among the names; else the one yield
        already divided by its monitor (``TEY/I0``, ``TEY_norm``; several are
        refused); else a raw yield (divided by I0 in :func:`_parse_table`);
        else the first column after the energy with a logged warning (so the
        choice is never silent).

    Raises
    ------
    ReadError
        ``column`` does not name a column, or the file names no spectrum
        column and its first column after the energy is a monitor
        (:data:`MONITOR_COLUMN_NAMES`): reading I0 as the spectrum would be a
        wrong answer, not a guess.
    """
    listed = f" ({', '.join(names)})" if names else ""
    cols = [j for j in range(n_columns) if j != energy and j not in skip]
    axis = f"column {energy + 1} is the energy" + (
        "".join(f", column {k + 1} a point index" for k in sorted(skip)))
    if column is not None:
        text = str(column).strip()
        if text.isdigit():
            j = int(text) - 1
            if j not in cols:
                raise ReadError(f"{name}: column {text} is not an intensity column: the file has {n_columns} "
                                f"columns{listed} and {axis}")
            return j
        keys = [column_key(n) for n in names or []]
        found = [j for j in cols if j < len(keys) and keys[j] == column_key(text)]
        if not found:
            raise ReadError(f"{name}: no column named {text!r}"
                            + (f"; the columns are {', '.join(names)}" if names else "; the file names no columns"))
        return found[0]
    if not cols:
        raise ReadError(f"{name}: no intensity column: the file has {n_columns} columns{listed} and {axis}")
    first = cols[0]
    if len(cols) == 1:
        if names:
            keys = [column_key(n) for n in names]
            if keys[energy] in SPECTRUM_COLUMN_NAMES and keys[first] not in SPECTRUM_COLUMN_NAMES:
                raise ReadError(f"{name}: column {energy + 1} is named {names[energy]!r}, a spectrum: the first "
                                f"column must be the energy (columns {', '.join(names)})")
            if keys[first] in MONITOR_COLUMN_NAMES:
                raise ReadError(f"{name}: column {first + 1} is named {names[first]!r}, a monitor or an axis, "
                                f"not a spectrum (columns {', '.join(names)})")
        return first
    if names:
        keys = [column_key(n) for n in names]
        for wanted in SPECTRUM_COLUMN_NAMES:
            for j in cols:
                if keys[j] == wanted:
                    return j
        normalized = [j for j in cols if is_normalized_yield_key(keys[j])]
        if len(normalized) == 1:
            return normalized[0]
        if normalized:
            listed_yields = ", ".join(names[j] for j in normalized)
            raise ReadError(f"{name}: {n_columns} columns{listed}, several normalized yields ({listed_yields}): "
                            f"name the one to read (mnedge predict --column {names[normalized[0]]!r})")
        yields = [j for j in cols if is_raw_yield_key(keys[j])]
        monitors = i0_monitors(keys, cols)
        if yields and (len(yields) > 1 or len(monitors) != 1):
            why = f"{name}: {n_columns} columns{listed}, none named as a spectrum"
            if keys[first] in MONITOR_COLUMN_NAMES:
                why += f" and column {first + 1} ({names[first]!r}) is a monitor"
            raw = ", ".join(names[j] for j in yields)
            mon = names[monitors[0]] if len(monitors) == 1 else "MONITOR"
            if len(yields) > 1:
                why += f"; several raw yields ({raw}): name the one to read, divided by its monitor"
            else:
                why += (f"; {raw} is a raw yield and " + ("no column" if not monitors else "more than one column")
                        + " is named as its I0 monitor: name the columns to read")
            raise ReadError(f"{why} (mnedge predict --column {names[yields[0]]}/{mon} reads {names[yields[0]]} "
                            f"divided by {mon}; --column {names[yields[0]]} reads it as it is)")
        if yields:
            return yields[0]
        if keys[first] in MONITOR_COLUMN_NAMES:
            raise ReadError(f"{name}: {n_columns} columns{listed}, none named as a spectrum and column {first + 1} "
                            f"({names[first]!r}) is a monitor; name the intensity column (mnedge predict --column)")
    log.warning("%s: %d columns%s; column %d read as the intensity (name another with --column)",
                name, n_columns, listed, first + 1)
    return first

