"""``mnedge replay``: saved runs of a real RunEngine read as the live callback read them, bad input counted."""

from __future__ import annotations

import json
from pathlib import Path

import bluesky.plans as bp
import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.callbacks.json_writer import JSONLinesWriter
from live_support import derived_rows, model_args, real_engine

from mnedge_live.callback import MnEdgeCallback
from mnedge_live.cli import main
from mnedge_live.config import LiveConfig
from mnedge_live.document_files import DocumentFileWriter, read_documents
from mnedge_live.sim import SpectrumSource, make_eels, make_xas

EELS_TOML = """mode = "spectrum"
spectrum_field = "eels_spectrum"
dispersion_field = "eels_dispersion"
offset_field = "eels_offset"
"""
EELS_OPTS = dict(mode="spectrum", spectrum_field="eels_spectrum", dispersion_field="eels_dispersion",
                 offset_field="eels_offset")
STEP_ARGS = ["--mode", "step", "--signal-field", "xas_tey", "--norm-field", "xas_i0"]


@pytest.fixture(scope="module")
def engine():
    return real_engine()


@pytest.fixture(scope="module")
def saved(engine, tmp_path_factory):
    """A spectrum image and a step scan run on a real RunEngine, saved as they ran, with the live readouts."""
    folder = tmp_path_factory.mktemp("saved")
    source = SpectrumSource()
    det, sy, sx = make_eels((3, 4), source)
    det.prefetch()
    live: list[tuple[str, dict]] = []
    writer = DocumentFileWriter(folder / "image.jsonl")
    RE = RunEngine({})
    RE.subscribe(writer)
    RE.subscribe(MnEdgeCallback(engine, LiveConfig(**EELS_OPTS, maps_dir=""), lambda n, d: live.append((n, d))))
    RE(bp.grid_scan([det], sy, 0, 1, 3, sx, 0, 1, 4, snake_axes=True))
    writer.close()
    dets, mono = make_xas((0.2, 0.5, 0.3), source)
    live_step: list[tuple[str, dict]] = []
    RE2 = RunEngine({})
    RE2.subscribe(JSONLinesWriter(str(folder), "step.jsonl"))   # bluesky's own writer: scalars only
    RE2.subscribe(MnEdgeCallback(engine, LiveConfig(mode="step", signal_field="xas_tey", norm_field="xas_i0"),
                                 lambda n, d: live_step.append((n, d))))
    RE2(bp.list_scan([dets], mono, list(np.arange(630.0, 668.0, 0.25))))
    (folder / "image.toml").write_text(EELS_TOML)
    return folder, live, live_step


