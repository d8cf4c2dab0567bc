"""The model store and ``mnedge models``: install (verified copy), use, rollback, and default resolution."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from artifact_support import copy_as, tampered

from mnedge_live.artifact import ArtifactError, default_artifact_path, load_artifact
from mnedge_live.cli import main
from mnedge_live.model_store import HOME_ENV, ModelStore, StoreError, resolve_model_path

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def two_models(tiny_artifact, tmp_path_factory):
    """Two valid artifacts with ids site-a and site-b."""
    root = tmp_path_factory.mktemp("models")
    return copy_as(tiny_artifact, root / "a", "site-a"), copy_as(tiny_artifact, root / "b", "site-b")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty store named by MNEDGE_HOME (never the user's own)."""
    d = tmp_path / "home"
    monkeypatch.setenv(HOME_ENV, str(d))
    return d


def test_install_copies_a_verified_artifact_under_its_id(two_models, home):
    a, _ = two_models
    store = ModelStore()
    assert store.root == home and store.installed() == [] and store.state().in_use is None
    art = store.install(a)
    assert art.path == home / "models" / "site-a" and art.model_id == "site-a"
    assert store.installed() == ["site-a"]
    assert load_artifact(art.path).card["files"] == load_artifact(a).card["files"]
    assert store.state().in_use is None  # installing does not switch
    assert not [p for p in (home / "models").iterdir() if p.name.startswith(".")]  # no temporaries left


def test_duplicate_id_is_refused_unless_forced(two_models, tiny_artifact, home, tmp_path):
    a, _ = two_models
    store = ModelStore()
    store.install(a)
    newer = copy_as(tiny_artifact, tmp_path / "a2", "site-a", created="2099-01-01T00:00:00+00:00")
    with pytest.raises(StoreError, match="already installed.*--force"):
        store.install(newer)
    assert load_artifact(store.model_path("site-a")).card["created"] != "2099-01-01T00:00:00+00:00"
    store.install(newer, force=True)
    assert load_artifact(store.model_path("site-a")).card["created"] == "2099-01-01T00:00:00+00:00"
    assert store.installed() == ["site-a"]


def test_tampered_artifact_is_refused_and_nothing_is_installed(two_models, home, tmp_path):
    bad = tampered(two_models[0], tmp_path / "bad")
    store = ModelStore()
    with pytest.raises(ArtifactError, match="SHA-256"):
        store.install(bad)
    assert store.installed() == [] and not store.root.exists()  # refused before the store is touched


@pytest.mark.parametrize("drop", ["model_id", "calibration", "input", "network"])
def test_a_signed_card_without_what_loading_reads_is_refused_at_install(two_models, home, tmp_path, drop, capsys):
    """A re-signed card without its calibration installed, was used and listed as fine, and every later load
    failed; without its model_id, install died with a KeyError traceback (exit 1)."""
    import json

    from mnedge_live.artifact import CARD_NAME, write_card

    bad = tmp_path / "bad"
    shutil.copytree(two_models[0], bad)
    card = json.loads((bad / CARD_NAME).read_text())
    del card[drop]
    card.pop("files")
    write_card(bad, card)
    with pytest.raises(ArtifactError, match=f"not a usable model card: missing or malformed {drop}"):
        load_artifact(bad)
    assert main(["models", "install", str(bad)]) == 2
    assert "not a usable model card" in capsys.readouterr().err
    assert ModelStore().installed() == []


def test_rollback_refuses_a_previous_model_that_fails_verification(two_models, home):
    """Rolling back switched to the previous model without checking it; a tampered one would have been used."""
    a, b = two_models
    store = ModelStore()
    store.install(a, use=True)
    store.install(b, use=True)
    onnx = store.model_path("site-a") / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="SHA-256"):
        store.rollback()
    assert store.state().in_use == "site-b" and store.state().history[-1] == "site-a"


