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


def test_the_l3_lifetime_grows_across_the_edge_and_every_line_keeps_its_area():
    """A weak line 3 eV below the L3 maximum keeps the onset width, one 3 eV above gets the main-line width."""
    from offline_training.references.bank import lorentzian_lifetime

    e = np.round(np.arange(620.0, 680.0, 0.01), 4)

    def stick(pos, h):
        y = np.zeros_like(e)
        y[np.argmin(abs(e - pos))] = h
        return y

    def broadened(y):
        return lorentzian_lifetime(e, y, split=646.0, gamma_l3=0.8, gamma_l2=0.5, gamma_done=0.0,
                                   gamma_l3_onset=0.1, ramp_ev=3.0)

    main = stick(640.0, 1.0)                 # the L3 maximum: the ramp is centred on it
    base = broadened(main)

    def hwhm(pos):                           # the operation is linear: a probe line's own broadening
        line = broadened(main + stick(pos, 0.1)) - base
        above = e[line >= line.max() / 2]
        return (above.max() - above.min()) / 2

    assert hwhm(637.0) == pytest.approx(0.1, abs=0.02)    # below the ramp: the onset width
    assert hwhm(643.0) == pytest.approx(0.8, abs=0.05)    # above it: the main line's
    assert 0.3 < hwhm(640.5) < 0.6                         # on the ramp
    assert hwhm(651.0) == pytest.approx(0.5, abs=0.05)    # L2
    y = main + stick(637.0, 0.3) + stick(643.0, 0.4) + stick(651.0, 0.5)
    assert broadened(y).sum() == pytest.approx(y.sum(), rel=1e-9)
    # without an onset width (the shipped bank) one width holds across L3
    flat = lorentzian_lifetime(e, main + stick(637.0, 0.1), split=646.0, gamma_l3=0.8, gamma_l2=0.5,
                               gamma_done=0.0) - lorentzian_lifetime(e, main, split=646.0, gamma_l3=0.8,
                                                                     gamma_l2=0.5, gamma_done=0.0)
    above = e[flat >= flat.max() / 2]
    assert (above.max() - above.min()) / 2 == pytest.approx(0.8, abs=0.05)


def test_two_sz_counts_up_minus_down_spin_orbitals():
    """Even bits are spin up, odd bits spin down (edrixs' 2 * orbital + spin); bits beyond the shell are ignored."""
    from offline_training.references.multiplet import two_sz

    states = np.array([0b0, 0b1, 0b10, 0b101, 0b0111, (1 << 20) | 0b1, 0b01010101010101010101])
    np.testing.assert_array_equal(two_sz(states, 20), [0, 1, -1, 2, 1, 1, 10])
    assert two_sz(np.array([0b1111]), 2)[0] == 0   # only the first two spin-orbitals counted
