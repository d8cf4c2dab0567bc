"""Rows of measured text tables split into fields, and fields read as numbers (decimal commas included).

Used by the column-text reader (:mod:`~mnedge_live.readers.columns`).
"""

from __future__ import annotations

import csv
import re

#: A space-separated field: a word with the bracketed unit that may follow it (``mu (a.u.)``).
_SPACED_FIELD = re.compile(r"\S+(?:\s+[(\[][^)\]]*[)\]])?")


def split_fields(line: str) -> list[str]:
    """Split one text row: on semicolons (then a comma is a decimal comma), else tabs, else commas, else spaces;
    quotes around a field (spreadsheet exports) are dropped, and a separator inside quotes does not split
    (``"630,5","0,02"``: decimal commas); a row of numbers with decimal commas between spaces (``636,4   0,38``)
    splits on the spaces; between spaces a bracketed unit stays with its name (``mu (a.u.)``).  A number with a
    decimal comma keeps it (:func:`parse_number` reads it; :func:`_parse_table` logs it)."""
    if ";" in line:
        parts = [f.strip().strip("\"'") for f in _split_quoted(line, ";")]
        parts = [f if _DECIMAL_COMMA_NUMBER.fullmatch(f) else f.replace(",", ".") for f in parts]
    elif "\t" in line:
        parts = [f.strip().strip("\"'") for f in _split_quoted(line, "\t")]
    elif "," in line and spaced_decimal_commas(line):
        parts = line.split()
    elif "," in line:
        parts = [f.strip().strip("\"'") for f in _split_quoted(line, ",")]
    else:
        parts = _SPACED_FIELD.findall(line)
    while parts and not parts[-1]:
        parts.pop()
    return parts


#: A number written with a decimal comma (``636,31828``, ``-1,5e-3``).
_DECIMAL_COMMA_NUMBER = re.compile(r"[-+]?\d*,\d+(?:[eE][-+]?\d+)?")
#: A number with a decimal comma, an integer, or nan/inf: a field of a row of numbers with decimal commas.
_COMMA_ROW_FIELD = re.compile(r"[-+]?(?:\d*,\d+|\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf|infinity)", re.IGNORECASE)


def spaced_decimal_commas(line: str) -> bool:
    """Whether a line without tabs or semicolons is numbers with decimal commas between spaces (``636,4   0,38``):
    two or more space-separated fields, each a number with at most one comma between digits (none with a '.'),
    at least one with a comma.  ``640, 1`` (a comma then a space) and ``640,1`` (one field) are not."""
    if '"' in line:
        return False
    parts = line.split()
    return (len(parts) >= 2 and all(_COMMA_ROW_FIELD.fullmatch(f) for f in parts)
            and any(_DECIMAL_COMMA_NUMBER.fullmatch(f) for f in parts))


def _split_quoted(line: str, sep: str) -> list[str]:
    """``line`` split on ``sep`` outside double quotes (the csv module's rules)."""
    if '"' not in line:
        return line.split(sep)
    return next(csv.reader([line], delimiter=sep, skipinitialspace=True))


def parse_number(text: str) -> float:
    """A number, accepting a decimal comma (``640,5``) where the separator was not a comma."""
    try:
        return float(text)
    except ValueError:
        if text.count(",") == 1 and "." not in text:
            return float(text.replace(",", "."))
        raise


def number_pair(fields: list[str]) -> tuple[float, float] | None:
    """A row of one or two numbers as a pair (NaN for a missing second), else None."""
    try:
        vals = tuple(parse_number(f) for f in fields)
    except ValueError:
        return None
    if len(vals) == 1:
        return (vals[0], float("nan"))
    return vals if len(vals) == 2 else None


def tab_fields_with_leading_gaps(line: str) -> list[str]:
    """The cells of a tab-separated row, its empty first cells kept (``\t\t657.5\t0.3``: X/Y pairs whose first
    pair has ended), trailing empty ones dropped as :func:`split_fields` drops them."""
    parts = [f.strip().strip("\"'") for f in line.rstrip("\r\n").split("\t")]
    while parts and not parts[-1]:
        parts.pop()
    return parts


def numbers_and_gaps(fields: list[str]) -> bool:
    """Whether a row's cells are numbers or empty, with at least two numbers and the first cell empty."""
    full = [f for f in fields if f.strip()]
    return (bool(fields) and not fields[0].strip() and len(full) >= 2
            and all(is_number([f], 0) for f in full))


def is_number(fields: list[str], j: int) -> bool:
    """Whether field ``j`` exists and reads as a number (:func:`parse_number`)."""
    try:
        parse_number(fields[j])
    except (ValueError, IndexError):
        return False
    return True