def test_install_copies_only_the_card_and_the_files_it_lists(two_models, home, tmp_path):
    """The whole source folder was copied, symlinks followed: a training run linked beside the model went
    into the store, and a link loop failed the install with an error blaming the store."""
    src = tmp_path / "src"
    shutil.copytree(two_models[0], src)
    (src / "notes.txt").write_text("not listed")
    (src / "runs").symlink_to(tmp_path)            # a loop: tmp_path holds src
    art = ModelStore().install(src)
    listed = set(load_artifact(src).card["files"]) | {"model_card.json"}
    assert {p.relative_to(art.path).as_posix() for p in art.path.rglob("*") if p.is_file()} == listed
    assert not (art.path / "runs").exists()


def test_use_and_rollback_walk_the_history(two_models, home):
    a, b = two_models
    store = ModelStore()
    store.install(a)
    store.install(b)
    assert store.use("site-a").in_use == "site-a"
    state = store.use("site-b")
    assert (state.in_use, state.history) == ("site-b", [None, "site-a"])  # None: nothing was in use
    assert store.use("site-b").history == [None, "site-a"]  # using the model in use changes nothing
    state = store.rollback()
    assert (state.in_use, state.history) == ("site-a", [None])
    assert store.rollback().in_use is None  # back to the embedded default
    with pytest.raises(StoreError, match="no previously used model"):
        store.rollback()
    with pytest.raises(StoreError, match="not installed.*site-a, site-b"):
        store.use("site-c")
    assert json.loads((home / "state.json").read_text()) == {"in_use": None, "history": []}


def test_default_resolution_prefers_the_store_model_in_use(two_models, home):
    from mnedge_live.engine import load_engine

    a, b = two_models
    assert resolve_model_path(None) == default_artifact_path()  # no store yet
    store = ModelStore()
    store.install(a)
    assert resolve_model_path(None) == default_artifact_path()  # installed but none in use
    store.install(b, use=True)
    assert resolve_model_path(None) == home / "models" / "site-b"
    assert resolve_model_path(a) == Path(a)  # an explicit path always wins
    assert load_engine(backend="onnxruntime", warmup=False).model_id == "site-b"
    store.use("site-a")
    assert load_artifact().model_id == "site-a"


def test_model_in_use_that_went_missing_or_was_tampered_is_an_error_not_a_fallback(two_models, home):
    import shutil

    store = ModelStore()
    store.install(two_models[0], use=True)
    data = bytearray((home / "models" / "site-a" / "weights.pt").read_bytes())
    data[-1] ^= 0x01
    (home / "models" / "site-a" / "weights.pt").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="weights.pt fails its SHA-256"):
        load_artifact()
    shutil.rmtree(home / "models" / "site-a")
    with pytest.raises(ArtifactError, match="site-a.*not installed"):
        load_artifact()


def _build(artifact: Path, root: Path, tag: str) -> Path:
    """A valid artifact with id site-a whose card (``created``) and files (``build.txt``) say ``tag``."""
    src = shutil.copytree(artifact, root / f"src-{tag}")
    (src / "build.txt").write_text(tag)
    return copy_as(src, root / tag, "site-a", created=tag)


def test_a_reader_never_sees_a_reinstall_half_done(tiny_artifact, home, tmp_path):
    """Another process reinstalls two builds of the model in use (same id) again and again while a
    thread loads the model in use: every load is one whole, verified build, its card with its files."""
    one, two = _build(tiny_artifact, tmp_path, "build-1"), _build(tiny_artifact, tmp_path, "build-2")
    ModelStore().install(one, use=True)
    code = ("from mnedge_live.model_store import ModelStore\n"
            f"s = ModelStore({str(home)!r})\n"
            f"for i in range(40):\n    s.install({str(one)!r} if i % 2 else {str(two)!r}, force=True)\n")
    stop = threading.Event()
    errors, mixed, loads = Counter(), Counter(), Counter()

    def reader():
        while not stop.is_set():
            try:
                art = load_artifact()
            except Exception as exc:  # what a model load in the service would fail with
                errors[f"{type(exc).__name__}: {exc}"[:160]] += 1
                continue
            try:
                built = art.read("build.txt").decode()  # the bytes the runtimes get
            except Exception as exc:
                mixed[f"{type(exc).__name__}: {exc}"[:160]] += 1
                continue
            loads[(art.card["created"], built)] += 1

    t = threading.Thread(target=reader)
    t.start()
    try:
        r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        stop.set()
        t.join(60)
    assert r.returncode == 0, r.stderr
    assert not errors, f"loads failed during the reinstalls: {dict(errors)}"
    assert not mixed, dict(mixed)
    assert set(loads) <= {("build-1", "build-1"), ("build-2", "build-2")}, dict(loads)  # never a card of one build with another's files
    assert sum(loads.values()) >= 20
    assert load_artifact().card["created"] == "build-1"  # the last install (i = 39) is in use
    assert not [p for p in (home / "models").iterdir() if p.name.startswith(".")]  # no temporaries left


