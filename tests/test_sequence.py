"""seq_num accounting: gaps counted as missed, late events filling them, duplicates dropped."""

from __future__ import annotations

import logging

import event_model
import numpy as np
import pytest
from live_support import real_engine

import mnedge_live.callback as callback
from mnedge_live.callback import MnEdgeCallback
from mnedge_live.config import LiveConfig
from mnedge_live.sequence import MAX_GAPS, SeqCount, SequenceCounter, whole_number


def test_the_callback_still_exports_max_gaps():
    assert callback.MAX_GAPS == MAX_GAPS == 1024


def test_consecutive_seq_nums_owe_a_row_each_and_miss_nothing():
    s = SequenceCounter()
    assert [s.count("primary", q) for q in (1, 2, 3)] == [SeqCount(owed=True, missed=0)] * 3
    assert s.last_seq == {"primary": 3} and s.gaps == {}


def test_a_jump_opens_a_gap_counted_as_missed():
    s = SequenceCounter()
    s.count("p", 1)
    assert s.count("p", 5) == SeqCount(owed=True, missed=3)
    assert s.gaps == {"p": [[2, 4]]} and s.last_seq["p"] == 5


def test_a_first_event_after_one_counts_the_events_before_it_as_missed():
    s = SequenceCounter()
    assert s.count("p", 4) == SeqCount(owed=True, missed=3)
    assert s.gaps["p"] == [[1, 3]]


def test_late_events_fill_the_gap_one_by_one():
    s = SequenceCounter()
    s.count("p", 1)
    s.count("p", 6)                        # gap [2, 5]
    assert s.count("p", 3) == SeqCount(owed=True, missed=-1)
    assert s.gaps["p"] == [[2, 2], [4, 5]]   # split around it
    assert s.count("p", 2) == SeqCount(owed=True, missed=-1)
    assert s.count("p", 5) == SeqCount(owed=True, missed=-1)
    assert s.gaps["p"] == [[4, 4]]
    assert s.count("p", 4) == SeqCount(owed=True, missed=-1)
    assert s.gaps["p"] == [] and s.last_seq["p"] == 6   # a late event never moves the last seq_num


def test_a_repeated_seq_num_is_a_duplicate_and_so_is_a_late_event_seen_twice():
    s = SequenceCounter()
    s.count("p", 1)
    s.count("p", 3)
    assert s.count("p", 3) == SeqCount(owed=False, missed=0)
    assert s.count("p", 1) == SeqCount(owed=False, missed=0)
    assert s.count("p", 2) == SeqCount(owed=True, missed=-1)
    assert s.count("p", 2) == SeqCount(owed=False, missed=0)   # the gap is filled: now a duplicate
    assert s.last_seq["p"] == 3


def test_a_seq_num_of_zero_or_less_is_owed_its_row_and_touches_no_gap():
    """Bluesky numbers events from 1: a seq_num of 0 or less is malformed, not a duplicate of event 0 (the
    callback answers it with a rejection); it neither opens nor fills a gap, however often it comes."""
    s = SequenceCounter()
    assert s.count("p", 0) == SeqCount(owed=True)
    assert s.count("p", -1) == SeqCount(owed=True)
    assert s.count("p", 0) == SeqCount(owed=True)
    assert s.last_seq == {} and s.gaps == {}
    assert s.count("p", 1) == SeqCount(owed=True, missed=0)


def test_each_stream_key_is_counted_on_its_own():
    s = SequenceCounter()
    s.count("d1", 1)
    s.count("d1", 2)
    assert s.count("stream:d1", 1) == SeqCount(owed=True, missed=0)   # not a duplicate of d1's 1
    assert s.count("d2", 3) == SeqCount(owed=True, missed=2)
    assert s.last_seq == {"d1": 2, "stream:d1": 1, "d2": 3} and s.gaps == {"d2": [[1, 2]]}


def test_only_the_newest_gaps_are_remembered():
    s = SequenceCounter()
    for k in range(MAX_GAPS + 2):
        s.count("p", 2 * k + 2)            # 2, 4, 6, ...: a gap of one before each
    assert len(s.gaps["p"]) == MAX_GAPS
    assert s.gaps["p"][0] == [5, 5] and s.gaps["p"][-1] == [2 * MAX_GAPS + 3, 2 * MAX_GAPS + 3]
    assert s.count("p", 1) == SeqCount(owed=False)                  # a forgotten gap: counted as a duplicate
    assert s.count("p", 5) == SeqCount(owed=True, missed=-1)        # the oldest one kept is still filled


def test_the_callback_counts_and_logs_what_the_counter_returns(caplog):
    out: list = []
    cfg = LiveConfig(spectrum_field="spec", dispersion_eV=0.125, offset_eV=615.0, maps_dir="")
    cb = MnEdgeCallback(real_engine(), cfg, lambda name, doc: out.append((name, doc)))
    b = event_model.compose_run(metadata={"plan_name": "count"})
    d = b.compose_descriptor(name="primary", data_keys={"spec": {"source": "x", "dtype": "array", "shape": [32]}})
    uid = b.start_doc["uid"]
    cb("start", b.start_doc)
    cb("descriptor", d.descriptor_doc)
    with caplog.at_level(logging.WARNING, logger="mnedge_live.callback"):
        for seq in (1, 4, 3, 3, 2, 0):   # a gap of two, filled late, with one duplicate; a malformed 0
            cb("event", d.compose_event(data={"spec": np.ones(32)}, timestamps={"spec": 0.0}, seq_num=seq,
                                        validate=False))
    run = cb.runs[uid]
    assert (run.missed_live, cb.totals["missed"], cb.totals["duplicates"]) == (0, 0, 1)
    assert [r.getMessage() for r in caplog.records] == [
        f"run {uid}: sequence gap, 2 event(s) missed before seq_num 4",
        f"run {uid}: seq_num 3 of stream primary seen before, duplicate dropped",
    ]
    cb("stop", b.compose_stop())
    stop = out[-1][1]
    # five rows owed (four numbered events and the malformed one): each read out or rejected, none missed
    assert (stop["processed"] + stop["rejected"], stop["missed"]) == (5, 0)
    rows = {seq: (status, reason) for name, doc in out if name == "event_page"
            for seq, status, reason in zip(doc["data"]["source_seq_num"], doc["data"]["status"], doc["data"]["reason"])}
    assert sorted(rows) == [0, 1, 2, 3, 4]
    assert rows[0] == ("rejected", "seq_num 0 is not an event number (bluesky numbers events from 1)")
    assert cb.totals["bad_documents"] == 0


@pytest.mark.parametrize("value, expected", [(3, 3), (np.int64(3), 3), (3.0, 3), (np.float32(4.0), 4), (-1, -1)])
def test_whole_numbers_are_read_as_ints(value, expected):
    assert whole_number(value) == expected and type(whole_number(value)) is int


@pytest.mark.parametrize("value", [2.7, True, np.bool_(True), "2", None, float("nan"), float("inf"), [2], b"2"])
def test_anything_else_is_no_event_number(value):
    with pytest.raises(TypeError, match="is not a whole number"):
        whole_number(value)
