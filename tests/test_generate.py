"""Training data: indexed, seeded batches, in this process or in workers, and HDF5 datasets."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from offline_training.generate import batch_generator, make_training_batch, stream, write_dataset

TINY = Path(__file__).resolve().parents[1] / "offline_training" / "configs" / "tiny.toml"


def _same(a, b) -> None:
    assert torch.equal(a.x, b.x)
    assert torch.equal(a.fractions, b.fractions)
    assert torch.equal(a.batch.values, b.batch.values) and torch.equal(a.batch.valid, b.batch.valid)
    assert a.batch.params.keys() == b.batch.params.keys()
    for k in a.batch.params:
        assert torch.equal(a.batch.params[k], b.batch.params[k]), k
    for k in a.targets:
        assert torch.equal(a.targets[k], b.targets[k]), k


def test_batch_i_is_drawn_from_its_own_generator(forward_model):
    batches = list(stream(forward_model, 32, seed=5, stop=3))
    assert len(batches) == 3
    for i, tb in enumerate(batches):
        _same(tb, make_training_batch(forward_model, 32, generator=batch_generator(5, i)))
    assert not torch.equal(batches[0].x, batches[1].x)
    assert not torch.equal(batches[0].x, next(stream(forward_model, 32, seed=6, stop=1)).x)


def test_a_stream_started_later_continues_the_same_batches(forward_model):
    whole = list(stream(forward_model, 16, seed=2, stop=4))
    tail = list(stream(forward_model, 16, seed=2, start=2, stop=4))
    _same(whole[2], tail[0])
    _same(whole[3], tail[1])


def test_worker_processes_give_the_same_batches_in_order(forward_model):
    sizes = [24, 24, 24, 24, 7]
    here = list(stream(forward_model, lambda i: sizes[i], seed=3, stop=5))
    workers = list(stream(forward_model, lambda i: sizes[i], seed=3, stop=5, workers=2))
    assert [len(tb.fractions) for tb in workers] == sizes
    for a, b in zip(here, workers, strict=True):
        _same(a, b)
        assert b.x.dtype == torch.float32 and b.batch.valid.dtype == torch.bool


def test_batch_generator_refuses_negative_seeds():
    with pytest.raises(ValueError, match="seed and index"):
        batch_generator(-1, 0)
    a = torch.rand(4, generator=batch_generator(0, 1))
    assert not torch.equal(a, torch.rand(4, generator=batch_generator(1, 0)))


def test_dataset_does_not_depend_on_the_number_of_workers(tmp_path, forward_model):
    paths = [write_dataset(forward_model, 150, seed=9, out=tmp_path / f"d{w}.h5", chunk=64, progress=False,
                           workers=w) for w in (0, 2)]
    with h5py.File(paths[0]) as a, h5py.File(paths[1]) as b:
        assert a["spectra"].shape == (150, a["energy"].shape[0]) and a.attrs["chunk"] == 64
        assert not a.attrs["compiled_forward"]   # the eager stages (generate --compiled records True)
        for name in ("spectra", "held", "fractions", "raw/values", "raw/valid", "params/offset", "params/psnr_db"):
            assert np.array_equal(a[name][:], b[name][:]), name
        # the second chunk is batch 1 of the stream
        second = make_training_batch(forward_model, 64, generator=batch_generator(9, 1))
        assert np.array_equal(a["spectra"][64:128], second.x[:, 0].numpy())
        assert np.allclose(a["fractions"][:].sum(1), 1, atol=1e-5)


def test_a_negative_seed_is_refused_before_a_file_is_written(tmp_path, forward_model, capsys):
    """``--seed -1`` left a file of the full size with all-zero fractions (the stream refused the seed
    only when the first chunk was drawn)."""
    from offline_training.cli import main as mnedge_train

    with pytest.raises(ValueError, match="seed"):
        write_dataset(forward_model, 10, seed=-1, out=tmp_path / "neg.h5", progress=False)
    assert mnedge_train(["generate", "--n", "10", "--seed", "-1", "--out", str(tmp_path / "cli.h5"),
                         "--config", str(TINY), "--workers", "0", "--no-progress"]) == 2
    assert "--seed" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_run_leaves_no_file_that_looks_complete(tmp_path, forward_model, monkeypatch):
    """The file is written under a temporary name and renamed when every chunk is in it: a run killed in
    its second chunk left a full-size file whose later rows were zeros; an earlier file of the same name stays."""
    import offline_training.generate as G

    out = tmp_path / "d.h5"
    write_dataset(forward_model, 20, seed=1, out=out, chunk=8, progress=False)
    earlier = out.read_bytes()
    real = G.make_training_batch
    calls = {"n": 0}

    def killed_in_chunk_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] % 2 == 0:   # the second chunk of each run
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(G, "make_training_batch", killed_in_chunk_2)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(forward_model, 20, seed=2, out=out, chunk=8, progress=False)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(forward_model, 20, seed=2, out=tmp_path / "new.h5", chunk=8, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.h5"] and out.read_bytes() == earlier


@pytest.mark.parametrize("args, named", [
    (["generate", "--n", "8", "--seed", "0", "--out", "{tmp}/d.h5", "--workers", "-1"], "--workers"),
    (["baseline", "--budget", "0", "--out", "{tmp}/b.pt"], "--budget"),
    (["references", "--measured-only", "--measured", "2:{tmp}/MnO.csv", "--out", "{tmp}/b.npz", "--scale", "0.1"],
     "--scale"),
    (["references", "--measured-only", "--measured", "2:{tmp}/MnO.csv", "--out", "{tmp}/b.npz",
      "--no-ligand-field-window", "--seed", "3"], "--seed, --no-ligand-field-window"),
    # a calculated bank's options out of range: errors of the libraries that did not name them
    (["references", "--out", "{tmp}/b.npz", "--scale", "nan"], "--scale must be a positive number"),
    (["references", "--out", "{tmp}/b.npz", "--workers", "-1"], "--workers must be a whole number >= 1"),
    (["references", "--out", "{tmp}/b.npz", "--seed", "-5"], "--seed must be from 0 to 2**64 - 1"),
    (["generate", "--n", "8", "--seed", str(2**64), "--out", "{tmp}/d.h5"], "--seed must be from 0 to 2**64 - 1"),
    (["baseline", "--budget", "8", "--seed", "-1", "--out", "{tmp}/b.pt"], "--seed must be from 0 to 2**64 - 1"),
    (["plot-forward", "--out", "{tmp}/g", "--real-dir", "{tmp}/absent"], "--real-dir"),   # named, so meant
])
def test_options_that_would_do_nothing_or_nonsense_are_refused_by_name(tmp_path, capsys, args, named):
    """--workers -1 was accepted, --budget 0 trained a one-step baseline, and --measured-only ignored the
    options of a calculated bank."""
    from offline_training.cli import main as mnedge_train

    assert mnedge_train([a.replace("{tmp}", str(tmp_path)) for a in args]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_an_existing_dataset_is_replaced_only_with_overwrite(tmp_path, capsys):
    """generate replaced an existing --out file silently (references and export ask for --overwrite)."""
    from offline_training.cli import main as mnedge_train

    out = tmp_path / "d.h5"
    out.write_bytes(b"an earlier dataset")
    args = ["generate", "--n", "8", "--seed", "0", "--out", str(out), "--config", str(TINY), "--workers", "0",
            "--no-progress"]
    assert mnedge_train(args) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"an earlier dataset"
    assert mnedge_train(args + ["--overwrite"]) == 0
    with h5py.File(out) as f:
        assert f["spectra"].shape[0] == 8
    folder_args = [a if a != str(out) else str(tmp_path) for a in args]   # a folder, even with --overwrite:
    assert mnedge_train(folder_args + ["--overwrite"]) == 2                # refused before the synthesis
    assert "is a folder" in capsys.readouterr().err
