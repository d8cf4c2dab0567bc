"""Streamed spectra read with their events' fields, whichever arrives first (ophyd-async's stream documents)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from live_support import derived_rows, real_engine

from mnedge_live.callback import MnEdgeCallback
from mnedge_live.config import LiveConfig
from mnedge_live.sim import EELS_DISPERSION_EV, EELS_OFFSET_EV, SpectrumSource
from mnedge_live.stream_pairing import MAX_WAITING, StreamPairs, event_fields_needed

PIXELS = [(0, 0), (0, 1), (1, 0), (1, 1)]
FRACTIONS = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.5, 0.5]])


def test_a_frame_and_its_row_meet_whichever_comes_first():
    pairs = StreamPairs()
    assert pairs.frame_arrived(("d", 1), "frame 1") == (None, [])
    assert pairs.row_arrived(("d", 1), {"r": 0}) == (True, "frame 1")
    assert pairs.row_arrived(("d", 2), {"r": 1}) == (False, None)
    assert pairs.frame_arrived(("d", 2), "frame 2") == ({"r": 1}, [])
    assert pairs.frame_arrived(("d", 3), "frame 3") == (None, [])
    assert pairs.unpaired_frames() == [(("d", 3), "frame 3")] and not pairs.frames and not pairs.rows


def test_waiting_frames_are_bounded_the_oldest_read_without_its_event():
    pairs = StreamPairs()
    for seq in range(1, MAX_WAITING + 1):
        assert pairs.frame_arrived(("d", seq), seq) == (None, [])
    assert pairs.frame_arrived(("d", MAX_WAITING + 1), -1) == (None, [(("d", 1), 1)])
    for seq in range(MAX_WAITING + 2):
        pairs.row_arrived(("e", seq), {})
    assert len(pairs.rows) == MAX_WAITING and pairs.dropped_rows == 2   # counted, reported at the stop


def test_only_fields_the_events_carry_themselves_are_waited_for():
    desc = {"data_keys": {"spec": {"external": "STREAM:"}, "r": {}, "c": {}, "disp": {"external": "STREAM:"}}}
    assert event_fields_needed(desc, ["r", "c", "disp", "absent"]) == ["r", "c"]
    assert event_fields_needed({"data_keys": {"spec": {"external": "STREAM:"}}}, ["r", "c"]) == []


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    path = tmp_path_factory.mktemp("frames") / "frames.h5"
    _, spectra = SpectrumSource(seed=3).draw(FRACTIONS, eels=True)
    with h5py.File(path, "w") as f:
        f["/entry/data/data"] = spectra
    return path


def _run(frames, order: str, events: bool = True, pixel_keys: bool = True, stop: bool = True):
    """A 2 x 2 image: frames by stream_datum, pixel indices in events ``r`` and ``c``; ``order`` is
    "frame first" (the RunEngine's) or "event first". Without ``stop``, the rows read by then."""
    cfg = LiveConfig(spectrum_field="spec", offset_eV=EELS_OFFSET_EV, dispersion_eV=EELS_DISPERSION_EV,
                     pixel_fields=["r", "c"], maps_dir=None)
    out: list = []
    cb = MnEdgeCallback(real_engine(), cfg, lambda n, d: out.append((n, d)))
    keys = {"spec": {"source": "det", "dtype": "array", "shape": [560], "external": "STREAM:"}}
    if pixel_keys:
        keys.update(r={"source": "m", "dtype": "integer", "shape": []}, c={"source": "m", "dtype": "integer", "shape": []})
    cb("start", {"uid": "run", "time": 0.0, "plan_name": "grid_scan"})
    cb("descriptor", {"uid": "d", "run_start": "run", "name": "primary", "time": 0.0, "data_keys": keys})
    cb("stream_resource", {"uid": "sr", "run_start": "run", "data_key": "spec", "uri": f"file://{frames}",
                           "mimetype": "application/x-hdf5", "parameters": {}})
    for i, (r, c) in enumerate(PIXELS):
        datum = ("stream_datum", {"uid": f"sd{i}", "descriptor": "d", "stream_resource": "sr",
                                  "seq_nums": {"start": i + 1, "stop": i + 2}, "indices": {"start": i, "stop": i + 1}})
        event = ("event", {"uid": f"e{i}", "descriptor": "d", "seq_num": i + 1, "time": 1.0, "data": {"r": r, "c": c},
                           "timestamps": {"r": 1.0, "c": 1.0}, "filled": {}})
        for name, doc in ([datum, event] if order == "frame first" else [event, datum])[: 2 if events else 1]:
            cb(name, doc)
    if not stop:
        cb.flush()
        return derived_rows(out), None
    cb("stop", {"uid": "s", "run_start": "run", "time": 2.0, "exit_status": "success"})
    return derived_rows(out), out[-1][1]


@pytest.mark.parametrize("order", ["frame first", "event first"])
def test_each_streamed_spectrum_is_read_in_its_events_pixel(frames, order):
    """Every spectrum was rejected ("no valid pixel index in fields 'r', 'c'"): the frame was read with
    an empty row."""
    rows, stop = _run(frames, order)
    assert sorted((r["source_seq_num"], r["pixel_row"], r["pixel_col"]) for r in rows) == [
        (i + 1, *p) for i, p in enumerate(PIXELS)]
    assert all(r["status"] == "ok" for r in rows), [r["reason"] for r in rows]
    assert stop["processed"] == 4 and stop["missed"] == 0


def test_frames_whose_events_never_come_are_answered_at_the_stop(frames):
    assert _run(frames, "frame first", events=False, stop=False)[0] == []   # waiting for their events
    rows, stop = _run(frames, "frame first", events=False)
    assert sorted(r["source_seq_num"] for r in rows) == [1, 2, 3, 4]
    assert all(r["status"] == "rejected" and "pixel index" in r["reason"] for r in rows)
    assert stop["processed"] + stop["rejected"] == 4


def test_frames_of_events_without_the_fields_are_not_held_back(frames):
    """A descriptor whose events carry no pixel fields (a fly scan's frames): each frame is answered when
    it arrives, not at the stop."""
    rows, _ = _run(frames, "frame first", events=False, pixel_keys=False, stop=False)
    assert len(rows) == 4 and all("pixel index" in r["reason"] for r in rows)
