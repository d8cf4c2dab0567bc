"""The README's copy-paste examples for each kind of user, run as written.

Each test reads its section's shell block from README.md and runs its lines
with bash in a scratch folder, after making the input files the example names
(small ones: a few spectra, a tiny training budget).  Lines ending in ``&``
are started in the background and stopped at the end.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from live_support import ROOT, free_port

README = ROOT / "README.md"
BIN = Path(sys.executable).parent


def readme_commands(heading: str) -> list[str]:
    """Command lines of the first ```bash block under the README heading starting with ``heading``."""
    text = README.read_text()
    m = re.search(rf"^## {re.escape(heading)}.*?^```bash\n(.*?)^```", text, flags=re.S | re.M)
    assert m, f"README has no shell block under '## {heading}'"
    joined = m.group(1).replace("\\\n", " ")
    lines = []
    for line in joined.splitlines():
        line = re.sub(r"\s+#\s.*$", "", line).strip()   # trailing comments
        if line:
            lines.append(line)
    return lines


class Shell:
    """Runs README lines in ``cwd`` with the project's console scripts first on PATH."""

    def __init__(self, cwd: Path):
        self.cwd = cwd
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.background: list[subprocess.Popen] = []

    def run(self, line: str, timeout: float = 300) -> subprocess.CompletedProcess | subprocess.Popen:
        if line.endswith("&"):
            proc = subprocess.Popen(["bash", "-c", f"exec {line[:-1].strip()}"], cwd=self.cwd, env=self.env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True)
            self.background.append(proc)
            return proc
        # Output goes to files, not pipes: a daemon a command leaves behind cannot hold the test up.
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            r = subprocess.run(["bash", "-c", line], cwd=self.cwd, env=self.env, stdout=out, stderr=err, text=True,
                               timeout=timeout)
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(r.args, r.returncode, out.read(), err.read())

    def close(self) -> list[int]:
        """SIGTERM each background process group once (as an operator's Ctrl-C or systemd would), then wait."""
        codes = []
        for proc in reversed(self.background):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            codes.append(proc.returncode)
        return codes


def wait_for_line(proc: subprocess.Popen, text: str, timeout: float = 120) -> list[str]:
    """Read a background process's output until a line contains ``text``."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"no {text!r} from {proc.args}:\n" + "".join(seen))


def write_microscopist_files(folder: Path) -> None:
    """``spectrum.msa`` and the 3 x 4 EELS spectrum image ``map.hspy`` of the simulated sample
    (:func:`~mnedge_live.sim.demo_fractions`; the spectrum is pixel (0, 0))."""
    from rsciio.hspy import file_writer as write_hspy
    from rsciio.msa import file_writer as write_msa

    from mnedge_live.sim import SpectrumSource, demo_fractions

    source = SpectrumSource(seed=5)
    energy, spectra = source.draw(np.array([demo_fractions(r, c, (3, 4)) for r in range(3) for c in range(4)]), eels=True)
    axis = {"name": "Energy loss", "size": energy.size, "offset": float(energy[0]),
            "scale": float(energy[1] - energy[0]), "units": "eV", "navigate": False}
    write_msa(str(folder / "spectrum.msa"), {"data": spectra[0], "axes": [axis], "original_metadata": {},
                                               "metadata": {"General": {"title": "x"}, "Signal": {"signal_type": "EELS"}}})
    nav = [{"name": n, "size": s, "offset": 0.0, "scale": 1.0, "units": "nm", "navigate": True}
           for n, s in (("y", 3), ("x", 4))]
    write_hspy(str(folder / "map.hspy"), {
        "data": spectra.reshape(3, 4, -1).astype(np.float32), "axes": [*nav, axis], "original_metadata": {},
        "metadata": {"General": {"title": "si"}, "Signal": {"signal_type": "EELS"}}, "attributes": {"_lazy": False},
        "tmp_parameters": {}, "learning_results": {}, "models": {}, "package_info": {"name": "hyperspy", "version": "2.1"}},
        show_progressbar=False)


def test_microscopist_example(tmp_path):
    from mnedge_live.sim import demo_fractions, valence_of

    write_microscopist_files(tmp_path)
    shell = Shell(tmp_path)
    (line,) = readme_commands("For the microscopist")
    r = shell.run(line)
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "readout.json").read_text())
    assert sorted({Path(row["file"]).name for row in rows}) == ["map.hspy", "spectrum.msa"] and len(rows) == 13
    ok = [row for row in rows if row["status"] == "ok"]
    assert len(ok) >= 11, [row["reason"] for row in rows if row["status"] != "ok"]
    # the simulated sample's valence at each pixel (the spectrum file is pixel (0, 0)), read as `make demo` reads it
    truth = [valence_of(demo_fractions(*(row.get("pixel") or (0, 0)), (3, 4))) for row in ok]
    err = np.abs(np.array([row["valence"] for row in ok]) - truth)
    assert np.median(err) < 0.3, err
    out = tmp_path / "out"
    assert list(out.rglob("*.png")) and list(out.rglob("*.h5"))


def test_python_example(tmp_path, monkeypatch):
    """The README's Python block, run as written on the microscopist's files: the spectrum reads out, and
    the image's valence map follows the simulated sample."""
    from mnedge_live.sim import demo_fractions, valence_of

    text = README.read_text()
    m = re.search(r"^## From Python.*?^```python\n(.*?)^```", text, flags=re.S | re.M)
    assert m, "README has no python block under '## From Python'"
    write_microscopist_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(m.group(1), "README.md", "exec"), ns)
    assert ns["r"].status == "ok" and ns["r"].model == ns["engine"].model_id
    valence = ns["valence"]
    assert valence.shape == (3, 4)
    truth = np.array([[valence_of(demo_fractions(r, c, (3, 4))) for c in range(4)] for r in range(3)])
    read = np.isfinite(valence)
    assert read.sum() >= 11, ns["reasons"]
    assert np.median(np.abs(valence[read] - truth[read])) < 0.3
    assert abs(ns["r"].valence - valence[0, 0]) < 0.05   # the spectrum file is pixel (0, 0)


def test_beamline_scientist_example(tmp_path):
    import bluesky.plans as bp
    from bluesky import RunEngine

    from mnedge_live.publishing import make_publisher
    from mnedge_live.serializers import msgpack_dumps
    from mnedge_live.sim import make_xas

    # the README's ports, 5567 and 5568, swapped for free ones: another proxy on this machine must not fail the test
    pin, pout = free_port(), free_port()
    lines = [ln.replace("5567", str(pin)).replace("5568", str(pout)) for ln in readme_commands("For the beamline scientist")]
    assert [ln.count(str(p)) for ln in lines for p in (pin, pout)] == [1, 1, 1, 1, 0, 0], lines
    proxy_line, service_line, caget_line = lines
    shell = Shell(tmp_path)
    try:
        shell.run(proxy_line)
        wait_for_line(service := shell.run(service_line), "mnedge live: ready")
        dets, mono = make_xas((0.0, 1.0, 0.0))
        publisher = make_publisher(f"127.0.0.1:{pin}", serializer=msgpack_dumps)
        # a 0MQ PUB socket drops what it sends before the proxy's subscription has reached it (the slow
        # joiner): a beamline's publisher lives long before its first scan, this one is a moment old
        time.sleep(1.0)
        try:
            RE = RunEngine({})
            RE.subscribe(publisher)
            RE(bp.scan([dets], mono, 630, 665, 71))
        finally:
            publisher.close()
        deadline = time.monotonic() + 30
        while True:
            r = shell.run(caget_line, timeout=60)
            values = dict(re.findall(r"(\S+)\s+\[([^\]]+)\]", r.stdout))  # caproto-get: NAME  [VALUE]
            if values.get("BL08:MNEDGE:PROCESSED") == "71" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert r.returncode == 0, r.stderr
        assert values["BL08:MNEDGE:PROCESSED"] == "71", r.stdout   # a double shown with its precision, 0
        assert float(values["BL08:MNEDGE:VALENCE"]) == pytest.approx(3.0, abs=0.3), r.stdout   # pure Mn3+ scanned
    finally:
        codes = shell.close()
    assert codes[0] == 0, "".join(service.stdout.readlines())  # the service stops cleanly on SIGTERM


def test_facility_staff_example(tmp_path, monkeypatch):
    from test_lifecycle import write_measured_references

    monkeypatch.setenv("MNEDGE_HOME", str(tmp_path / "store"))
    refs = write_measured_references(tmp_path)
    for v, name in ((2, "MnO.csv"), (3, "Mn2O3.csv"), (4, "MnO2.csv")):
        d = np.loadtxt(refs[v])
        np.savetxt(tmp_path / name, d, delimiter=",", header="energy,intensity", comments="")
    tiny = (ROOT / "offline_training" / "configs" / "tiny.toml").read_text()
    (tmp_path / "site.toml").write_text('bank = "site_bank.npz"\n' + tiny.replace("steps = 30", "steps = 8"))
    shell = Shell(tmp_path)
    lines = readme_commands("For facility staff")
    assert [ln.split()[:2] for ln in lines] == [
        ["mnedge-train", "references"], ["mnedge-train", "train"], ["mnedge-train", "export"],
        ["mnedge-train", "evaluate"], ["mnedge", "models"], ["mnedge", "models"]]
    assert "&& mnedge models install artifacts/site-v1 && mnedge models use site-v1" in lines[3]
    results = {}
    for line in lines[:3]:
        r = shell.run(line, timeout=600)
        assert r.returncode == 0, f"{line}\n{r.stdout}\n{r.stderr}"
    # a tiny 8-step model fails the gate against the shipped model: exit 1, and nothing is installed
    r = shell.run(lines[3], timeout=600)
    assert r.returncode == 1, f"{r.stdout}\n{r.stderr}"
    assert json.loads((tmp_path / "site-v1.json").read_text())["gate"]["passed"] is False
    assert not (tmp_path / "store" / "models").exists() or not any((tmp_path / "store" / "models").iterdir())
    # the same line against a model it cannot be worse than (itself): installed and put in use
    r = shell.run(lines[3].replace("--gate default", "--gate artifacts/site-v1"), timeout=600)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    for line in lines[4:]:
        r = shell.run(line, timeout=600)
        results[" ".join(line.split()[:3])] = r
        assert r.returncode == 0, f"{line}\n{r.stdout}\n{r.stderr}"
    listing = results["mnedge models list"].stdout
    assert re.search(r"^  \* site-v1 ", listing, re.M), listing   # listed after `use`, starred as the one in use
    state = json.loads((tmp_path / "store" / "state.json").read_text())
    # rolled back to what was used before: no store model (the embedded default), nothing left to roll back to
    assert state == {"in_use": None, "history": []}, state


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
