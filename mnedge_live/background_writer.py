"""Pictures drawn off the thread that reads the documents (:class:`BackgroundWriter`).

Drawing the maps of a spectrum image takes seconds (matplotlib: about 1 s for 256 x 256
pixels, 4 s for 2048 x 2048 on the development machine), and ``mnedge live`` reads no message
while it draws: 0MQ buffers what arrives meanwhile up to its high-water marks and then drops
it (counted as missed, but lost), so a spectrum image started right after another one lost
events.  The maps' data (HDF5) are still written before the derived stop document; their
picture (PNG) is drawn by one worker thread, one job at a time.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class BackgroundWriter:
    """One worker thread that runs file-writing jobs in the order given.

    Parameters
    ----------
    max_waiting : int
        Jobs that may wait for the thread; the caller of one more waits for room (each
        job holds its data, e.g. a spectrum image's maps: memory stays bounded, no job is
        dropped, and jobs for the same file end in the order given).
    name : str
        The thread's name (in logs and debuggers).

    Attributes
    ----------
    written, failures : int
        Jobs that completed and jobs that raised (logged with their traceback).
    """

    def __init__(self, max_waiting: int = 2, name: str = "mnedge-pictures"):
        if max_waiting < 1:
            raise ValueError(f"max_waiting must be at least 1, not {max_waiting}")
        self._jobs: queue.Queue = queue.Queue(maxsize=max_waiting)
        self._lock = threading.Lock()
        self._closed = False
        self.written = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, what: str, write: Callable[[], object]) -> None:
        """Run ``write()`` on the worker thread after the jobs given before it (waiting here while
        ``max_waiting`` jobs wait already), or here at once once the writer is closed; ``what`` names
        the job in the log should it fail. Never raises."""
        if self._closed:
            self._run(what, write)
        else:
            self._jobs.put((what, write))

    def close(self, timeout: float = 120.0) -> bool:
        """Finish the jobs waiting, then end the thread; False when they were not done within ``timeout``
        seconds in all (the thread is a daemon: it does not hold the process)."""
        deadline = time.monotonic() + timeout
        self._closed = True
        try:
            self._jobs.put(None, timeout=timeout)
        except queue.Full:
            return False
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()

    def _run(self, what: str, write: Callable[[], object]) -> None:
        try:
            write()
        except Exception:
            log.exception("writing %s failed", what)
            with self._lock:
                self.failures += 1
        else:
            with self._lock:
                self.written += 1

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            self._run(*job)