def test_broken_state_record_is_reported(home):
    home.mkdir()
    (home / "state.json").write_text("{half")
    with pytest.raises(StoreError, match="not a valid record"):
        ModelStore().state()
    with pytest.raises(ArtifactError, match="not a valid record"):
        load_artifact()


@pytest.mark.parametrize("record", [{"in_use": "../../outside"}, {"in_use": "site-a/../../../outside"},
                                    {"in_use": ".hidden"}, {"in_use": None, "history": ["../../outside"]}])
def test_a_state_record_naming_no_model_id_is_refused_not_followed_outside_the_store(
        two_models, home, tmp_path, capsys, record):
    shutil.copytree(two_models[0], tmp_path / "outside")  # a valid artifact the record points at
    ModelStore().install(two_models[1])
    (home / "state.json").write_text(json.dumps(record))
    with pytest.raises(StoreError, match="state.json names .* which is not a model id.*fix or remove"):
        ModelStore().state()
    with pytest.raises(ArtifactError, match="not a model id"):
        load_artifact()
    with pytest.raises(StoreError, match="not a model id"):
        ModelStore().model_path("../outside")
    assert main(["models", "list"]) == 1
    assert "not a model id" in capsys.readouterr().err
    assert main(["models", "use", "site-b"]) == 1  # nothing is built on a record that cannot be trusted
    assert json.loads((home / "state.json").read_text()) == record


def test_list_shows_a_model_in_use_that_went_missing_or_fails_verification_and_exits_2(two_models, tmp_path, capsys):
    root = tmp_path / "s"
    store = ["--store", str(root)]
    assert main(["models", *store, "install", str(two_models[0]), "--use"]) == 0
    assert main(["models", *store, "install", str(two_models[1])]) == 0
    capsys.readouterr()
    shutil.rmtree(root / "models" / "site-a")
    assert main(["models", *store, "list"]) == 2
    out, err = capsys.readouterr()
    assert "* site-a" in out and "MISSING" in out and "  site-b" in out
    assert "WARNING: the model in use, site-a, is not installed" in err and "mnedge models use ID" in err
    assert main(["models", *store, "list", "--json"]) == 2
    info = json.loads(capsys.readouterr().out)
    assert [(m["model_id"], m["in_use"], m["status"].split(":")[0]) for m in info["models"]] == [
        ("site-a", True, "MISSING"), ("site-b", False, "ok")]
    assert "site-a" in info["problem"] and info["in_use"] == "site-a"
    assert main(["models", *store, "use", "site-b"]) == 0
    weights = root / "models" / "site-b" / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:-1])
    capsys.readouterr()
    assert main(["models", *store, "list"]) == 2
    out, err = capsys.readouterr()
    assert "* site-b" in out and "WARNING: the model in use, site-b, fails verification" in err
    assert main(["models", *store, "rollback"]) == 1  # site-a, used before, is gone too
    assert main(["models", *store, "install", "--force", str(two_models[1])]) == 0
    assert main(["models", *store, "list"]) == 0
    assert "WARNING" not in capsys.readouterr().err


