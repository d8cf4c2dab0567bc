"""Checkpoint bookkeeping: which changes a resume accepts, which folders a run may be written to, metrics
cut back to the checkpoint's step, and the dropout generators saved and put back."""

from __future__ import annotations

import json

import pytest
import torch

from offline_training.checkpoints import (
    RESUMABLE_CHANGES,
    RUN_FILES,
    check_out_dir,
    check_resume,
    config_differences,
    dropout_rng_state,
    keep_metrics_up_to,
    restore_dropout_rng,
)
from offline_training.train_config import TrainConfig

SHA = "1" * 64


def _checkpoint(config: TrainConfig, bank_sha256: str | None = SHA) -> dict:
    """What check_resume reads of a checkpoint.pt written with ``config``."""
    return {"config": json.dumps(config.to_dict()), **({"bank_sha256": bank_sha256} if bank_sha256 else {})}


def test_config_differences_name_each_dotted_key_with_both_values():
    saved = {"train": {"lr": 0.1, "steps": 5}, "forward": {"offset": (-15.0, 15.0)}, "bank": None}
    current = {"train": {"lr": 0.2, "steps": 5}, "forward": {"offset": [-15.0, 15.0]}, "extra": 1}
    assert config_differences(saved, current) == [
        "bank (None in the checkpoint, '(absent)' now)", "extra ('(absent)' in the checkpoint, 1 now)",
        "train.lr (0.1 in the checkpoint, 0.2 now)"]   # a tuple and its list are the same (JSON)
    assert config_differences(saved, saved) == []


def test_resume_accepts_the_same_config_and_the_changes_that_only_decide_how_the_run_executes(tmp_path):
    saved = TrainConfig()
    check_resume(_checkpoint(saved), TrainConfig(), SHA, tmp_path / "checkpoint.pt")
    changed = TrainConfig(bank=str(tmp_path / "moved.npz"))
    changed.train.steps, changed.train.device, changed.train.threads = 50, "cuda", 2
    changed.train.data_workers, changed.train.log_every, changed.train.checkpoint_every = 3, 7, 9
    differ = config_differences(saved.to_dict(), changed.to_dict())
    assert sorted(d.split(" ", 1)[0] for d in differ) == sorted(RESUMABLE_CHANGES)   # every one of them changed
    check_resume(_checkpoint(saved), changed, SHA, tmp_path / "checkpoint.pt")


def test_a_checkpoint_written_before_physics_2_resumes_with_its_config_file_and_not_with_physics_2(tmp_path):
    """A checkpoint's config without ``forward.physics`` was written by physics 1, as its TOML file (without the
    key) still reads: resuming it was refused for a difference in a key it never had."""
    from offline_training.train_config import TrainConfig as TC

    old = TC.from_dict({"forward": {"offset": [-15.0, 15.0]}})        # a config file of before: physics 1
    written = json.loads(json.dumps(old.to_dict()))
    del written["forward"]["physics"]                                  # as the checkpoint holds it
    ck = {"config": json.dumps(written), "bank_sha256": SHA}
    check_resume(ck, old, SHA, tmp_path / "checkpoint.pt")
    now = TC.from_dict({"forward": {"offset": [-15.0, 15.0], "physics": 2}})
    with pytest.raises(ValueError, match=r"forward\.physics \(1 in the checkpoint, 2 now\)"):
        check_resume(ck, now, SHA, tmp_path / "checkpoint.pt")


def test_resume_refuses_another_config_naming_every_difference(tmp_path):
    other = TrainConfig()
    other.train.lr, other.train.steps = 0.05, 9   # steps may change, lr may not
    other.forward.gauss_fwhm = (0.05, 2.5)
    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(ValueError) as exc:
        check_resume(_checkpoint(TrainConfig()), other, SHA, ckpt)
    msg = str(exc.value)
    assert msg.startswith(f"--resume: {ckpt} was written with another config; differing: forward.gauss_fwhm ")
    assert "; train.lr (0.002 in the checkpoint, 0.05 now) (only train.steps, " in msg
    assert "train.steps (" not in msg and msg.endswith("use the checkpoint's config or another --out)")


