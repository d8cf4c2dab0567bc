"""Structured pruning: a trained network's weights cut down to fewer channels, to fine-tune or distil from.

A network with fewer channels per convolution stage costs fewer FLOPs; started
from the channels of a trained one that carry the most (those whose batch-norm
scale is largest in magnitude: a channel scaled toward zero contributes little
to what follows), it needs far fewer steps to answer as the trained one does
than one started from random weights (Liu et al., ICCV 2017, "Learning
efficient convolutional networks through network slimming").
"""

from __future__ import annotations

import dataclasses

import torch

from mnedge_live.network import MnEdgeCNN, NetworkConfig


def prunable(source: NetworkConfig, target: NetworkConfig) -> bool:
    """True when ``target`` is ``source`` with the same or fewer channels in each stage (and any activation)."""
    return (len(source.channels) == len(target.channels)
            and source.same_weights_as(dataclasses.replace(target, channels=source.channels))
            and all(0 < t <= s for s, t in zip(source.channels, target.channels)))


def kept_channels(model: MnEdgeCNN, channels: tuple[int, ...]) -> list[torch.Tensor]:
    """Per stage, the indices (ascending) of the ``channels[i]`` output channels with the largest |batch-norm scale|."""
    norms = [m for m in model.features if isinstance(m, torch.nn.BatchNorm1d)]
    return [torch.sort(torch.topk(bn.weight.detach().abs(), k).indices).values for bn, k in zip(norms, channels)]


def prune(model: MnEdgeCNN, channels: tuple[int, ...]) -> MnEdgeCNN:
    """A network with ``channels`` per stage holding ``model``'s weights of the channels kept (:func:`kept_channels`).

    Each convolution keeps its kept output channels and the kept output
    channels of the stage before as inputs; each batch norm its kept
    channels (scale, shift, running statistics); the trunk's dense layer the
    inputs that the last stage's kept channels feed (flattened channel by
    channel). Everything after the trunk's dense layer is copied. Keeping
    every channel returns an equal network.

    Raises
    ------
    ValueError
        When ``channels`` has another number of stages or more channels in one.
    """
    cfg = model.config
    new_cfg = dataclasses.replace(cfg, channels=tuple(channels))
    if not prunable(cfg, new_cfg):
        raise ValueError(f"cannot prune channels {list(cfg.channels)} to {list(channels)}: one stage each, "
                         "no more channels than before")
    keep = kept_channels(model, new_cfg.channels)
    out = MnEdgeCNN(new_cfg)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv1d)]
    norms = [m for m in model.features if isinstance(m, torch.nn.BatchNorm1d)]
    new_convs = [m for m in out.features if isinstance(m, torch.nn.Conv1d)]
    new_norms = [m for m in out.features if isinstance(m, torch.nn.BatchNorm1d)]
    with torch.no_grad():
        previous = torch.arange(convs[0].in_channels)
        for conv, bn, new_conv, new_bn, k in zip(convs, norms, new_convs, new_norms, keep):
            new_conv.weight.copy_(conv.weight[k][:, previous])
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(new_bn, name).copy_(getattr(bn, name)[k])
            new_bn.num_batches_tracked.copy_(bn.num_batches_tracked)
            previous = k
        dense, new_dense = model.trunk[2], out.trunk[2]
        length = dense.in_features // cfg.channels[-1]
        columns = (previous[:, None] * length + torch.arange(length)).reshape(-1)
        new_dense.weight.copy_(dense.weight[:, columns])
        new_dense.bias.copy_(dense.bias)
        for head in ("frac_head", "std_head", "side_head"):
            getattr(out, head).load_state_dict(getattr(model, head).state_dict())
    return out
