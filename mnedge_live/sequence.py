"""Sequence-number accounting of a source run: gaps as missed events, late events, duplicates.

Bluesky numbers the events of each stream 1, 2, 3, ...; a live consumer that drops or reorders
messages sees gaps and repeats.  Every source event is owed exactly one derived row, so an event
whose ``seq_num`` jumps ahead opens a gap whose events count as missed; a late event that fills
a gap is owed its row again (one event less missed); a ``seq_num`` seen before is a duplicate,
owed nothing.  A ``seq_num`` below 1 is malformed: it is owed a row (the callback
rejects the event with the reason) and opens or fills no gap.  :class:`SequenceCounter` keeps the last ``seq_num`` and the open gaps per stream
and says, for each ``seq_num``, what the callback must count; the callback does the counting
and the logging.  It is kept apart from :mod:`mnedge_live.callback` so that the document router
only routes and these rules can be read and tested on their own.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

#: Most remembered sequence gaps per stream (late events filling older gaps count as duplicates).
MAX_GAPS = 1024


def whole_number(value: object, what: str = "seq_num") -> int:
    """``value`` as an int, or TypeError naming ``what``: a bool, a string or a fraction is no event number.

    Event-model's schema types ``seq_num`` and the stop's ``num_events`` counts as JSON integers,
    which admit an integral float (``4.0``); truncating ``2.7`` or parsing ``"2"`` would turn a
    malformed document into a silent guess.
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
        return int(value)
    raise TypeError(f"{what} {str(value)[:40]!r} ({type(value).__name__}) is not a whole number")


@dataclass(frozen=True)
class SeqCount:
    """What one ``seq_num`` means for the counts.

    Attributes
    ----------
    owed : bool
        A row is owed for the event (False: a duplicate, dropped).
    missed : int
        Change of the run's missed events: the events of the gap it opens (> 0), -1 for a late
        event filling a gap, else 0 (always 0 for a duplicate).
    """

    owed: bool
    missed: int = 0


@dataclass
class SequenceCounter:
    """The last ``seq_num`` and the open gaps of each stream of one run.

    Attributes
    ----------
    last_seq : dict of str to int
        Highest ``seq_num`` seen per stream key (0 before the first).
    gaps : dict of str to list of [int, int]
        Per stream, the ranges ``[lo, hi]`` (inclusive) of ``seq_num`` not seen yet below
        ``last_seq``, oldest first; at most :data:`MAX_GAPS` of them (older ones forgotten).
    """

    last_seq: dict[str, int] = field(default_factory=dict)
    gaps: dict[str, list[list[int]]] = field(default_factory=dict)

    def count(self, key: str, seq: int) -> SeqCount:
        """Account for ``seq`` of stream ``key`` and say what the callback must count."""
        if seq < 1:   # malformed: answered with a rejection, no part of the numbering
            return SeqCount(owed=True)
        last = self.last_seq.get(key, 0)
        if seq <= last:
            gaps = self.gaps.get(key, [])
            for j, (lo, hi) in enumerate(gaps):
                if lo <= seq <= hi:  # a late event fills a gap: no longer missed
                    parts = [p for p in ([lo, seq - 1], [seq + 1, hi]) if p[0] <= p[1]]
                    gaps[j:j + 1] = parts
                    return SeqCount(owed=True, missed=-1)
            return SeqCount(owed=False)
        missed = 0
        if seq > last + 1:
            missed = seq - last - 1
            gaps = self.gaps.setdefault(key, [])
            gaps.append([last + 1, seq - 1])
            del gaps[:-MAX_GAPS]
        self.last_seq[key] = seq
        return SeqCount(owed=True, missed=missed)
