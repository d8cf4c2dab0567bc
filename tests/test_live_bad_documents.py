"""Bad documents never crash the service, every owed row is a rejection with its reason, the next run is read.

The bulk is hypothesis-generated and runs in process against :class:`MnEdgeCallback`
with the real (tiny) engine; a few cases go over the wire to the real service.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from live_support import Collector, derived_rows, derived_stops, model_args, real_engine, start_service, stop
from wire_support import (
    RawSender,
    final_totals,
    good_spectra,
    proxy_ports,
    service_toml,
    source_run,
    start_proxy_on,
    wait_until,
)

from mnedge_live.callback import MAX_CHANNELS, MnEdgeCallback
from mnedge_live.config import LiveConfig
from mnedge_live.serializers import msgpack_dumps, msgpack_loads

CONFIG = dict(spectrum_field="spec", dispersion_field="disp", offset_field="off", maps_dir=None)
NAMES = ["start", "descriptor", "event", "event_page", "stop", "resource", "datum", "datum_page",
         "stream_resource", "stream_datum", "bulk_events", "nonsense"]

json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.binary(max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12)
bad_spectrum = st.one_of(
    st.just(np.full(560, np.nan)), st.just(np.full(560, np.inf)), st.just(np.zeros(0)),
    st.just(np.zeros(MAX_CHANNELS + 1)), st.just(np.zeros((4, 140))), st.just("not-a-datum"), st.none(),
    st.just(np.ones(560, complex)), st.just(np.array(["a"] * 560)), st.just(np.ones(560)),
    st.just({"a": 1}), json_like)


@pytest.fixture(scope="module")
def engine():
    return real_engine()


@pytest.fixture(scope="module")
def spectra():
    return good_spectra(8, seed=11)


def _feed(cb: MnEdgeCallback, docs) -> None:
    for name, doc in docs:
        cb(name, doc)


def _new(engine) -> tuple[MnEdgeCallback, list]:
    out: list = []
    return MnEdgeCallback(engine, LiveConfig(**CONFIG), lambda n, d: out.append((n, d))), out


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(garbage=st.lists(st.tuples(st.sampled_from(NAMES), json_like), max_size=12))
def test_garbage_documents_never_raise_and_the_next_run_is_read(engine, spectra, garbage):
    cb, out = _new(engine)
    _feed(cb, garbage)
    docs = source_run(spectra[:3])
    _feed(cb, docs)
    stops = [d for n, d in out if n == "stop"]
    assert stops and stops[-1]["processed"] + stops[-1]["rejected"] == 3 and stops[-1]["missed"] == 0


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(bad=st.lists(st.tuples(st.integers(0, 7), bad_spectrum), min_size=1, max_size=8), page=st.sampled_from([1, 3]))
def test_every_event_of_a_run_gets_exactly_one_row_bad_ones_rejected_with_reason(engine, spectra, bad, page):
    specs: list = list(spectra)
    for i, s in bad:
        specs[i] = s
    cb, out = _new(engine)
    _feed(cb, source_run(specs, page=page))
    rows = derived_rows(out)
    assert sorted(r["source_seq_num"] for r in rows) == list(range(1, 9))
    for i, _ in bad:
        row = next(r for r in rows if r["source_seq_num"] == i + 1)
        assert row["status"] == "rejected" and row["reason"]
    stop = out[-1][1]
    assert stop["processed"] + stop["rejected"] == 8 and stop["missed"] == 0


def test_out_of_order_duplicate_and_foreign_documents(engine, spectra):
    cb, out = _new(engine)
    docs = source_run(spectra[:4])
    start, desc, events, stop = docs[0], docs[1], docs[2:-1], docs[-1]
    _feed(cb, [events[0]])  # an event before its descriptor: no run to put a row in; missed at stop
    _feed(cb, [("stop", {"run_start": "nobody", "uid": "x", "time": 0})])  # stop without start
    _feed(cb, [start, start, desc])  # duplicate start
    _feed(cb, events[1:] + [events[2]])  # a duplicate event
    other = source_run(spectra[:2], stream="baseline")  # an unknown stream: ignored, no row owed
    _feed(cb, [other[0], other[1], *other[2:-1]])
    _feed(cb, [stop])
    stops = [d for n, d in out if n == "stop"]
    assert len(stops) == 1
    assert (stops[0]["processed"] + stops[0]["rejected"], stops[0]["missed"]) == (3, 1)
    assert cb.totals["bad_documents"] >= 3 and cb.totals["duplicates"] == 1


@pytest.mark.parametrize("num_events", ["garbage", [4], 7.5, {"primary": 4.5}, {"primary": "5"},
                                        {"primary": True}, {"primary": -1}, None, {"primary": None}])
def test_a_stop_with_a_malformed_num_events_still_closes_its_run(engine, spectra, num_events):
    """A stop whose num_events was not a mapping raised: the stop was lost and the run stayed open. A
    malformed count is then as good as none, but it is counted as a bad document (a float or string count
    was ignored silently, so the events it would have shown missing went uncounted)."""
    cb, out = _new(engine)
    docs = source_run(spectra[:3])
    docs[-1] = ("stop", {**docs[-1][1], "num_events": num_events})
    _feed(cb, docs)
    stops = [d for n, d in out if n == "stop"]
    assert len(stops) == 1 and not cb.runs
    assert stops[0]["processed"] + stops[0]["rejected"] == 3 and stops[0]["exit_status"] == "success"
    assert stops[0]["missed"] == 0
    assert cb.totals["bad_documents"] == (0 if num_events in (None, {"primary": None}) else 1)


@pytest.mark.parametrize("count", [5, 5.0, np.int64(5)])
def test_a_whole_number_of_events_announced_counts_the_missing_ones(engine, spectra, count):
    """Event-model types the counts as JSON integers: 5.0 is five events (it was ignored: 0 missed)."""
    cb, out = _new(engine)
    docs = source_run(spectra[:3])
    docs[-1] = ("stop", {**docs[-1][1], "num_events": {"primary": count}})
    _feed(cb, docs)
    stop_doc = [d for n, d in out if n == "stop"][-1]
    assert (stop_doc["processed"] + stop_doc["rejected"], stop_doc["missed"]) == (3, 2)
    assert cb.totals["bad_documents"] == 0


@pytest.mark.parametrize("seq", [2.7, True, "2", None, float("nan")])
def test_an_event_whose_seq_num_is_no_whole_number_is_a_bad_document(engine, spectra, seq):
    """seq_num 2.7 was read as 2 and "2" as 2 (int() of it), True as 1: a malformed event silently given
    a number. Now it is a bad document, and the stop's count shows it missed."""
    cb, out = _new(engine)
    docs = source_run(spectra[:3])
    name, event = docs[3]
    assert name == "event" and event["seq_num"] == 2
    docs[3] = (name, {**event, "seq_num": seq})
    _feed(cb, docs)
    rows = derived_rows(out)
    assert sorted(r["source_seq_num"] for r in rows) == [1, 3]
    stop_doc = [d for n, d in out if n == "stop"][-1]
    assert stop_doc["missed"] == 1 and cb.totals["bad_documents"] == 1


