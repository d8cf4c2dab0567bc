"""The multiplet calculation's guard against unconverged ground states (pure numpy: no edrixs needed)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from offline_training.references.multiplet import boltzmann_weights, check_ground_states


def _hamiltonian(n: int = 60, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, n))
    return sp.csr_matrix((a + a.T) / 2)


def test_converged_eigenpairs_pass():
    h = _hamiltonian()
    evals, evecs = np.linalg.eigh(h.toarray())
    check_ground_states(h, evals[:4], evecs[:, :4])


def test_unconverged_eigenpairs_are_refused():
    """A ground state mixed with an excited one (what a stopped LOBPCG returns) must not reach the bank."""
    h = _hamiltonian()
    evals, evecs = np.linalg.eigh(h.toarray())
    mixed = evecs[:, :4].copy()
    mixed[:, 0] = np.cos(0.05) * evecs[:, 0] + np.sin(0.05) * evecs[:, 10]
    with pytest.raises(RuntimeError, match="not converged"):
        check_ground_states(h, evals[:4], mixed)


def test_boltzmann_weights_follow_temperature():
    w_cold = boltzmann_weights(np.array([0.0, 0.01]), 10.0)
    w_hot = boltzmann_weights(np.array([0.0, 0.01]), 300.0)
    assert w_cold.sum() == pytest.approx(1.0) and w_hot.sum() == pytest.approx(1.0)
    assert w_cold[1] < 1e-4 < w_hot[1] < w_hot[0]
    assert w_hot[1] / w_hot[0] == pytest.approx(np.exp(-0.01 / (8.617333e-5 * 300.0)), rel=1e-6)
