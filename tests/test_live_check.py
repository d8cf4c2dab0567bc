"""``mnedge live --check`` and the deploy/ files: every example config passes against a real 0MQ proxy."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from artifact_support import tampered
from live_support import ROOT, free_port, start_proxy, stop

from mnedge_live.cli import main
from mnedge_live.config import LiveConfig
from mnedge_live.health import check_address, check_folder, check_interfaces, parse_address
from mnedge_live.model_store import HOME_ENV, ModelStore

DEPLOY_CONFIGS = sorted((ROOT / "deploy" / "configs").glob("*.toml"))
#: The checks --check runs on each deploy config, in order (step scans make no maps).
DEPLOY_CHECKS = {"xas_beamline.toml": ["config", "model", "in_address", "out_address", "plot_dir", "epics_interfaces"],
                 "eels_microscope.toml": ["config", "model", "in_address", "out_address", "maps_dir",
                                          "epics_interfaces"]}


@pytest.fixture(scope="module")
def proxy():
    proc, pin, pout = start_proxy()
    try:
        wait_listening(pin, pout)
        yield pin, pout
    finally:
        stop(proc)


def wait_listening(*ports: int, timeout: float = 60) -> None:
    """Wait until the proxy (which imports bluesky first: slow on a busy machine) listens on every port."""
    deadline = time.monotonic() + timeout
    for port in ports:
        while not check_address("proxy", f"127.0.0.1:{port}", timeout=1).ok:
            if time.monotonic() > deadline:
                raise RuntimeError(f"bluesky-0MQ-proxy does not listen on {port}")
            time.sleep(0.2)


def here(config: Path, tmp_path: Path) -> Path:
    """A copy of a deploy config whose folders under /var/lib/mnedge (the unit's StateDirectory, made by
    systemd) lie under ``tmp_path``: --check looks at whether they can be made."""
    copy = tmp_path / config.name
    text = config.read_text()
    assert "/var/lib/mnedge/" in text
    copy.write_text(text.replace("/var/lib/mnedge/", f"{tmp_path / 'var-lib-mnedge'}/"))
    return copy


def addresses(proxy) -> list[str]:
    """Flags pointing a service at the test proxy (it subscribes to OUT, publishes to IN)."""
    pin, pout = proxy
    return ["--in", f"127.0.0.1:{pout}", "--out", f"127.0.0.1:{pin}"]


def test_deploy_configs_exist_and_load():
    names = {p.name for p in DEPLOY_CONFIGS}
    assert {"xas_beamline.toml", "eels_microscope.toml"} <= names
    modes = {p.name: LiveConfig.from_sources(p).mode for p in DEPLOY_CONFIGS}
    assert modes["xas_beamline.toml"] == "step" and modes["eels_microscope.toml"] == "spectrum"
    xas = LiveConfig.from_sources(ROOT / "deploy" / "configs" / "xas_beamline.toml")
    assert xas.epics_prefix and xas.signal_field and xas.energy_field
    assert xas.model_path is None  # deployments take the model in use in the store


@pytest.mark.parametrize("config", DEPLOY_CONFIGS, ids=lambda p: p.name)
def test_check_passes_for_each_deploy_config(config, proxy, tiny_artifact, tmp_path, capsys):
    assert main(["live", "--config", str(here(config, tmp_path)), *addresses(proxy), "--model", str(tiny_artifact),
                 "--check"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[:2] for ln in lines] == [["ok", f"{name}:"] for name in DEPLOY_CHECKS[config.name]]
    assert "tiny-test" in lines[1]
    assert not (tmp_path / "var-lib-mnedge").exists()  # looked at, not made


def test_check_takes_the_model_in_use_in_the_store(proxy, tiny_artifact, tmp_path):
    """As the systemd unit runs it: console script, no --model, MNEDGE_HOME naming the store."""
    ModelStore(tmp_path / "store").install(tiny_artifact, use=True)
    env = {**os.environ, HOME_ENV: str(tmp_path / "store")}
    cmd = [str(Path(sys.executable).parent / "mnedge"), "live", "--config",
           str(here(ROOT / "deploy" / "configs" / "xas_beamline.toml", tmp_path)), *addresses(proxy), "--check"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"tiny-test from {tmp_path / 'store' / 'models' / 'tiny-test'}" in r.stdout


def test_check_refuses_an_unknown_key_with_exit_2(tmp_path, tiny_artifact, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text((ROOT / "deploy" / "configs" / "eels_microscope.toml").read_text()
                   + 'spectrum_feild = "eels_spectrum"\n')
    assert main(["live", "--config", str(bad), "--model", str(tiny_artifact), "--check"]) == 2
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("FAIL config: spectrum_feild: unknown option")


def test_check_fails_when_nothing_listens(proxy, tiny_artifact, capsys):
    pin, _ = proxy
    dead = free_port()
    args = ["live", "--mode", "spectrum", "--in", f"127.0.0.1:{dead}", "--out", f"127.0.0.1:{pin}",
            "--model", str(tiny_artifact), "--check"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert f"FAIL in_address: nothing accepts a connection at 127.0.0.1:{dead}" in out
    assert "proxy running" in out and "ok   out_address:" in out and "ok   model:" in out


def test_check_fails_on_a_tampered_model(proxy, tiny_artifact, tmp_path, capsys):
    bad = tampered(tiny_artifact, tmp_path / "bad")
    assert main(["live", *addresses(proxy), "--model", str(bad), "--check"]) == 1
    out = capsys.readouterr().out
    assert "FAIL model: cannot load the model:" in out and "model.onnx fails its SHA-256 check" in out
    assert "ok   in_address:" in out


def test_check_without_any_model(proxy, tmp_path, monkeypatch, capsys):
    """No --model, an empty store and no embedded model (an installation without one): one clear FAIL line."""
    import mnedge_live.artifact as artifact_module
    import mnedge_live.model_store as store_module

    missing = tmp_path / "no-embedded-model"
    for module in (artifact_module, store_module):
        monkeypatch.setattr(module, "default_artifact_path", lambda: missing)
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "empty"))
    assert main(["live", *addresses(proxy), "--check"]) == 1
    assert "FAIL model: cannot load the model: no model given, none in use in the model store" in capsys.readouterr().out


def test_check_fails_for_folders_and_interfaces_the_service_could_not_use(proxy, tiny_artifact, tmp_path, capsys):
    """A plot_dir/maps_dir under a regular file (NotADirectoryError once running) and an epics_interfaces
    address the host does not have (exit 2 at start-up) passed --check."""
    afile = tmp_path / "afile"
    afile.write_text("")
    cfg = tmp_path / "live.toml"
    cfg.write_text(f'[live]\nplot_dir = "{afile}/plots"\nmaps_dir = "{afile}/maps"\nepics_prefix = "CHK:"\n'
                   'epics_interfaces = ["127.0.0.1", "192.0.2.1"]\n')
    assert main(["live", "--config", str(cfg), *addresses(proxy), "--model", str(tiny_artifact), "--check"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[:2] for ln in lines[4:]] == [["FAIL", "plot_dir:"], ["FAIL", "maps_dir:"],
                                                    ["FAIL", "epics_interfaces:"]]
    assert f"{afile} is not a folder" in lines[4] and f"{afile} is not a folder" in lines[5]
    assert "'192.0.2.1'" in lines[6] and "'127.0.0.1'" not in lines[6]
    assert all(ln.startswith("ok") for ln in lines[:4])
    # step mode writes no maps; pyepics mode binds nothing; --plot alone takes the maps too (one check)
    cfg.write_text(f'[live]\nmode = "step"\nmaps_dir = "{afile}/maps"\nepics_prefix = "CHK:"\n'
                   'epics_mode = "pyepics"\nepics_interfaces = ["192.0.2.1"]\n')
    args = ["live", "--config", str(cfg), *addresses(proxy), "--model", str(tiny_artifact), "--check"]
    assert main(args) == 1   # no IOC serves CHK: here: the PVs are checked, no interface bound
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and lines[4].startswith("FAIL epics_pvs: no IOC serves any of the 21 PVs under CHK: ")
    assert main(["live", *addresses(proxy), "--model", str(tiny_artifact), "--plot", str(tmp_path / "p"),
                 "--check"]) == 0
    assert [ln.split()[1] for ln in capsys.readouterr().out.splitlines()[4:]] == ["plot_dir:"]
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("kind, ok, detail", [
    ("epics_db", True, "21 of 21 PVs under {p} are served and writable\n"),
    ("older", True, "17 of 21 PVs under {p} are served and writable; not served, skipped with a warning each: "
                    "{p}ENERGY_OFFSET, {p}RESOLUTION, {p}REASON, {p}FLAGS; 32-bit counters, negative after 2**31 "
                    "counts: {p}PROCESSED, {p}REJECTED, {p}MISSED, {p}READOUTS, {p}FINAL_READOUTS, "
                    "{p}BINNED_READOUTS\n"),
    ("soft_ioc", False, "clients may not write {p}VALENCE, {p}VALENCE_STD"),
    ("long_valence", False, "wrong record type: {p}VALENCE (long, 1 element(s); expected a floating-point number)"),
    ("string_reason", False, "wrong record type: {p}REASON (string, 1 element(s); expected a char array of more "
                             "than 40 elements)"),
])
def test_check_connects_to_every_pv_of_a_sites_ioc(proxy, tiny_artifact, tmp_path, capsys, kind, ok, detail):
    """epics_mode = "pyepics": a real EPICS IOC loaded with deploy/epics/mnedge_readout.db passes; one made
    for the older PV list passes naming the PVs the service will skip; a read-only IOC (the service's
    own), a VALENCE record that would round and a REASON of 40 bytes fail, naming the PVs."""
    import epics
    from live_support import start_site_ioc

    prefix = f"CHK{kind.upper()}{os.getpid()}:"
    ioc = start_site_ioc(prefix, kind)
    try:
        # the IOC answers searches before the check's 2 s start (its TCP port opens first; under the load
        # of the whole suite one check saw nothing within its 2 s)
        assert epics.PV(prefix + "PROCESSED", auto_monitor=False).wait_for_connection(timeout=20)
        cfg = tmp_path / "live.toml"
        cfg.write_text(f'[live]\nmode = "step"\nepics_prefix = "{prefix}"\nepics_mode = "pyepics"\n')
        rc = main(["live", "--config", str(cfg), *addresses(proxy), "--model", str(tiny_artifact), "--check"])
    finally:
        ioc.terminate()
        ioc.wait(10)
    line = capsys.readouterr().out.splitlines()[-1] + "\n"
    assert rc == (0 if ok else 1)
    assert line.startswith(("ok   epics_pvs: " if ok else "FAIL epics_pvs: ") + detail.format(p=prefix)), line


def test_check_folder_looks_without_making_anything(tmp_path, monkeypatch):
    assert check_folder("plot_dir", str(tmp_path)).ok
    c = check_folder("plot_dir", str(tmp_path / "a" / "b"))
    assert c.ok and f"can be made (in {tmp_path})" in c.detail and not (tmp_path / "a").exists()
    monkeypatch.chdir(tmp_path)
    assert check_folder("maps_dir", "mnedge_maps").detail == f"{tmp_path / 'mnedge_maps'} can be made (in {tmp_path})"
    (tmp_path / "f").write_text("")
    c = check_folder("maps_dir", "f")
    assert not c.ok and c.line().startswith(f"FAIL maps_dir: {tmp_path / 'f'} cannot be used")


def test_check_folder_without_permission(tmp_path):
    """As the service's user would meet it; root may write anywhere, so as root the check runs in a child
    process that has become the unprivileged user ``nobody`` (it was skipped as root before)."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        c = check_folder("plot_dir", str(locked / "plots"))
        assert not c.ok and f"no permission to write in {locked}" in c.detail
        return
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp())   # pytest's own folders are private to root: the child could not reach them
    try:
        base.chmod(0o755)
        locked = base / "locked"
        locked.mkdir(mode=0o555)
        code = ("import os, sys; from mnedge_live.health import check_folder; os.setgid(65534); os.setuid(65534); "
                "c = check_folder('plot_dir', sys.argv[1]); print(c.ok); print(c.detail)")
        r = subprocess.run([sys.executable, "-c", code, str(locked / "plots")], capture_output=True, text=True,
                           timeout=60, cwd="/", env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert r.returncode == 0, r.stderr
    ok, detail = r.stdout.splitlines()[:2]
    assert ok == "False" and f"no permission to write in {locked}" in detail


def test_check_interfaces():
    assert check_interfaces(["127.0.0.1", "0.0.0.0", "localhost"]).ok
    assert check_interfaces([]).detail.startswith("127.0.0.1 can be bound")   # the soft IOC's default
    c = check_interfaces(["127.0.0.1", "192.0.2.1", "not an address", "::1"])
    assert not c.ok and "'127.0.0.1'" not in c.detail
    assert all(f"'{a}'" in c.detail for a in ("192.0.2.1", "not an address", "::1"))


def test_parse_address_and_bad_addresses():
    assert parse_address("tcp://localhost:5567") == ("localhost", 5567)
    assert parse_address("[::1]:5568") == ("::1", 5568)
    for bad in ("localhost", "host:port", "host:70000"):
        with pytest.raises(ValueError):
            parse_address(bad)
    c = check_address("out_address", "127.0.0.1:http")
    assert not c.ok and "not a number" in c.line()
    c = check_address("in_address", "tcp://bad..host:5555")    # the resolver cannot encode it (UnicodeError)
    assert not c.ok and "not a valid host name" in c.line()


def test_build_tensorrt_refuses_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    ck = tmp_path / "final.pt"
    ck.write_bytes(b"not used")
    r = subprocess.run(["bash", str(ROOT / "deploy" / "build_tensorrt.sh"), str(ck), str(tmp_path / "out")],
                       env={**os.environ, "MNEDGE_BIN": str(Path(sys.executable).parent)},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no CUDA GPU" in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "deploy").rglob("*.sh")))
def test_deploy_scripts_parse(script):
    path = next((ROOT / "deploy").rglob(script))
    r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_build_tensorrt_exports_and_installs_on_a_gpu_host(tmp_path):
    """The whole script on a host that has a GPU (its commands stand-ins that say what they were asked):
    an apostrophe in its last message made bash exit 2 after the export, and --install never ran."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for name, body in (("mnedge-train", 'echo "mnedge-train $*"'), ("mnedge", 'echo "mnedge $*"'),
                       ("python", 'case "$*" in *get_device_name*) echo "Stand-in GPU";; esac')):
        (fake / name).write_text(f"#!/bin/sh\n{body}\nexit 0\n")
        (fake / name).chmod(0o755)
    ck = tmp_path / "final.pt"
    ck.write_bytes(b"not used")
    env = {k: v for k, v in os.environ.items() if k != "MNEDGE_HOME"}
    r = subprocess.run(["bash", str(ROOT / "deploy" / "build_tensorrt.sh"), str(ck), str(tmp_path / "out"),
                        "--model-id", "site-v2", "--install"],
                       env={**env, "MNEDGE_BIN": str(fake)}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "building TensorRT engines on: Stand-in GPU"
    assert lines[1] == f"mnedge-train export {ck} --out {tmp_path / 'out'} --tensorrt --model-id site-v2"
    assert lines[2] == f"mnedge models install {tmp_path / 'out'} --force"
    assert lines[3].startswith("installed in the default store")


def test_systemd_unit_runs_the_check_and_the_service_with_the_env_file():
    unit = (ROOT / "deploy" / "systemd" / "mnedge-live.service").read_text()
    env = (ROOT / "deploy" / "systemd" / "mnedge-live.env").read_text()
    assert "EnvironmentFile=/etc/mnedge/mnedge-live.env" in unit
    start_pre = next(ln for ln in unit.splitlines() if ln.startswith("ExecStartPre="))
    assert start_pre.endswith("--check")
    used = {w[2:-1] for ln in unit.splitlines() if ln.startswith("Exec") for w in ln.split() if w.startswith("${")}
    defined = {ln.split("=", 1)[0] for ln in env.splitlines() if ln and not ln.startswith("#")}
    assert used and used <= defined and "MNEDGE_HOME" in defined
    # every option comes from the config file (flags would silently override its proxy addresses), and
    # a bad config (exit 2) is not restarted every 10 s
    assert used == {"MNEDGE_CONFIG"} and "RestartPreventExitStatus=2" in unit
