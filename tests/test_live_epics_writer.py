"""EPICS pyepics mode: PVs the site's IOC does not serve are skipped with one warning each, nothing raises."""

from __future__ import annotations

ROW = {"valence": 3.25, "valence_std": 0.1, "frac_mn2": 0.1, "frac_mn3": 0.55, "frac_mn4": 0.35,
       "ood_score": 12.5, "status": "ok", "reason": ""}
BLOCK = {**ROW, "block_row": 0, "block_col": 1, "pixels": 9}    # a block readout (map_bin)
FINAL = {**ROW, "final": True, "source_uid": "5f0c3a6e-8d2b-4c1e-9a7f-2b8d6e4c1a90"}  # a step scan's final readout


def test_pyepics_writer_skips_pvs_that_do_not_connect(caplog):
    from mnedge_live.epics import PyepicsWriter

    with caplog.at_level("WARNING", logger="mnedge_live.epics"):
        w = PyepicsWriter("NOIOC:", connect_timeout=0.2)
        w.update(ROW, {"processed": 1})
        w.update(FINAL, {"processed": 2, "final_readouts": 1})
        w.update(BLOCK, {"processed": 2, "binned_readouts": 1})
        w.stop()
    warned = [r.getMessage() for r in caplog.records if r.name == "mnedge_live.epics"]
    assert len(warned) == len(w.pvs) and all("not connected" in m for m in warned), warned
