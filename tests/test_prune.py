"""Structured pruning of a trained network to fewer channels per stage."""

from __future__ import annotations

import pytest
import torch

from mnedge_live.network import MnEdgeCNN, NetworkConfig
from offline_training.prune import kept_channels, prunable, prune


def _trained_like(seed: int = 0) -> MnEdgeCNN:
    """A small network with random weights and batch-norm statistics (as a trained one has)."""
    torch.manual_seed(seed)
    model = MnEdgeCNN(NetworkConfig(channels=(4, 6, 8, 8, 6), hidden=16))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.weight.uniform_(-1, 1)
                m.bias.normal_()
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
    return model.eval()


def test_keeping_every_channel_gives_the_same_network():
    model = _trained_like()
    same = prune(model, model.config.channels).eval()
    x = torch.randn(5, 2, 256)
    for a, b in zip(model.forward_with_features(x), same.forward_with_features(x)):
        assert torch.allclose(a, b, atol=1e-6)


def test_dropped_channels_are_those_with_the_smallest_scale_and_the_rest_compute_as_before():
    """Zeroing the dropped channels' scale and shift in the original gives the pruned network's outputs."""
    model = _trained_like(1)
    channels = (3, 4, 5, 8, 4)
    pruned = prune(model, channels).eval()
    keep = kept_channels(model, channels)
    masked = _trained_like(1)
    with torch.no_grad():
        norms = [m for m in masked.features if isinstance(m, torch.nn.BatchNorm1d)]
        for bn, k in zip(norms, keep):
            drop = torch.ones(bn.num_features, dtype=torch.bool)
            drop[k] = False
            if drop.any():
                assert bn.weight[drop].abs().max() <= bn.weight[k].abs().min()     # the smallest |scale| go
            bn.weight[drop], bn.bias[drop] = 0.0, 0.0   # GELU(0) = 0: the channel feeds nothing on
    x = torch.randn(5, 2, 256)
    for a, b in zip(masked.eval().forward_with_features(x), pruned.forward_with_features(x)):
        assert torch.allclose(a, b, atol=1e-5)
    assert pruned.config.channels == channels


def test_more_channels_or_other_layers_are_refused():
    model = _trained_like()
    with pytest.raises(ValueError, match="cannot prune"):
        prune(model, (4, 6, 9, 8, 6))
    assert not prunable(model.config, NetworkConfig(channels=(4, 6, 8, 8), kernels=(7, 5, 5, 3), hidden=16))
    assert not prunable(model.config, NetworkConfig(channels=(4, 6, 8, 8, 6), hidden=8))
    assert prunable(model.config, NetworkConfig(channels=(2, 6, 8, 8, 6), hidden=16, activation="relu"))