def test_a_run_sent_again_after_its_stop_is_counted_not_read_twice(engine, spectra):
    """The same run's documents a second time (a file replayed twice, a publisher resending) made a second
    derived run whose maps replaced the first."""
    cb, out = _new(engine)
    docs = source_run(spectra[:3])
    _feed(cb, docs)
    _feed(cb, docs)
    assert len([d for n, d in out if n == "stop"]) == 1 and cb.totals["processed"] + cb.totals["rejected"] == 3
    assert cb.totals["bad_documents"] == 1 and cb.totals["runs"] == 1
    _feed(cb, source_run(spectra[:2]))   # the next run is read
    assert len([d for n, d in out if n == "stop"]) == 2


def test_stream_datums_of_unknown_descriptors_or_resources_are_counted(engine, spectra):
    """Both were dropped without a count (exit 0 from a replay whose stop has no num_events)."""
    cb, _ = _new(engine)
    docs = source_run(spectra[:1], stop=False)
    _feed(cb, docs)
    desc_uid = docs[1][1]["uid"]
    datum = {"uid": "sd", "stream_resource": "nowhere", "descriptor": desc_uid,
             "seq_nums": {"start": 2, "stop": 5}, "indices": {"start": 0, "stop": 3}}
    _feed(cb, [("stream_datum", datum), ("stream_datum", {**datum, "uid": "sd2", "descriptor": "unknown"})])
    assert cb.totals["bad_documents"] == 2


