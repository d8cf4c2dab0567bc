"""The deployed network: a compact 1-D CNN reading Mn valence fractions from a prepared spectrum.

It lives in ``mnedge_live`` (not in ``offline_training``) because the PyTorch
backend of the engine rebuilds it from the artifact's weights at run time.

Input: ``(B, 2, 256)`` from :func:`mnedge_live.preprocessing.preprocess`.
Outputs (named, also in the ONNX graph):

``fractions`` (B, 3)
    Mn2+, Mn3+, Mn4+ (softmax: non-negative, sum 1).
``log_std`` (B, 4)
    Uncalibrated log one-sigma of the three fractions and of the valence;
    the artifact stores the calibration factors.
``side`` (B, 4)
    Residual energy offset after the coarse alignment (eV), instrument
    resolution FWHM (eV), t/lambda, EELS logit.
``features`` (B, hidden)
    The trunk's output that the three heads read: exported graphs carry it
    for the out-of-distribution score (:mod:`mnedge_live.engine.ood`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

OUTPUT_NAMES = ("fractions", "log_std", "side")
#: Outputs of exported graphs: the readout and the features the OOD score is computed on.
EXPORT_OUTPUT_NAMES = (*OUTPUT_NAMES, "features")
SIDE_NAMES = ("offset_residual_eV", "resolution_eV", "t_lambda", "eels_logit")
#: Activations a :class:`NetworkConfig` may name. Every default model so far is a GELU network; ReLU
#: computes the same layers for less (ONNX Runtime's CPU provider fuses it into the convolution
#: before it, while GELU runs as a kernel of its own: 19 % less network time on 2 CPU cores), but a
#: ReLU network distilled from ``mnedge-default-v12`` let two bare Gaussian lines 11 eV apart through
#: its out-of-distribution score and read them as Mn4+ (benchmarks/RESULTS.md).
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


@dataclass
class NetworkConfig:
    """Layer sizes of :class:`MnEdgeCNN`."""

    channels: tuple[int, ...] = (16, 32, 64, 64, 96)
    kernels: tuple[int, ...] = (7, 5, 5, 3, 3)
    hidden: int = 128
    input_length: int = 256
    dropout: float = 0.1
    #: one of :data:`ACTIVATIONS`; cards without the key are GELU networks
    activation: str = "gelu"

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"[network] activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")

    def check(self) -> None:
        """Refuse (``ValueError`` naming the key) layer sizes a new training run must not start with.

        Called on training configs (:class:`~offline_training.train_config.TrainConfig`), not on the cards
        of artifacts already made: a card written before these checks (channels and kernels of different
        lengths, whose network has the stages of the shorter list) still loads as it was trained.
        """

        def whole(v: object) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v > 0

        # refused here, naming the key: a mismatch was cut to the shorter list by zip (a 5-channel config
        # trained as 3 stages), a zero or a string failed as a traceback at the first step or at export
        for key in ("channels", "kernels"):
            values = getattr(self, key)
            if not values or not all(whole(v) for v in values):
                raise ValueError(f"[network] {key} must be a non-empty list of positive whole numbers, got {values!r}")
        if len(self.channels) != len(self.kernels):
            raise ValueError(f"[network] channels ({len(self.channels)}) and kernels ({len(self.kernels)}) must "
                             "have one entry per stage each")
        for key in ("hidden", "input_length"):
            if not whole(getattr(self, key)):
                raise ValueError(f"[network] {key} must be a positive whole number, got {getattr(self, key)!r}")
        if not (isinstance(self.dropout, (int, float)) and not isinstance(self.dropout, bool)
                and 0 <= self.dropout < 1):
            raise ValueError(f"[network] dropout must be a number in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict:
        """Plain dict for the model card (``activation`` only where it is not GELU, so that the cards of
        GELU networks keep the layout they were written in)."""
        d = asdict(self)
        d["channels"], d["kernels"] = list(self.channels), list(self.kernels)
        if self.activation == "gelu":
            del d["activation"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> NetworkConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["channels"], d["kernels"] = tuple(d["channels"]), tuple(d["kernels"])
        return cls(**d)

    def same_weights_as(self, other: NetworkConfig) -> bool:
        """True when ``other`` has the same layers and weight shapes (the activation may differ: it has no weights)."""
        return {**self.to_dict(), "activation": None} == {**other.to_dict(), "activation": None}


class MnEdgeCNN(nn.Module):
    """Conv-BN-activation stages with stride/pooling down to 1/16 of the input, then a dense trunk and heads.

    The flattening keeps where features are: the spectrum is aligned on L3,
    so position on the grid carries energy information (multiplet peaks,
    L3-L2 spacing, branching ratio).
    """

    def __init__(self, config: NetworkConfig | None = None):
        super().__init__()
        self.config = cfg = config or NetworkConfig()
        act = ACTIVATIONS[cfg.activation]
        layers: list[nn.Module] = []
        c_in = 2
        length = cfg.input_length
        for i, (c, k) in enumerate(zip(cfg.channels, cfg.kernels)):
            stride = 2 if i == 0 else 1
            layers += [nn.Conv1d(c_in, c, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm1d(c), act()]
            length = (length + 2 * (k // 2) - k) // stride + 1
            if 1 <= i < len(cfg.channels) - 1:
                layers.append(nn.MaxPool1d(2))
                length //= 2
            c_in = c
        self.features = nn.Sequential(*layers)
        self.trunk = nn.Sequential(nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(c_in * length, cfg.hidden), act())
        self.frac_head = nn.Linear(cfg.hidden, 3)
        self.std_head = nn.Linear(cfg.hidden, 4)
        self.side_head = nn.Linear(cfg.hidden, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(fractions, log_std, side)`` for a prepared batch ``(B, 2, L)``."""
        return self.readout(self.trunk(self.features(x)))

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(fractions, log_std, side, features)``: :meth:`forward` plus the trunk output ``(B, hidden)``."""
        h = self.trunk(self.features(x))
        return (*self.readout(h), h)

    def readout(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The heads on the trunk's output ``(B, hidden)``: ``(fractions, log_std, side)``."""
        fractions = torch.softmax(self.frac_head(h), dim=-1)
        log_std = self.std_head(h).clamp(-9.0, 3.0)
        return fractions, log_std, self.side_head(h)


def count_flops(model: nn.Module, input_length: int = 256, in_channels: int = 2) -> int:
    """FLOPs (2 per multiply-add) of one spectrum through ``model`` in eval mode."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, in_channels, input_length))
    model.train(was_training)
    return int(counter.get_total_flops())


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
