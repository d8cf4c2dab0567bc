"""The deployed network's configuration: activations, card layout, and what fine-tuning may change."""

from __future__ import annotations

import pytest
import torch

from mnedge_live.network import MnEdgeCNN, NetworkConfig, count_flops, count_parameters


def test_the_activation_is_built_as_configured_and_has_no_weights():
    gelu, relu = MnEdgeCNN(NetworkConfig()), MnEdgeCNN(NetworkConfig(activation="relu"))
    kinds = {type(m) for m in relu.modules()}
    assert torch.nn.ReLU in kinds and torch.nn.GELU not in kinds
    assert torch.nn.GELU in {type(m) for m in gelu.modules()}
    # the same layers: weights move between the two, and the FLOP count (multiply-adds) is the same
    relu.load_state_dict(gelu.state_dict())
    assert count_parameters(relu) == count_parameters(gelu) and count_flops(relu) == count_flops(gelu)


def test_card_layout_names_the_activation_only_where_it_is_not_gelu():
    """Cards of the GELU networks (every model up to mnedge-default-v12) read back unchanged."""
    old_card = NetworkConfig().to_dict()
    assert "activation" not in old_card and NetworkConfig.from_dict(old_card).activation == "gelu"
    new = NetworkConfig(activation="relu")
    assert new.to_dict()["activation"] == "relu" and NetworkConfig.from_dict(new.to_dict()) == new
    assert new.same_weights_as(NetworkConfig()) and not new.same_weights_as(NetworkConfig(hidden=64))


def test_unknown_activation_is_refused_by_name():
    with pytest.raises(ValueError, match="activation"):
        NetworkConfig(activation="swish")


def test_a_relu_network_exports_to_onnx_within_tolerance(tmp_path):
    """ONNX Runtime runs the exported ReLU network (as its 2-D view) as PyTorch does."""
    from offline_training.export import ONNX_TOLERANCE, export_checked_onnx

    torch.manual_seed(0)
    model = MnEdgeCNN(NetworkConfig(activation="relu")).eval()
    assert export_checked_onnx(model, tmp_path / "relu.onnx") <= ONNX_TOLERANCE


def test_a_card_written_before_the_layer_checks_still_builds_its_network():
    """Training configs are held to the checks (tests/test_train_config.py); a card of channels and kernels
    of different lengths, made before them, has the stages of the shorter list and must still load."""
    old = NetworkConfig(channels=(8, 8, 16, 16, 16), kernels=(7, 5, 5), hidden=32)
    convs = [m for m in MnEdgeCNN(old).modules() if isinstance(m, torch.nn.Conv1d)]
    assert len(convs) == 3
    with pytest.raises(ValueError, match="channels \\(5\\) and kernels \\(3\\)"):
        old.check()