def test_documents_of_a_run_closed_by_its_timeout_are_counted_as_late_and_logged_once(engine, spectra, caplog):
    """A scan paused past run_timeout_s: each of its later documents was a bad document with a warning of its own."""
    cb, out = _new(engine)
    cb.config.run_timeout_s = 5.0
    docs = source_run(spectra[:6])
    _feed(cb, docs[:4])   # start, descriptor, two events
    assert cb.expire(now=1e12) == [docs[0][1]["uid"]]
    caplog.clear()
    with caplog.at_level("WARNING"):
        _feed(cb, docs[4:])   # four more events and the stop
    assert cb.totals["late_documents"] == 5 and cb.totals["bad_documents"] == 0
    assert len([r for r in caplog.records if "closed already" in r.getMessage()]) == 1
    assert len([d for n, d in out if n == "stop"]) == 1


def test_ignored_runs_whose_stop_never_comes_are_not_kept_for_good(engine, spectra, monkeypatch):
    """Other detectors' runs cut short (no stop) stayed in the ignored set for the service's lifetime."""
    import mnedge_live.callback as C

    monkeypatch.setattr(C, "MAX_IGNORED_RUNS", 3)
    cb, _ = _new(engine)
    cb.config.detectors = ["mine"]
    for _ in range(10):
        _feed(cb, source_run(spectra[:1], stop=False))   # detector "det": ignored, never stopped
    assert cb.totals["ignored_runs"] == 10 and len(cb.ignored_open) == 3
    assert len(cb.ignored) == 6 and len(cb.ignored_desc) == 3   # three runs, each with its descriptor
    docs = source_run(spectra[:1])
    _feed(cb, docs)   # a stopped one is forgotten at its stop
    assert len(cb.ignored_open) == 2 and docs[0][1]["uid"] not in cb.ignored   # it pushed one out, then left


def test_a_non_mn_experiment_gets_rejections_naming_the_edge(engine, spectra):
    cb, out = _new(engine)
    _feed(cb, source_run(spectra[:3], offset=520.0))  # an O K-edge axis
    rows = derived_rows(out)
    assert len(rows) == 3 and all(r["status"] == "rejected" and "Mn L2,3" in r["reason"] for r in rows)


def test_garbage_on_the_wire_is_counted_and_the_next_run_is_read(tmp_path):
    real_engine()
    pin, pout = proxy_ports()
    proxy = start_proxy_on(pin, pout)
    svc = start_service(["--in", f"127.0.0.1:{pout}", "--out", f"127.0.0.1:{pin}", "--config",
                         str(service_toml(tmp_path / "live.toml")), *model_args()])
    sender = RawSender(pin)
    # only the service's output: bluesky's own RemoteDispatcher dies on an unknown document name
    collector = Collector(pout, msgpack_loads, prefix=b"mnedge")
    try:
        good = msgpack_dumps({"uid": "u", "time": 0.0})
        undecodable = [b"no-spaces-at-all", b"src start " + good[:-3], b"src start \xc1\xc1\xc1",
                       b"src nonsense " + good, b"src \xff\xfe " + good, b"src start " + msgpack_dumps([1, 2])]
        for m in undecodable:
            sender.raw(m)
        sender.send("event", {"descriptor": "nope", "seq_num": 1, "data": {}, "time": 0, "uid": "e"})
        sender.send("start", {"no": "uid"})
        bad = source_run([np.full(560, np.nan), np.zeros(MAX_CHANNELS + 10), "x"], page=3)
        mn_free = source_run(good_spectra(2, seed=12), offset=520.0)
        sender.send_all(bad + mn_free)
        docs = source_run(good_spectra(3, seed=13))
        sender.send_all(docs)
        assert wait_until(lambda: len(derived_stops(collector.docs)) == 3, 30), (
            [n for n, _ in collector.docs], "".join(svc.log))
        s_bad, s_free, s_good = derived_stops(collector.docs)
        assert (s_bad["rejected"], s_free["rejected"]) == (3, 2)
        assert s_good["processed"] == 3  # the good run after the garbage gets its readouts
        assert all(r["status"] == "ok" for r in derived_rows(collector.docs, s_good["run_start"]))
    finally:
        collector.close()
        sender.close()
        assert stop(svc) == 0
        stop(proxy)
    totals = final_totals(svc)
    assert totals["bad_messages"] == len(undecodable) and totals["bad_documents"] >= 2