def test_state_record_survives_a_kill_during_switching(two_models, tmp_path):
    """SIGKILL a process that switches models in a loop: the record on disk is always whole."""
    store_dir = tmp_path / "store"
    store = ModelStore(store_dir)
    store.install(two_models[0])
    store.install(two_models[1])
    store.use("site-a")
    # the record is replaced, never rewritten in place: a reader that opened it before a change still
    # reads the whole record as it was (a kill in the middle of an in-place write would leave half of one)
    record = store_dir / "state.json"
    with open(record) as before:
        old_text = record.read_text()
        store.use("site-b")
        assert before.read() == old_text and json.loads(old_text)["in_use"] == "site-a"
    assert json.loads(record.read_text())["in_use"] == "site-b"
    assert not list(store_dir.glob(".state.json.*"))   # no temporary file left beside it
    # readable by the service user whoever changed the store (a temporary file is made 0600: an
    # administrator's `mnedge models use` as root left a record the service could not read)
    assert record.stat().st_mode & 0o777 == 0o644
    code = ("import sys; from mnedge_live.model_store import ModelStore\n"
            f"s = ModelStore({str(store_dir)!r}); print('go', flush=True)\n"
            "while True:\n    s.use('site-a'); s.use('site-b')\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "go"
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    state = store.state()
    assert state.in_use in ("site-a", "site-b") and len(state.history) > 2
    assert store.rollback().in_use in ("site-a", "site-b")


# -- the command --------------------------------------------------------------------------------------

def test_models_command_install_list_use_rollback(two_models, tmp_path, capsys):
    a, b = two_models
    store = ["--store", str(tmp_path / "s")]
    assert main(["models", *store, "install", str(a)]) == 0
    assert "installed site-a" in capsys.readouterr().out
    assert main(["models", *store, "install", str(b), "--use"]) == 0
    assert "(now in use)" in capsys.readouterr().out
    assert main(["models", *store, "install", str(b)]) == 1
    assert "already installed" in capsys.readouterr().err
    assert main(["models", *store, "use", "site-a"]) == 0
    assert main(["models", *store, "list", "--json"]) == 0
    info = json.loads(capsys.readouterr().out.split("in use: site-a\n", 1)[1])
    assert info["in_use"] == "site-a" and info["history"] == [None, "site-b"] and info["default"] == "store"
    assert [(m["model_id"], m["in_use"], m["status"]) for m in info["models"]] == [
        ("site-a", True, "ok"), ("site-b", False, "ok")]
    assert info["embedded"]["path"] == str(default_artifact_path())
    assert main(["models", *store, "list"]) == 0
    table = capsys.readouterr().out
    assert "* site-a" in table and "  site-b" in table and "embedded default:" in table
    assert "rollback goes to: site-b" in table
    assert main(["models", *store, "rollback"]) == 0
    assert "in use: site-b" in capsys.readouterr().out
    assert main(["models", *store, "rollback"]) == 0
    assert "in use: none (the embedded default model)" in capsys.readouterr().out
    assert main(["models", *store, "rollback"]) == 1
    assert "no previously used model" in capsys.readouterr().err
    assert main(["models", *store, "use", "nope"]) == 1


def test_models_command_refuses_a_tampered_artifact_with_exit_2(two_models, tmp_path, capsys):
    bad = tampered(two_models[0], tmp_path / "bad", "weights.pt")
    assert main(["models", "--store", str(tmp_path / "s"), "install", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "fails verification" in err and "weights.pt fails its SHA-256" in err
    assert ModelStore(tmp_path / "s").installed() == []


def test_console_script_uses_mnedge_home(two_models, tmp_path):
    env = {**os.environ, HOME_ENV: str(tmp_path / "h")}
    exe = str(Path(sys.executable).parent / "mnedge")
    r = subprocess.run([exe, "models", "install", str(two_models[1]), "--use"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([exe, "models", "list", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout)["store"] == str(tmp_path / "h")
    assert json.loads(r.stdout)["in_use"] == "site-b"


@pytest.mark.parametrize("action", [["list"], ["list", "--json"], ["install", "ARTIFACT"], ["use", "site-a"],
                                    ["rollback"]])
def test_a_store_path_that_is_a_file_is_refused_with_exit_2_not_read_as_an_empty_store(two_models, tmp_path,
                                                                                      capsys, action):
    site = tmp_path / "site.toml"
    site.write_text('bank = "site_bank.npz"\n')
    args = [str(two_models[0]) if a == "ARTIFACT" else a for a in action]
    assert main(["models", "--store", str(site), *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1
    assert f"model store {site} is a file, not a folder" in captured.err
    assert site.read_text() == 'bank = "site_bank.npz"\n'


def test_mnedge_home_naming_a_file_makes_predict_and_evaluate_refuse_not_use_the_embedded_model(
        tmp_path, monkeypatch, capsys, bank):
    import numpy as np

    from offline_training.cli import main as mnedge_train

    spectrum = tmp_path / "MnO.txt"
    np.savetxt(spectrum, np.column_stack([bank.energy, bank.spectra[0]]))
    site = tmp_path / "site.toml"
    site.write_text("[train]\n")
    monkeypatch.setenv(HOME_ENV, str(site))
    with pytest.raises(ArtifactError, match="is a file, not a folder"):
        load_artifact()
    assert main(["predict", str(spectrum), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and f"model store {site} is a file" in captured.err
    assert mnedge_train(["evaluate", "--n", "16"]) == 2
    assert f"model store {site} is a file" in capsys.readouterr().err


def test_an_install_killed_between_its_renames_is_undone_by_the_next_change(two_models, home, caplog):
    """``install --force`` moves the old folder aside, then the new one in: killed in between, the model
    in use was missing until someone rebuilt the folder by hand."""
    store = ModelStore()
    store.install(two_models[0], use=True)
    store.install(two_models[1])
    models = home / "models"
    aside = models / ".site-a.x1y2.replaced"          # the state such a kill leaves
    aside.mkdir()
    os.replace(models / "site-a", aside / "site-a")
    with pytest.raises(ArtifactError, match="not installed"):
        load_artifact()
    with caplog.at_level("WARNING", logger="mnedge_live.model_store"):
        store.use("site-b")                           # any change of the store puts it back first
    assert "restored model site-a" in caplog.text
    assert store.installed() == ["site-a", "site-b"] and not aside.exists()
    assert load_artifact(models / "site-a").model_id == "site-a"
    store.rollback()
    assert load_artifact().model_id == "site-a"
    # killed after the new folder arrived: the old copy is removed, the new one kept
    aside.mkdir()
    shutil.copytree(models / "site-a", aside / "site-a")
    (models / "site-a" / "marker.txt").write_text("new")
    store.use("site-b")
    assert not aside.exists() and (models / "site-a" / "marker.txt").read_text() == "new"


def test_a_forced_reinstall_leaves_no_folder_aside(two_models, home):
    store = ModelStore()
    store.install(two_models[0])
    store.install(two_models[0], force=True)
    assert sorted(p.name for p in (home / "models").iterdir()) == ["site-a"]


def test_the_partial_copy_of_a_killed_install_is_removed_by_the_next_change_and_a_running_one_is_kept(
        two_models, tmp_path, caplog):
    """An install killed while it copied left ``models/.<id>.*.installing`` behind for good; the next change
    of the store must remove it, but never the copy of an install still running in another process."""
    store_dir = tmp_path / "store"
    store = ModelStore(store_dir)
    store.install(two_models[0])
    # another process making a copy, stopped in the middle of it (as a slow copy of a large model is)
    code = ("import sys, time; from pathlib import Path; from mnedge_live.model_store import ModelStore\n"
            f"s = ModelStore({str(store_dir)!r})\n"
            "with s._copy_folder('site-b') as tmp:\n"
            "    (tmp / 'model.onnx').write_bytes(b'half')\n"
            "    print(tmp, flush=True)\n"
            "    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        copying = Path(proc.stdout.readline().strip())
        assert copying.name.startswith(".site-b.") and copying.name.endswith(".installing")
        store.install(two_models[1])                  # a change of the store while the other copy runs
        assert copying.is_dir() and (copying / "model.onnx").read_bytes() == b"half"
        os.kill(proc.pid, signal.SIGKILL)             # killed mid-copy: nothing will ever remove it
        proc.wait(10)
        assert copying.is_dir()
        with caplog.at_level("WARNING", logger="mnedge_live.model_store"):
            store.use("site-a")
        assert not copying.exists()
        assert f"removed {copying.name}, the partial copy of an install that was interrupted" in caplog.text
        assert sorted(p.name for p in (store_dir / "models").iterdir()) == ["site-a", "site-b"]
        assert load_artifact(store_dir / "models" / "site-b").model_id == "site-b"
    finally:
        proc.kill()
        proc.wait(10)
