"""Training configuration: the TOML file of ``mnedge-train train --config``, read and checked.

A config holds a ``bank`` path and the ``[network]``, ``[forward]`` and
``[train]`` tables. Every key and value is checked when the file is read,
and refused naming the file (or the command-line option) and the key, so
that a typo fails before a step is trained, not after.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from mnedge_live.network import NetworkConfig
from mnedge_live.preprocessing.constants import MODEL_GRID
from offline_training.devices import parse_device
from offline_training.forward import ForwardConfig
from offline_training.references.bank import Bank
from offline_training.values import is_number, is_whole

#: Error measures of ``[train] fraction_loss`` (:func:`~offline_training.train.compute_loss`).
FRACTION_LOSSES = ("mse", "l1")


@dataclass
class TrainSettings:
    """Optimization settings (the ``[train]`` table)."""

    steps: int = 20000
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 300
    seed: int = 0
    checkpoint_every: int = 1000
    log_every: int = 50
    #: where the network trains: "cpu", "cuda" or "cuda:N" (the batches are synthesized on the CPU
    #: and moved there); checked when the config is read, its availability when training starts
    device: str = "cpu"
    threads: int = 0            # 0: all cores
    #: processes that synthesize the next batches while this one trains (0: synthesize in this
    #: process); the batches are the same either way (:func:`offline_training.generate.stream`)
    data_workers: int = 0
    #: run the forward model's element-wise stages compiled by torch.compile (about twice the
    #: synthesis rate after seconds of compilation; the same physics to float32 rounding, but not
    #: the same bits as the eager stages, so a config reproduces its batches with the same setting)
    compile_forward: bool = False
    calibration_spectra: int = 8192
    #: synthetic spectra ``mnedge-train export`` fits the out-of-distribution mean and covariance on
    #: (five times as many set its thresholds) unless ``--ood-spectra`` says otherwise; at least twice
    #: the network's ``hidden`` features (0: no statistics, the engine's OOD rule off). A tiny test
    #: model needs far fewer than the default's 20,000 (120,000 spectra: most of an export's time)
    ood_spectra: int = 20000
    #: start from this artifact's weights ("default": the model in use; "": random initialization)
    init_from: str = ""
    #: distil from this artifact ("default": the model in use; "": no teacher): the fractions and
    #: valence it reads on each training batch become targets of their own, with weight
    #: ``w_teacher``, beside the labels. A network that should answer as an existing one does
    #: (another activation, fewer channels) learns its function, not only the labels' ambiguous
    #: posterior, in far fewer steps
    teacher: str = ""
    w_teacher: float = 0.0
    #: error measure of the fractions and the valence: "mse" (squared error, the paper's; the readout
    #: tends to the posterior mean) or "l1" (absolute error, the evaluation's own measure of
    #: fraction and valence MAE; the readout tends to the posterior median, which stays at 0
    #: for a valence the spectrum most likely lacks instead of shrinking toward the simplex centre)
    fraction_loss: str = "mse"
    #: loss weights
    w_fractions: float = 1.0
    w_valence: float = 0.5
    w_nll: float = 0.02
    w_side: float = 0.02
    #: weight of a smooth surrogate of 1 - accuracy_0.1: the mean of
    #: ``sigmoid((max |fraction error| - 0.1) / box_softness)`` (0: off)
    w_box: float = 0.0
    box_softness: float = 0.02
    #: exponential moving average of the weights (and batch-norm statistics), kept with this
    #: decay per step and saved as the final model instead of the last weights: an average over
    #: about ``1 / (1 - ema_decay)`` steps, which smooths the noise of the last updates (0: off)
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse a setting of the wrong type or out of its range, naming it (``ValueError``).

        Run on creation and again by :func:`~offline_training.train.train`, so that settings changed
        afterwards (command-line overrides, scripts) are held to the same
        rules: a count of zero would otherwise fail as a division by zero or
        an empty calibration only after every training step.
        """
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type == "bool":
                ok, kind = isinstance(v, bool), "true or false"
            elif f.type == "int":
                ok, kind = is_whole(v), "a whole number"
            elif f.type == "float":
                ok, kind = is_number(v), "a finite number"
            else:
                ok, kind = isinstance(v, str), "a string"
            if not ok:
                raise ValueError(f"[train] {f.name} must be {kind}, got {v!r}")
        at_least = {"steps": 1, "batch_size": 2, "warmup_steps": 0, "seed": 0, "checkpoint_every": 1,
                    "log_every": 1, "threads": 0, "data_workers": 0, "calibration_spectra": 1, "ood_spectra": 0,
                    "weight_decay": 0, "w_teacher": 0, "w_fractions": 0, "w_valence": 0, "w_nll": 0,
                    "w_side": 0, "w_box": 0}
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise ValueError(f"[train] {name} must be >= {low}, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"[train] lr must be positive, got {self.lr}")
        if not self.box_softness > 0:
            raise ValueError(f"[train] box_softness must be > 0, got {self.box_softness}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"[train] ema_decay must be in [0, 1), got {self.ema_decay}")
        if bool(self.teacher) != (self.w_teacher > 0):
            raise ValueError(f"[train] teacher and w_teacher > 0 go together, got teacher={self.teacher!r}, "
                             f"w_teacher={self.w_teacher}")
        if self.fraction_loss not in FRACTION_LOSSES:
            raise ValueError(f"[train] fraction_loss must be one of {', '.join(FRACTION_LOSSES)}, "
                             f"got {self.fraction_loss!r}")
        parse_device(self.device)


#: What a training config holds: the ``bank`` key and the ``[network]``, ``[forward]``, ``[train]`` tables.
CONFIG_KEYS = ("bank", "network", "forward", "train")


@dataclass
class TrainConfig:
    """Everything a training run needs: network, forward model and optimization."""

    network: NetworkConfig = field(default_factory=NetworkConfig)
    forward: ForwardConfig = field(default_factory=ForwardConfig)
    train: TrainSettings = field(default_factory=TrainSettings)
    bank: str | None = None     # path of a bank file; None: the shipped bank

    @classmethod
    def from_toml(cls, path: str | Path, train_overrides: dict | None = None) -> TrainConfig:
        """Read a TOML config; unknown tables or keys are refused by name.

        ``train_overrides`` (the command line's ``--steps``, ``--device``,
        ``--init-from``) replace ``[train]`` values before the config is
        validated, so an override is held to the same rules as the file.
        A relative ``bank`` is read from the config file's folder (and kept
        as that absolute path); an absolute one as it is.

        Raises
        ------
        ValueError
            The file is not valid TOML, or a table, key or value is refused; the message names the file.
        """
        path = Path(path)
        try:
            with open(path, "rb") as f:
                d = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"config {path} is not valid TOML: {exc}") from None
        if train_overrides:
            d["train"] = {**d.get("train", {}), **train_overrides}
        bank = d.get("bank")
        if isinstance(bank, str) and bank:
            d["bank"] = str(path.expanduser().resolve().parent / Path(bank).expanduser())
        try:
            return cls.from_dict(d)
        except ValueError as exc:
            option = next((f"--{k.replace('_', '-')}" for k in train_overrides or {} if f"[train] {k} " in str(exc)),
                          None)   # a command-line override, not the file, holds the value refused
            raise ValueError(f"{option or f'config {path}'}: {exc}") from None

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Build from a parsed TOML document."""
        unknown = sorted(set(d) - set(CONFIG_KEYS))
        if unknown:
            raise ValueError(f"unknown top-level key(s) {', '.join(unknown)}; a config holds "
                             f"{', '.join(CONFIG_KEYS)} (bank = \"FILE\" before the first [table])")
        bank = d.get("bank")
        if bank is not None and not (isinstance(bank, str) and bank):
            raise ValueError(f"bank must be the path of a references bank file, got {bank!r}")
        for table in ("network", "forward", "train"):
            if not isinstance(d.get(table, {}), dict):
                raise ValueError(f"{table} must be a [{table}] table, got {d[table]!r}")
        net_fields = {f.name for f in dataclasses.fields(NetworkConfig)}
        train_fields = {f.name for f in dataclasses.fields(TrainSettings)}
        for table, known in (("network", net_fields), ("train", train_fields)):
            bad = sorted(set(d.get(table, {})) - known)
            if bad:
                raise ValueError(f"unknown option(s) in [{table}]: {', '.join(bad)}")
        net = dict(NetworkConfig().to_dict(), **d.get("network", {}))
        network = NetworkConfig.from_dict(net)
        network.check()
        if network.input_length != len(MODEL_GRID):
            raise ValueError(f"[network] input_length must be {len(MODEL_GRID)}, the points of the model grid the "
                             f"preprocessing writes, got {network.input_length}")
        tr = TrainSettings(**d.get("train", {}))   # validated on creation (TrainSettings.validate)
        return cls(network=network, forward=ForwardConfig.from_dict(d.get("forward", {})),
                   train=tr, bank=d.get("bank"))

    def load_bank(self) -> Bank:
        """The bank the config names (the shipped one without ``bank``).

        Raises
        ------
        FileNotFoundError, ValueError
            No such file, or it is not a references bank; the message names the ``bank`` key and the path.
        """
        try:
            return Bank.load(self.bank)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"the config's bank: {exc} (a relative bank is read from the config "
                                    "file's folder)") from None
        except ValueError as exc:
            raise ValueError(f"the config's bank: {exc}") from None

    def to_dict(self) -> dict:
        """JSON/TOML-safe dict (recorded in checkpoints and the model card)."""
        return {"network": self.network.to_dict(), "forward": self.forward.to_dict(),
                "train": dataclasses.asdict(self.train), "bank": self.bank}