AXIS = list(615.0 + 0.125 * np.arange(560))


@pytest.mark.parametrize("config, column, bad, reason", [
    ({}, "disp", "abc", "dispersion/offset fields 'disp', 'off' are not numbers"),
    ({}, "off", [1.0, 2.0], "dispersion/offset fields 'disp', 'off' are not numbers"),
    ({"dispersion_field": None, "offset_field": None, "energy_field": "axis"}, "axis", ["abc"] * 560,
     "energy field 'axis' is not numeric"),
    ({"pixel_fields": ["r", "c"]}, "r", float("inf"), "no valid pixel index"),
    ({}, "spec", [10**400] * 560, "event could not be read: OverflowError"),
])
def test_one_malformed_event_of_a_page_is_rejected_and_the_others_are_read(engine, spectra, config, column, bad,
                                                                           reason, tmp_path):
    """The middle event of a page carries a value that cannot be read; the run is aborted (no num_events),
    so a lost event would not even be counted as missed."""
    docs = source_run(spectra[:3], page=3)
    page, stop_doc = docs[2][1], docs[3][1]
    page["data"].update(axis=[AXIS] * 3, r=[0, 0, 1], c=[0, 1, 0])
    page["data"][column][1] = bad
    del stop_doc["num_events"]
    out: list = []
    cfg = LiveConfig(**{**CONFIG, **config, "maps_dir": str(tmp_path)})
    cb = MnEdgeCallback(engine, cfg, lambda n, d: out.append((n, d)))
    _feed(cb, docs)
    rows = {r["source_seq_num"]: r for r in derived_rows(out)}
    assert sorted(rows) == [1, 2, 3]
    assert rows[2]["status"] == "rejected" and reason in rows[2]["reason"], rows[2]["reason"]
    assert rows[1]["status"] == rows[3]["status"] == "ok", (rows[1]["reason"], rows[3]["reason"])
    stop = out[-1][1]
    assert (stop["processed"] + stop["rejected"], stop["missed"]) == (3, 0) and cb.totals["bad_documents"] == 0


def _streamed(engine, spectra, path: Path) -> tuple[MnEdgeCallback, list]:
    """``spectra`` written as the frames of ``path``, and a callback reading stream field ``spec`` on the
    simulated spectrometer's axis, with the list its derived documents go to."""
    import h5py

    with h5py.File(path, "w") as f:
        f["/entry/data/data"] = np.stack(spectra)
    out: list = []
    cfg = LiveConfig(spectrum_field="spec", offset_eV=615.0, dispersion_eV=0.125, maps_dir=None)
    return MnEdgeCallback(engine, cfg, lambda n, d: out.append((n, d))), out


