"""Nothing lost, nothing hangs: accounting, a dying publisher, a restarting proxy, SIGTERM, through the real service.

Every test runs ``mnedge live`` as a subprocess behind a real ``bluesky-0MQ-proxy``
on loopback and reads the derived documents the service publishes back.
"""

from __future__ import annotations

import signal

import numpy as np
import pytest
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

from mnedge_live.serializers import msgpack_loads


def _stop_of(collector: Collector, parent_uid: str) -> dict | None:
    starts = {d["uid"]: d["parent_uid"] for n, d in collector.docs if n == "start" and d.get("mnedge_derived")}
    for d in derived_stops(collector.docs):
        if starts.get(d["run_start"]) == parent_uid:
            return d
    return None


@pytest.fixture(scope="module")
def wire(tmp_path_factory):
    """Proxy, service (run timeout 3 s), a raw sender and a collector of the derived documents."""
    real_engine()
    pin, pout = proxy_ports()
    proxy = start_proxy_on(pin, pout)
    toml = service_toml(tmp_path_factory.mktemp("rel") / "live.toml", max_batch=16)
    svc = start_service(["--in", f"127.0.0.1:{pout}", "--out", f"127.0.0.1:{pin}", "--config", str(toml),
                         "--run-timeout", "3", *model_args()])
    sender = RawSender(pin)
    collector = Collector(pout, msgpack_loads)
    try:
        yield sender, collector, svc
    finally:
        collector.close()
        sender.close()
        stop(svc)
        stop(proxy)


def test_every_spectrum_gets_one_row_and_gaps_are_missed(wire):
    sender, collector, svc = wire
    spectra = good_spectra(30)
    spectra[3] = np.full(560, np.nan)  # a bad spectrum: rejected, with its reason
    spectra[20] = np.zeros(0)  # an empty one
    dropped = (6, 7, 8, 9, 10, 17)  # one whole event page (6..10) and a single event lost on the way
    docs = source_run(spectra, page=5, drop=dropped)
    # the same page twice: a duplicate is not a second row
    docs.insert(3, docs[2])
    sender.send_all(docs)
    parent = docs[0][1]["uid"]
    assert wait_until(lambda: _stop_of(collector, parent) is not None, 30), "".join(svc.log)
    dstop = _stop_of(collector, parent)
    rows = derived_rows(collector.docs, dstop["run_start"])
    seqs = sorted(r["source_seq_num"] for r in rows)
    assert seqs == [s for s in range(1, 31) if s not in dropped]
    assert dstop["missed"] == len(dropped)
    assert dstop["processed"] + dstop["rejected"] + dstop["missed"] == 30
    assert dstop["rejected"] == sum(r["status"] != "ok" for r in rows) >= 2
    assert all(r["reason"] for r in rows if r["status"] != "ok")
    by_seq = {r["source_seq_num"]: r for r in rows}
    assert "NaN" in by_seq[4]["reason"] and by_seq[21]["status"] == "rejected"
    assert any("sequence gap" in line for line in svc.log)
    assert any("duplicate" in line for line in svc.log)


def test_a_publisher_that_dies_mid_run_gets_its_run_closed_as_failed(wire):
    sender, collector, svc = wire
    docs = source_run(good_spectra(4, seed=1), stop=False)
    sender.send_all(docs)
    parent = docs[0][1]["uid"]
    # run_timeout_s = 3: closed within ~4 s of the last document, never left open
    assert wait_until(lambda: _stop_of(collector, parent) is not None, 20), "".join(svc.log)
    dstop = _stop_of(collector, parent)
    assert dstop["exit_status"] == "fail" and "no document" in dstop["reason"]
    assert dstop["processed"] + dstop["rejected"] == 4 and dstop["missed"] == 0
    # the service is still serving
    docs = source_run(good_spectra(3, seed=2))
    sender.send_all(docs)
    assert wait_until(lambda: _stop_of(collector, docs[0][1]["uid"]) is not None, 20)
    assert _stop_of(collector, docs[0][1]["uid"])["exit_status"] == "success"


def test_readouts_resume_after_the_proxy_restarts_and_losses_are_counted(tmp_path):
    real_engine()
    pin, pout = proxy_ports()
    proxy = start_proxy_on(pin, pout)
    svc = start_service(["--in", f"127.0.0.1:{pout}", "--out", f"127.0.0.1:{pin}", "--config",
                         str(service_toml(tmp_path / "live.toml")), "--run-timeout", "60", *model_args()])
    sender = RawSender(pin)
    collector = Collector(pout, msgpack_loads)
    try:
        docs = source_run(good_spectra(20, seed=3))
        parent = docs[0][1]["uid"]
        head, events, tail = docs[:2], docs[2:-1], docs[-1:]
        sender.send_all(head + events[:5])
        assert wait_until(lambda: len(derived_rows(collector.docs)) >= 5, 20), "".join(svc.log)
        proxy.kill()
        proxy.wait(10)
        sender.send_all(events[5:8])  # sent while the proxy is down: lost or queued, either way accounted
        proxy = start_proxy_on(pin, pout)
        # ZeroMQ reconnects every socket by itself; give the subscriptions time to come back
        wait_until(lambda: False, 2.0)
        sender.send_all(events[8:] + tail, pause=0.01)
        assert wait_until(lambda: _stop_of(collector, parent) is not None, 30), "".join(svc.log)
        dstop = _stop_of(collector, parent)
        assert dstop["processed"] + dstop["rejected"] + dstop["missed"] == 20
        assert dstop["processed"] + dstop["rejected"] >= 5 + 12  # the events after the restart were read
        rows_after = [r for r in derived_rows(collector.docs, dstop["run_start"]) if r["source_seq_num"] > 8]
        assert len(rows_after) == 12
    finally:
        collector.close()
        sender.close()
        stop(svc)
        stop(proxy)


def test_sigterm_flushes_closes_open_runs_and_exits_0(tmp_path):
    real_engine()
    pin, pout = proxy_ports()
    proxy = start_proxy_on(pin, pout)
    svc = start_service(["--in", f"127.0.0.1:{pout}", "--out", f"127.0.0.1:{pin}", "--config",
                         str(service_toml(tmp_path / "live.toml", max_batch=64, max_delay_ms=2000.0)),
                         *model_args()])
    sender = RawSender(pin)
    collector = Collector(pout, msgpack_loads)
    try:
        docs = source_run(good_spectra(40, seed=4), stop=False)
        parent = docs[0][1]["uid"]
        sender.send_all(docs)
        assert wait_until(lambda: any(n == "start" and d.get("parent_uid") == parent for n, d in collector.docs),
                          20), "".join(svc.log)
        svc.send_signal(signal.SIGTERM)
        assert svc.wait(30) == 0, "".join(svc.log)
        assert wait_until(lambda: _stop_of(collector, parent) is not None, 10), "".join(svc.log)
        dstop = _stop_of(collector, parent)
        assert dstop["exit_status"] == "abort"
        rows = derived_rows(collector.docs, dstop["run_start"])
        # every spectrum the service took got its row before the stop; nothing half-done
        assert dstop["processed"] + dstop["rejected"] == len(rows) > 0
        totals = final_totals(svc)
        assert totals["processed"] + totals["rejected"] == len(rows)
    finally:
        collector.close()
        sender.close()
        stop(svc)
        stop(proxy)
