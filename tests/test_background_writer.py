"""BackgroundWriter: jobs run in order on one thread, failures counted, nothing dropped when it is busy."""

from __future__ import annotations

import threading

import pytest

from mnedge_live.background_writer import BackgroundWriter


def test_jobs_run_in_order_on_the_worker_thread_and_close_waits_for_them():
    writer = BackgroundWriter(max_waiting=8)
    release, done = threading.Event(), []
    writer.submit("blocker", lambda: release.wait(10))
    for i in range(5):
        writer.submit(f"job {i}", lambda i=i: done.append((i, threading.current_thread().name)))
    assert done == []   # the caller did not wait for them
    release.set()
    assert writer.close(timeout=30)
    assert [i for i, _ in done] == list(range(5)) and {name for _, name in done} == {"mnedge-pictures"}
    assert (writer.written, writer.failures) == (6, 0)


def test_a_failing_job_is_logged_and_counted_and_the_next_one_runs(caplog):
    writer = BackgroundWriter()
    done = []
    writer.submit("the broken picture", lambda: 1 / 0)
    writer.submit("the good picture", lambda: done.append(1))
    assert writer.close(timeout=30)
    assert done == [1] and (writer.written, writer.failures) == (1, 1)
    assert "writing the broken picture failed" in caplog.text and "ZeroDivisionError" in caplog.text


def test_a_job_beyond_max_waiting_waits_for_room_and_keeps_its_order():
    """Never dropped, never run ahead of the jobs given before it (two pictures of one file end as given)."""
    writer = BackgroundWriter(max_waiting=1)
    release, started, order = threading.Event(), threading.Event(), []
    writer.submit("blocker", lambda: (started.set(), release.wait(10)))
    assert started.wait(10)
    writer.submit("first", lambda: order.append(("first", threading.current_thread().name)))
    second = threading.Thread(target=writer.submit,
                              args=("second", lambda: order.append(("second", threading.current_thread().name))))
    second.start()
    second.join(0.5)
    assert second.is_alive() and order == []   # its caller waits for room
    release.set()
    second.join(10)
    assert writer.close(timeout=30)
    assert order == [("first", "mnedge-pictures"), ("second", "mnedge-pictures")] and writer.written == 3


def test_after_close_a_job_runs_at_once_on_the_caller():
    writer = BackgroundWriter()
    assert writer.close(timeout=30)
    done = []
    writer.submit("late", lambda: done.append(threading.current_thread().name))
    assert done == [threading.current_thread().name]


def test_max_waiting_must_be_positive():
    with pytest.raises(ValueError, match="max_waiting"):
        BackgroundWriter(max_waiting=0)