def _stream_opening(path: Path) -> list:
    """Start, descriptor and stream resource of run ``run-sd``, whose spectra (field ``spec``) are frames of ``path``."""
    keys = {"spec": {"source": "det", "dtype": "array", "shape": [560], "external": "STREAM:"}}
    return [("start", {"uid": "run-sd", "time": 0.0, "plan_name": "count"}),
            ("descriptor", {"uid": "desc-sd", "run_start": "run-sd", "name": "primary", "time": 0.0, "data_keys": keys}),
            ("stream_resource", {"uid": "sr", "run_start": "run-sd", "data_key": "spec", "uri": f"file://{path}",
                                 "mimetype": "application/x-hdf5", "parameters": {}})]


def test_a_stream_datum_with_more_seq_nums_than_frames_rejects_each_with_the_reason(engine, spectra, tmp_path):
    path = tmp_path / "frames.h5"
    cb, out = _streamed(engine, spectra[:4], path)
    _feed(cb, [*_stream_opening(path),
               ("stream_datum", {"uid": "sd", "descriptor": "desc-sd", "stream_resource": "sr",
                                 "seq_nums": {"start": 1, "stop": 5}, "indices": {"start": 0, "stop": 2}}),
               ("stop", {"uid": "stop-sd", "run_start": "run-sd", "time": 1.0, "exit_status": "abort"})])
    rows = derived_rows(out)
    assert sorted(r["source_seq_num"] for r in rows) == [1, 2, 3, 4]
    assert all(r["status"] == "rejected" and "pairs 4 seq_nums (1..4) with 2 frames" in r["reason"] for r in rows)
    stop = out[-1][1]
    assert (stop["rejected"], stop["missed"]) == (4, 0) and cb.totals["bad_documents"] == 0


def test_a_stream_datum_announcing_too_many_events_is_one_bad_document(engine, spectra, tmp_path):
    """A forged range of a billion seq_nums was owed a rejection row each: hours of the service's time."""
    from mnedge_live.callback import MAX_STREAM_DATUM_EVENTS

    path = tmp_path / "frames.h5"
    cb, out = _streamed(engine, spectra[:4], path)
    big = MAX_STREAM_DATUM_EVENTS + 1
    _feed(cb, [*_stream_opening(path),
               ("stream_datum", {"uid": "sd-huge", "descriptor": "desc-sd", "stream_resource": "sr",
                                 "seq_nums": {"start": 1, "stop": 10**9}, "indices": {"start": 0, "stop": 10**9 - 1}}),
               ("stream_datum", {"uid": "sd-big", "descriptor": "desc-sd", "stream_resource": "sr",
                                 "seq_nums": {"start": 1, "stop": 1 + big}, "indices": {"start": 0, "stop": big}}),
               ("stream_datum", {"uid": "sd", "descriptor": "desc-sd", "stream_resource": "sr",
                                 "seq_nums": {"start": 1, "stop": 5}, "indices": {"start": 0, "stop": 4}}),
               ("stop", {"uid": "stop-sd", "run_start": "run-sd", "time": 1.0, "exit_status": "success",
                         "num_events": {"primary": 4}})])
    rows = derived_rows(out)
    assert sorted(r["source_seq_num"] for r in rows) == [1, 2, 3, 4] and cb.totals["bad_documents"] == 2
    stop = out[-1][1]
    assert stop["processed"] + stop["rejected"] == 4 and stop["missed"] == 0


