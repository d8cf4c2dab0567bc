"""Training configuration: every [train] value checked and refused by name, the TOML file read, the bank found."""

from __future__ import annotations

from pathlib import Path

import pytest

from offline_training.train_config import CONFIG_KEYS, TrainConfig, TrainSettings

TINY = Path(__file__).resolve().parents[1] / "offline_training" / "configs" / "tiny.toml"


@pytest.mark.parametrize("setting, value, message", [
    ("steps", True, "[train] steps must be a whole number, got True"),
    ("batch_size", 1, "[train] batch_size must be >= 2, got 1"),
    ("lr", 0.0, "[train] lr must be positive, got 0.0"),
    ("lr", "0.1", "[train] lr must be a finite number, got '0.1'"),
    ("compile_forward", 1, "[train] compile_forward must be true or false, got 1"),
    ("init_from", None, "[train] init_from must be a string, got None"),
    ("ema_decay", 1.0, "[train] ema_decay must be in [0, 1), got 1.0"),
    ("box_softness", -0.1, "[train] box_softness must be > 0, got -0.1"),
    ("fraction_loss", "huber", "[train] fraction_loss must be one of mse, l1, got 'huber'"),
    ("w_teacher", 0.5, "[train] teacher and w_teacher > 0 go together, got teacher='', w_teacher=0.5"),
    ("device", "cuda:x", "[train] device must be 'cpu', 'cuda' or 'cuda:N', got 'cuda:x'"),
])
def test_a_setting_of_the_wrong_type_or_out_of_range_is_refused_naming_it(setting, value, message):
    with pytest.raises(ValueError) as exc:
        TrainSettings(**{setting: value})
    assert str(exc.value) == message
    s = TrainSettings()
    setattr(s, setting, value)   # changed after creation: validate() holds it to the same rules
    with pytest.raises(ValueError) as exc:
        s.validate()
    assert str(exc.value) == message


def test_a_config_dict_with_an_unknown_key_or_option_or_a_bad_bank_is_refused_naming_it():
    with pytest.raises(ValueError, match="unknown top-level key\\(s\\) bnak; a config holds "
                                         + ", ".join(CONFIG_KEYS)):
        TrainConfig.from_dict({"bnak": "x.npz"})
    with pytest.raises(ValueError, match="unknown option\\(s\\) in \\[network\\]: depth"):
        TrainConfig.from_dict({"network": {"depth": 3}})
    with pytest.raises(ValueError, match="unknown option\\(s\\) in \\[train\\]: stepz"):
        TrainConfig.from_dict({"train": {"stepz": 3}})
    with pytest.raises(ValueError, match="bank must be the path of a references bank file, got ''"):
        TrainConfig.from_dict({"bank": ""})


def test_a_refused_override_names_the_command_line_option_and_a_refused_file_value_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"^--steps: \[train\] steps must be >= 1, got 0$"):
        TrainConfig.from_toml(TINY, {"steps": 0})
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nsteps = 0\n")
    with pytest.raises(ValueError, match=rf"^config {bad}: \[train\] steps must be >= 1, got 0$"):
        TrainConfig.from_toml(bad, {"device": "cpu"})


def test_the_dict_a_checkpoint_records_reads_back_to_the_same_config():
    cfg = TrainConfig.from_toml(TINY, {"steps": 3})
    again = TrainConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.train.steps == 3 and again.network.channels == cfg.network.channels


def test_the_config_classes_are_still_importable_from_the_trainer():
    """Scripts written before the split import them from offline_training.train."""
    import offline_training.train as trainer

    assert trainer.TrainConfig is TrainConfig and trainer.TrainSettings is TrainSettings


@pytest.mark.parametrize("text, field", [
    ("[train]\nstepz = 3\n", "stepz"),
    ('[train]\nfraction_loss = "huber"\n', "fraction_loss"),
    ("[train]\nw_box = 0.1\nbox_softness = 0.0\n", "box_softness"),
    ('[network]\nactivation = "tanh"\n', "activation"),
    ('[train]\nteacher = "default"\n', "w_teacher"),   # a teacher needs its weight, and the reverse
    ("[train]\nw_teacher = 1.0\n", "teacher"),
    ("[forward]\noffset = [5.0, -5.0]\n", "offset"),
    # the [network] table: a mismatch was cut to the shorter list (a 5-channel config trained as 3 stages),
    # zeros and strings failed as tracebacks at the first step or at export
    ("[network]\nchannels = [8, 8, 16, 16, 16]\nkernels = [7, 5, 5]\n", "channels \\(5\\) and kernels \\(3\\)"),
    ("[network]\nhidden = 0\n", "hidden must be a positive whole number"),
    ("[network]\nchannels = [8, 0, 16, 16, 16]\n", "channels must be a non-empty list of positive whole"),
    ('[network]\nchannels = "8, 8"\n', "channels must be a non-empty list"),
    ("[network]\nkernels = []\nchannels = []\n", "channels must be a non-empty list"),
    ("[network]\ndropout = 1.5\n", "dropout must be a number in \\[0, 1\\)"),
    ("[network]\ninput_length = 128\n", "input_length must be 256"),
    ("train = 5\n", "train must be a \\[train\\] table"),
])
def test_bad_config_is_refused_by_name(tmp_path, text, field):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ValueError, match=field):
        TrainConfig.from_toml(p)


def test_a_relative_bank_is_read_from_the_config_files_folder(tmp_path, monkeypatch, bank):
    """``bank = "site_bank.npz"`` was read from the working directory, not beside the config."""
    site = tmp_path / "site"
    site.mkdir()
    bank.save(site / "site_bank.npz")
    (site / "site.toml").write_text('bank = "site_bank.npz"\n' + TINY.read_text())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = TrainConfig.from_toml(Path("..") / "site" / "site.toml")
    assert cfg.bank == str(site / "site_bank.npz") and cfg.load_bank().sha256() == bank.sha256()
    (site / "abs.toml").write_text(f'bank = "{site / "site_bank.npz"}"\n')   # an absolute bank as it is
    assert TrainConfig.from_toml(site / "abs.toml").bank == str(site / "site_bank.npz")