def replay(capsys, *args):
    code = main(["replay", *map(str, args), *model_args(), "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_a_saved_spectrum_image_replays_to_the_live_readouts_its_maps_and_a_readable_file(saved, capsys, tmp_path):
    folder, live, _ = saved
    out = tmp_path / "derived.jsonl"
    code, report = replay(capsys, folder / "image.jsonl", "--config", folder / "image.toml",
                          "--maps-dir", tmp_path / "maps", "--out", out)
    live_rows = {r["source_seq_num"]: r for r in derived_rows(live)}
    docs = [d for d in read_documents(out)]
    rows = {r["source_seq_num"]: r for r in derived_rows(docs)}
    assert sorted(rows) == sorted(live_rows) == list(range(1, 13))
    for seq, row in rows.items():
        assert row["status"] == live_rows[seq]["status"]
        assert (row["pixel_row"], row["pixel_col"]) == (live_rows[seq]["pixel_row"], live_rows[seq]["pixel_col"])
        assert row["valence"] == pytest.approx(live_rows[seq]["valence"], abs=1e-4, nan_ok=True)
    [run] = report["runs"]
    assert run["source_uid"] == next(d for n, d in live if n == "start")["parent_uid"]
    assert run["exit_status"] == "success" and run["processed"] + run["rejected"] == 12 and run["missed"] == 0
    ok = [r["valence"] for r in rows.values() if r["status"] == "ok"]
    assert run["median_valence"] == pytest.approx(float(np.median(ok)))
    with h5py.File(run["maps_h5"]) as f:
        grid = f["valence"][()]
    for r in rows.values():
        assert np.array_equal(grid[r["pixel_row"], r["pixel_col"]], r["valence"], equal_nan=True)
    assert report["out"] == str(out) and docs[0][0] == "start" and docs[-1][0] == "stop"
    assert code == (0 if run["rejected"] == 0 else 1)


def test_a_step_scan_saved_by_bluesky_s_writer_replays_to_the_live_final_readout(saved, capsys):
    folder, _, live_step = saved
    code, report = replay(capsys, folder / "step.jsonl", *STEP_ARGS, "--maps-dir", "")
    live_final = [r for r in derived_rows(live_step) if r.get("final")][-1]
    [run] = report["runs"]
    assert run["final"]["status"] == live_final["status"] == "ok"
    assert run["final"]["valence"] == pytest.approx(live_final["valence"], abs=1e-4)
    assert run["processed"] == 152 and report["totals"]["final_readouts"] == 1
    assert code == 0


def test_damaged_files_are_read_around_the_damage_counted_and_exit_1(saved, capsys, tmp_path):
    """A garbage line, an unknown document, the stop document lost, a missing file: all counted, the rest read."""
    folder, _, _ = saved
    lines = (folder / "step.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["name"] == "stop"
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text("\n".join(lines[:5] + ["{not json", '{"name": "nonsense", "doc": {}}'] + lines[5:-1]) + "\n")
    code, report = replay(capsys, damaged, tmp_path / "missing.jsonl", *STEP_ARGS, "--maps-dir", "")
    assert code == 1
    assert report["bad_lines"] == 2 and report["unreadable_files"] == 1 and report["runs_without_stop"] == 1
    [run] = report["runs"]
    assert run["exit_status"] == "fail" and "stop document" in run["reason"]
    assert run["processed"] == 152 and run["final"]["status"] == "ok"


def test_derived_runs_are_counted_as_not_read_and_a_file_of_nothing_to_read_exits_1(saved, capsys, tmp_path):
    folder, _, _ = saved
    out = tmp_path / "derived.jsonl"
    assert replay(capsys, folder / "step.jsonl", *STEP_ARGS, "--out", out)[0] == 0
    again = tmp_path / "again.jsonl"
    code, report = replay(capsys, out, *STEP_ARGS, "--out", again)
    assert code == 1 and report["runs"] == [] and report["totals"]["ignored_runs"] == 1
    assert report["out"] is None and not again.exists() and not (tmp_path / "again.jsonl.partial").exists()


def test_maps_go_to_their_own_folder_by_default_never_over_the_services(saved, capsys, tmp_path, monkeypatch):
    """The live service's default maps folder (mnedge_maps) in the same working directory got the replay's
    map of the same run under the same name."""
    folder, _, _ = saved
    monkeypatch.chdir(tmp_path)
    code, report = replay(capsys, folder / "image.jsonl", "--config", folder / "image.toml")
    assert Path(report["runs"][0]["maps_h5"]).parent == tmp_path / "mnedge_replay_maps"
    assert not (tmp_path / "mnedge_maps").exists()


def test_an_existing_out_file_is_kept_without_overwrite(saved, capsys, tmp_path):
    folder, _, _ = saved
    out = tmp_path / "derived.jsonl"
    out.write_text("keep me\n")
    assert main(["replay", str(folder / "step.jsonl"), *STEP_ARGS, "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == "keep me\n"
    code, _ = replay(capsys, folder / "step.jsonl", *STEP_ARGS, "--out", out, "--overwrite")
    assert code == 0 and next(read_documents(out))[0] == "start"


def test_bad_options_are_usage_errors(saved, capsys):
    folder, _, _ = saved
    assert main(["replay", str(folder / "step.jsonl"), "--mode", "sideways"]) == 2
    assert "mode" in capsys.readouterr().err


def test_the_same_run_in_two_files_is_read_once_and_exits_1(saved, capsys, tmp_path):
    folder, _, _ = saved
    copy = tmp_path / "copy.jsonl"
    copy.write_text((folder / "step.jsonl").read_text())
    code, report = replay(capsys, folder / "step.jsonl", copy, *STEP_ARGS, "--maps-dir", "")
    assert code == 1 and len(report["runs"]) == 1 and report["totals"]["bad_documents"] == 1


def test_a_step_scan_whose_final_readout_is_rejected_exits_1_with_strict_json(engine, capsys, tmp_path):
    """A scan over the L3 region only: its final readout is rejected (exit 0 before; --json printed NaN)."""
    dets, mono = make_xas((0.2, 0.5, 0.3), SpectrumSource())
    RE = RunEngine({})
    RE.subscribe(JSONLinesWriter(str(tmp_path), "short.jsonl"))
    RE(bp.list_scan([dets], mono, list(np.arange(630.0, 646.0, 0.25))))
    code = main(["replay", str(tmp_path / "short.jsonl"), *STEP_ARGS, "--maps-dir", "", *model_args(), "--json"])
    out = capsys.readouterr().out
    report = json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in --json output"))
    [run] = report["runs"]
    assert run["final"]["status"] == "rejected" and run["final"]["valence"] is None and code == 1


def test_out_naming_a_file_read_is_refused_even_with_overwrite(saved, capsys, tmp_path):
    folder, _, _ = saved
    source = tmp_path / "run.jsonl"
    source.write_text((folder / "step.jsonl").read_text())
    before = source.read_text()
    assert main(["replay", str(source), *STEP_ARGS, "--out", str(source), "--overwrite"]) == 2
    assert "is one of the files read" in capsys.readouterr().err and source.read_text() == before


def test_a_live_services_file_is_read_without_its_addresses_epics_and_curve_keys(saved, capsys, tmp_path):
    """Its CurveZMQ key files exist only on the service's host: replay refused the file."""
    folder, _, _ = saved
    config = tmp_path / "live.toml"
    config.write_text('[live]\nin_address = "beamline:5568"\nout_address = "beamline:5567"\nmode = "step"\n'
                      'signal_field = "xas_tey"\nnorm_field = "xas_i0"\nepics_prefix = "BL08:MNEDGE:"\n'
                      f'curve_secret_key = "{tmp_path}/absent.key_secret"\n'
                      f'curve_server_public_key = "{tmp_path}/absent.key"\n'
                      f'plot_dir = "{tmp_path}/service_plots"\n')
    code, report = replay(capsys, folder / "step.jsonl", "--config", config)
    assert code == 0 and report["runs"][0]["final"]["status"] == "ok"
    assert not (tmp_path / "service_plots").exists()   # the service's folders are the service's
    assert main(["live", "--config", str(config)]) == 2   # the service itself still checks them
    assert "curve" in capsys.readouterr().err


def test_a_plot_folder_that_is_a_file_is_a_usage_error_leaving_nothing(saved, capsys, tmp_path):
    folder, _, _ = saved
    (tmp_path / "plots").write_text("a file")
    out = tmp_path / "d.jsonl"
    assert main(["replay", str(folder / "step.jsonl"), *STEP_ARGS, "--plot", str(tmp_path / "plots"),
                 "--out", str(out)]) == 2
    assert "--plot" in capsys.readouterr().err and sorted(p.name for p in tmp_path.iterdir()) == ["plots"]


def test_an_aborted_step_scans_rejected_final_readout_is_the_scans_not_the_replays(saved, capsys, tmp_path):
    """A scan the operator stopped after 3 points: its final readout is rejected, its stop says abort; replay
    reported that as its own failure (exit 1), against its documentation."""
    folder, _, _ = saved
    docs = [json.loads(line) for line in (folder / "step.jsonl").read_text().splitlines()]
    stop = {**docs[-1]["doc"], "exit_status": "abort", "reason": "operator", "num_events": {"primary": 3}}
    aborted = tmp_path / "aborted.jsonl"
    aborted.write_text("".join(json.dumps(d) + "\n" for d in docs[:5]) + json.dumps({"name": "stop", "doc": stop}) + "\n")
    code, report = replay(capsys, aborted, *STEP_ARGS)
    [run] = report["runs"]
    assert run["exit_status"] == "abort" and run["final"]["status"] == "rejected" and code == 0


def test_out_whose_partial_file_is_an_input_is_refused(saved, capsys, tmp_path):
    folder, _, _ = saved
    source = tmp_path / "run.jsonl.partial"
    source.write_text((folder / "step.jsonl").read_text())
    before = source.read_text()
    assert main(["replay", str(source), *STEP_ARGS, "--out", str(tmp_path / "run.jsonl")]) == 2
    assert ".partial" in capsys.readouterr().err and source.read_text() == before


def test_documents_after_a_runs_stop_are_counted_late_and_exit_1(saved, capsys, tmp_path):
    folder, _, _ = saved
    lines = (folder / "step.jsonl").read_text().splitlines()
    moved = tmp_path / "moved.jsonl"
    moved.write_text("\n".join(lines[:-4] + [lines[-1]] + lines[-4:-1]) + "\n")   # the stop before 3 events
    code, report = replay(capsys, moved, *STEP_ARGS)
    assert code == 1 and report["totals"]["late_documents"] == 3 and report["runs"][0]["missed"] == 3