def test_resume_refuses_another_bank_and_warns_when_the_checkpoint_kept_no_checksum(tmp_path, caplog):
    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(ValueError, match=r"--resume: bank \(shipped\) has SHA-256 000000000000\.\.\., .* was "
                                         r"trained on 111111111111\.\.\.: use the checkpoint's bank"):
        check_resume(_checkpoint(TrainConfig()), TrainConfig(), "0" * 64, ckpt)
    with caplog.at_level("WARNING", logger="offline_training.checkpoints"):
        check_resume(_checkpoint(TrainConfig(), bank_sha256=None), TrainConfig(), "0" * 64, ckpt)
    assert "records no bank checksum" in caplog.text and str(ckpt) in caplog.text


@pytest.mark.parametrize("saved, now", [(2, 1), (1, 2), (2, 3)])
def test_resume_refuses_another_number_of_training_processes(tmp_path, saved, now):
    """A process more found no dropout state of its own (an IndexError in every extra rank), a process less
    went on quietly as another run (each process draws its own part of the stream)."""
    ckpt = tmp_path / "checkpoint.pt"
    ck = {**_checkpoint(TrainConfig()), "torch_rng": [torch.get_rng_state()] * saved}
    with pytest.raises(ValueError) as exc:
        check_resume(ck, TrainConfig(), SHA, ckpt, world=now)
    assert str(exc.value).startswith(f"--resume: {ckpt} was written by {saved} training process(es), this run has "
                                     f"{now}: resume with the same number (torchrun --nproc_per_node {saved}")
    check_resume(ck, TrainConfig(), SHA, ckpt, world=saved)   # the same number: accepted


@pytest.mark.parametrize("held", RUN_FILES)
def test_a_folder_holding_a_run_is_refused_unless_resumed_or_overwritten(tmp_path, held):
    (tmp_path / held).write_bytes(b"")
    with pytest.raises(FileExistsError, match=f"--out {tmp_path} holds a training run \\({held}\\)"):
        check_out_dir(tmp_path, resume=False, overwrite=False)
    check_out_dir(tmp_path, resume=True, overwrite=False)
    check_out_dir(tmp_path, resume=False, overwrite=True)


def test_a_new_or_unrelated_folder_is_accepted_and_resume_with_overwrite_is_refused(tmp_path):
    check_out_dir(tmp_path / "new", resume=False, overwrite=False)
    (tmp_path / "notes.txt").write_text("not a run")
    check_out_dir(tmp_path, resume=False, overwrite=False)
    with pytest.raises(ValueError, match="give one of them"):
        check_out_dir(tmp_path / "new", resume=True, overwrite=True)


def test_metrics_after_the_checkpoints_step_and_a_torn_line_are_dropped(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("step,loss\n1,0.5\n2,0.4\n3,0.3\nx,0.2\n\n4,0.")
    keep_metrics_up_to(path, 2)
    assert path.read_text().splitlines() == ["step,loss", "1,0.5", "2,0.4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_a_cuda_run_saves_and_restores_the_devices_dropout_generator(monkeypatch, caplog):
    """No GPU here: torch.cuda's generator calls stand in (the one mock: what cannot exist here)."""
    saved_cuda = torch.tensor([7, 8, 9], dtype=torch.uint8)
    put: list = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: saved_cuda.clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: put.append((state, device)))
    cuda = torch.device("cuda", 0)
    state = dropout_rng_state(cuda)
    assert torch.equal(state["cuda"], saved_cuda) and torch.equal(state["cpu"], torch.get_rng_state())
    assert set(dropout_rng_state(torch.device("cpu"))) == {"cpu"}
    ck = {"torch_rng": [state["cpu"]], "cuda_rng": [state["cuda"]]}
    restore_dropout_rng(ck, 0, cuda)
    assert len(put) == 1 and torch.equal(put[0][0], saved_cuda) and put[0][1] == cuda
    with caplog.at_level("WARNING", logger="offline_training.checkpoints"):
        restore_dropout_rng({"torch_rng": [state["cpu"]]}, 0, cuda)   # written on the CPU, resumed on CUDA
    assert len(put) == 1 and "fresh CUDA generator" in caplog.text