def test_unreadable_stream_frames_of_a_grid_scan_complete_their_binned_block(engine, spectra, tmp_path):
    """Grid pixels whose frames cannot be read get their rejection rows and still complete their
    ``map_bin`` block during the scan (its readout says no pixel had a spectrum), not only at the stop."""
    out: list = []
    cfg = LiveConfig(spectrum_field="spec", offset_eV=615.0, dispersion_eV=0.125, maps_dir=str(tmp_path),
                     map_bin=2)
    cb = MnEdgeCallback(engine, cfg, lambda n, d: out.append((n, d)))
    start = {"uid": "run-g", "time": 0.0, "plan_name": "grid_scan", "shape": [2, 2]}
    keys = {"spec": {"source": "det", "dtype": "array", "shape": [560], "external": "STREAM:"}}
    _feed(cb, [("start", start),
               ("descriptor", {"uid": "desc-g", "run_start": "run-g", "name": "primary", "time": 0.0,
                               "data_keys": keys}),
               ("stream_resource", {"uid": "sr-g", "run_start": "run-g", "data_key": "spec",
                                    "uri": f"file://{tmp_path / 'absent.h5'}", "mimetype": "application/x-hdf5",
                                    "parameters": {}}),
               ("stream_datum", {"uid": "sd-g", "descriptor": "desc-g", "stream_resource": "sr-g",
                                 "seq_nums": {"start": 1, "stop": 5}, "indices": {"start": 0, "stop": 4}})])
    cb.flush()
    assert len(derived_rows(out)) == 4 and all(r["status"] == "rejected" for r in derived_rows(out))
    binned = [d for n, d in out if n == "descriptor" and d["name"] == "mnedge_binned"]
    pages = [d for n, d in out if n == "event_page" and binned and d["descriptor"] == binned[0]["uid"]]
    assert pages and pages[0]["data"]["reason"] == ["no pixel of the block has a finite spectrum"]


def test_a_streamed_spectrum_beyond_the_scan_shape_gets_one_row(engine, spectra, tmp_path):
    """A grid of 1 x 2 and three events whose spectra arrive by stream_datum: the third was answered twice,
    at its event (outside the shape) and again at its frame."""
    path = tmp_path / "frames.h5"
    cb, out = _streamed(engine, spectra[:3], path)
    keys = {"spec": {"source": "det", "dtype": "array", "shape": [560], "external": "STREAM:"}}
    docs = [("start", {"uid": "run-x", "time": 0.0, "plan_name": "grid_scan", "shape": [1, 2]}),
            ("descriptor", {"uid": "desc-x", "run_start": "run-x", "name": "primary", "time": 0.0, "data_keys": keys}),
            ("stream_resource", {"uid": "sr-x", "run_start": "run-x", "data_key": "spec", "uri": f"file://{path}",
                                 "mimetype": "application/x-hdf5", "parameters": {}})]
    for i in range(3):   # ophyd-async's order: each frame's stream_datum, then its event
        docs += [("stream_datum", {"uid": f"sd{i}", "descriptor": "desc-x", "stream_resource": "sr-x",
                                   "seq_nums": {"start": i + 1, "stop": i + 2}, "indices": {"start": i, "stop": i + 1}}),
                 ("event", {"uid": f"e{i}", "descriptor": "desc-x", "seq_num": i + 1, "time": 1.0, "data": {},
                            "timestamps": {}, "filled": {}})]
    _feed(cb, [*docs, ("stop", {"uid": "stop-x", "run_start": "run-x", "time": 2.0, "exit_status": "success",
                                "num_events": {"primary": 3}})])
    rows = sorted(derived_rows(out), key=lambda r: r["source_seq_num"])
    assert [r["source_seq_num"] for r in rows] == [1, 2, 3]
    assert rows[2]["status"] == "rejected" and "outside the scan shape" in rows[2]["reason"]
    stop = out[-1][1]
    assert (stop["processed"] + stop["rejected"], stop["missed"]) == (3, 0)


@pytest.mark.parametrize("snaking", ["yes", 5, [None, "x"], {"a": 1}])
def test_a_malformed_snaking_rejects_the_grid_pixels_with_the_reason(engine, spectra, snaking):
    """Pixel positions follow the start document's ``snaking``; one that is not a list of booleans leaves
    them unknown: each pixel is rejected saying so (a string reversed odd rows by its second character)."""
    cb, out = _new(engine)
    docs = source_run(spectra[:4])
    docs[0][1].update(shape=[2, 2], snaking=snaking)
    _feed(cb, docs)
    rows = derived_rows(out)
    assert sorted(r["source_seq_num"] for r in rows) == [1, 2, 3, 4]
    assert all(r["status"] == "rejected" and "snaking" in r["reason"] and "not a list of booleans" in r["reason"]
               for r in rows)
    assert out[-1][1]["rejected"] == 4 and out[-1][1]["missed"] == 0


