"""The local Dask cluster of ``mnedge predict``'s images: what it opens to the network."""

from __future__ import annotations

import dask.array as da
import psutil

from mnedge_live.spectrum_image import close_client, local_client


def _listening() -> set[tuple[str, int]]:
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process().net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN}


def test_the_local_cluster_listens_on_loopback_only_and_computes():
    """Without a dashboard distributed still starts the scheduler's and the worker's HTTP servers; they
    listened on every interface of the microscope PC for the whole run (the scheduler's pages served to
    the network, and a warning when another cluster held port 8787)."""
    before = _listening()
    client = local_client(1)
    try:
        opened = _listening() - before
        assert opened, "the cluster's HTTP servers were expected to listen somewhere"
        assert all(ip in ("127.0.0.1", "::1") for ip, _ in opened), opened
        assert client.compute(da.ones(10, chunks=5).sum()).result() == 10.0
    finally:
        close_client(client)
