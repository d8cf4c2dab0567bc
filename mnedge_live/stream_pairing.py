"""Pairing a streamed spectrum with the event that describes it.

A detector written through bluesky's stream documents (ophyd-async) sends its
spectra as ``stream_datum`` frames, while each event of the same stream still
carries the scalar fields the readout needs: the pixel indices
(``pixel_fields``) or an energy-axis field (``dispersion_field``,
``offset_field``, ``energy_field``).  The RunEngine emits the frame's
``stream_datum`` before its event, another publisher may do the reverse, and
a fly scan may send frames with no events at all.  This module keeps what
arrived first until its partner comes, so the callback reads each frame once,
with its event's fields; it knows nothing of readouts.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

#: Most frames or event rows kept waiting for their partner per run; beyond, the oldest frame is
#: read without its event (as a frame whose event never comes) and the oldest row is dropped.
MAX_WAITING = 2048

Key = tuple[str, int]   # (descriptor uid, seq_num)


def event_fields_needed(desc: dict, fields: list[str]) -> list[str]:
    """Of ``fields`` (those the readout takes from events), the ones ``desc``'s events carry themselves.

    A frame of this descriptor waits for its event only when the event holds
    one of them; without, there is nothing to wait for (a fly scan's frames
    have no events).
    """
    keys = desc.get("data_keys") or {}
    return [f for f in fields if f in keys and not str((keys[f] or {}).get("external", "")).startswith("STREAM:")]


class StreamPairs:
    """Frames waiting for their event and event rows waiting for their frame, of one run."""

    def __init__(self) -> None:
        self.frames: OrderedDict[Key, Any] = OrderedDict()
        self.rows: OrderedDict[Key, dict] = OrderedDict()
        #: event rows pushed out by :data:`MAX_WAITING` before their frames came (reported at the stop)
        self.dropped_rows = 0

    def frame_arrived(self, key: Key, frame: Any) -> tuple[dict | None, list[tuple[Key, Any]]]:
        """A frame: its event's row when that came first (else None, the frame waits), and the frames
        pushed out by :data:`MAX_WAITING`, to be read without their events."""
        row = self.rows.pop(key, None)
        if row is not None:
            return row, []
        self.frames[key] = frame
        evicted = []
        while len(self.frames) > MAX_WAITING:
            evicted.append(self.frames.popitem(last=False))
        return None, evicted

    def row_arrived(self, key: Key, row: dict) -> tuple[bool, Any]:
        """An event's row: ``(True, frame)`` when its frame came first, else ``(False, None)`` (the row waits)."""
        if key in self.frames:
            return True, self.frames.pop(key)
        self.rows[key] = row
        while len(self.rows) > MAX_WAITING:
            self.rows.popitem(last=False)
            self.dropped_rows += 1
        return False, None

    def unpaired_frames(self) -> list[tuple[Key, Any]]:
        """The frames whose events never came (read at the run's stop without them); forgets the rest."""
        frames = list(self.frames.items())
        self.frames.clear()
        self.rows.clear()
        return frames