def test_a_snaking_grid_reverses_its_odd_rows(engine, spectra):
    cb, out = _new(engine)
    docs = source_run(spectra[:4])
    docs[0][1].update(shape=[2, 2], snaking=[False, True])
    _feed(cb, docs)
    pixels = {r["source_seq_num"]: (r["pixel_row"], r["pixel_col"]) for r in derived_rows(out)}
    assert pixels == {1: (0, 0), 2: (0, 1), 3: (1, 1), 4: (1, 0)}


def _stream_run(path: Path, seq_stop: int) -> list:
    """A run whose spectra arrive by one stream datum over frames 0..seq_stop - 2 of ``path``."""
    keys = {"spec": {"source": "det", "dtype": "array", "shape": [560], "external": "STREAM:"}}
    n = seq_stop - 1
    return [("start", {"uid": "run-big", "time": 0.0, "plan_name": "count"}),
            ("descriptor", {"uid": "desc-big", "run_start": "run-big", "name": "primary", "time": 0.0,
                            "data_keys": keys}),
            ("stream_resource", {"uid": "sr-big", "run_start": "run-big", "data_key": "spec", "uri": f"file://{path}",
                                 "mimetype": "application/x-hdf5", "parameters": {}}),
            ("stream_datum", {"uid": "sd-big", "descriptor": "desc-big", "stream_resource": "sr-big",
                              "seq_nums": {"start": 1, "stop": seq_stop}, "indices": {"start": 0, "stop": n}}),
            ("stop", {"uid": "stop-big", "run_start": "run-big", "time": 1.0, "exit_status": "success"})]


def test_external_frames_too_large_to_be_spectra_are_refused_before_they_are_read(engine, tmp_path, monkeypatch):
    """A stream datum pointing at a camera's image stack (300 x 300 values a frame), or at more bytes than one
    read may take, gets its rejections with the reason; nothing of the dataset is read."""
    import h5py

    images, spectra = tmp_path / "images.h5", tmp_path / "spectra.h5"
    with h5py.File(images, "w") as f:
        f.create_dataset("/entry/data/data", shape=(3, 300, 300), dtype="f4")
    with h5py.File(spectra, "w") as f:
        f.create_dataset("/entry/data/data", shape=(3, 560), dtype="f8")
    reads: list = []
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda ds, key: reads.append(key) or np.zeros(1))
    for path, limit, reason in ((images, None, "frames of shape (300, 300) (90000 values); at most 65536 channels"),
                                (spectra, 3 * 560 * 8 - 1, "3 frames of dataset '/entry/data/data' are 0 MiB, more")):
        cb, out = _new(engine)
        if limit is not None:
            cb.external.max_bytes = limit
        _feed(cb, _stream_run(path, 4))
        rows = derived_rows(out)
        assert sorted(r["source_seq_num"] for r in rows) == [1, 2, 3]
        assert all(r["status"] == "rejected" and reason in r["reason"] for r in rows), rows[0]["reason"]
    assert reads == []


def test_external_data_in_a_named_pipe_is_refused_without_blocking(engine, tmp_path):
    """A stream resource naming a FIFO: opening it never returned, and the service read nothing more."""
    import os
    import threading

    fifo = tmp_path / "frames.h5"
    os.mkfifo(fifo)
    cb, out = _new(engine)
    feeding = threading.Thread(target=_feed, args=(cb, _stream_run(fifo, 3)), daemon=True)
    feeding.start()
    feeding.join(20)
    if feeding.is_alive():   # release the blocked open before failing, so the test run itself goes on
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("the callback blocked opening a named pipe")
    rows = derived_rows(out)
    assert sorted(r["source_seq_num"] for r in rows) == [1, 2]
    assert all(r["status"] == "rejected" and "is not a regular file" in r["reason"] for r in rows), rows[0]["reason"]
    assert not cb.external.stream_resources       # forgotten with its run

