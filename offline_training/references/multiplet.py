"""Charge-transfer and crystal-field multiplet calculations of Mn L2,3 spectra with edrixs.

One job: turn one set of physical parameters into one calculated absorption
spectrum.  The bank builder (:mod:`offline_training.references.bank`) draws the
parameters and calls :func:`calculate_spectrum` in parallel worker processes.

The model is the single-impurity Anderson model with one ligand bath of ten
spin-orbitals (the 3d^n + 3d^(n+1)L + 3d^(n+2)L^2 configuration-interaction
model of de Groot and Kotani, *Core Level Spectroscopy of Solids*, CRC 2008,
ch. 5-6), built with :func:`edrixs.models.model_siam` and solved with the SciPy
backend of :mod:`edrixs.solvers`.  Setting the hybridization to zero reduces it
to the crystal-field atomic multiplet model.

Parameter ranges and their sources are documented in
:mod:`offline_training.references.parameters`.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

#: Number of 3d electrons of each nominal valence.
D_COUNT = {2: 5, 3: 4, 4: 3}

#: Orbital indices of the eg and t2g real d orbitals in edrixs' real basis
#: (dz2, dzx, dzy, dx2-y2, dxy); spin-orbital index = 2 * orbital + spin.
_EG = (0, 3)
_T2G = (1, 2, 4)

_BOLTZMANN_EV = 8.617333e-5

#: Initial states kept per d count: the spin (and, for d4, orbital) multiplicity
#: of the ground term; higher states are > 25 meV away and barely populated.
N_STATES = {5: 6, 4: 6, 3: 4}

#: LOBPCG tolerance of the ground-state solve (eV scale: 1e-7 is far below any broadening).
ED_TOLERANCE = 1e-7

#: LOBPCG settings.  edrixs' SciPy backend defaults to a random start block,
#: 200 iterations and silenced non-convergence warnings; measured on a Mn4+
#: (d3, 77,520 states) calculation, two such runs of the same parameters gave
#: spectra 42 % apart (of the L3 maximum), one of them from unconverged ground
#: states.  A fixed seed makes a calculation reproducible, two spare vectors in
#: the block speed up convergence at the edge of the degenerate ground
#: multiplet, and :data:`ED_MAX_RESIDUAL` refuses what still did not converge.
ED_SEED = 0
ED_MAXITER = 2000
ED_SPARE_VECTORS = 2

#: Spare block vectors of each try: a ground multiplet whose last state sits close to the next
#: one can stall LOBPCG with two spare vectors (measured: one of the 60 calculations of the bank,
#: residual 2.8e-4 eV after 786 iterations); a wider block separates them.
ED_SPARE_VECTORS_TRIES = (ED_SPARE_VECTORS, ED_SPARE_VECTORS + 6)

#: Largest accepted eigenpair residual ``|H v - E v|`` (eV) of a ground state.
ED_MAX_RESIDUAL = 1e-4

#: Lanczos steps of the XAS continued fraction; 150 resolves features far below
#: the 0.1 eV core-hole width used in the calculation.
KRYLOV_DIMENSION = 150

#: Core-hole HWHM used in the calculation itself (eV); the L3 and L2 lifetimes
#: are added afterwards (see :func:`offline_training.references.bank.lorentzian_lifetime`).
CALC_GAMMA = 0.1


@dataclasses.dataclass(frozen=True)
class MultipletParameters:
    """Physical parameters of one calculated end-member spectrum (energies in eV).

    Attributes
    ----------
    valence : int
        Nominal Mn valence (2, 3 or 4); sets the 3d count d^(7 - valence).
    ten_dq : float
        Cubic crystal field 10Dq of the Mn site; negative for a tetrahedral site.
    tetragonal_eg, tetragonal_t2g : float
        Jahn-Teller / tetragonal splittings of the eg (dz2 below dx2-y2) and
        t2g (dxy above dzx, dzy) levels.
    slater_scale : float
        Reduction of the Hartree-Fock d-d Slater integrals (covalency).
    core_valence_scale : float
        Reduction of the 2p-3d Slater integrals F2_pd, G1_pd, G3_pd.
    udd, upd_ratio : float
        Hubbard U_dd and the ratio U_pd / U_dd.
    delta : float
        Charge-transfer energy Delta; negative values give a negative
        charge-transfer ground state (Mn4+).
    v_eg, vt2g_ratio : float
        Metal-ligand hybridization V(eg) and the ratio V(t2g) / V(eg); ``v_eg = 0``
        gives the atomic multiplet limit.
    ligand_ten_dq : float
        Crystal field of the ligand (bath) orbitals.
    gamma_l3, gamma_l2 : float
        Core-hole Lorentzian HWHM at L3 and at L2 (L2 is wider through
        Coster-Kronig decay).
    temperature : float
        Temperature in kelvin for the Boltzmann weights of low-lying states.
    """

    valence: int
    ten_dq: float
    tetragonal_eg: float = 0.0
    tetragonal_t2g: float = 0.0
    slater_scale: float = 0.8
    core_valence_scale: float = 0.8
    udd: float = 5.0
    upd_ratio: float = 1.25
    delta: float = 4.0
    v_eg: float = 2.0
    vt2g_ratio: float = 0.55
    ligand_ten_dq: float = 1.0
    gamma_l3: float = 0.25
    gamma_l2: float = 0.5
    temperature: float = 300.0


def _real_cf_diagonal(ten_dq: float, tet_eg: float, tet_t2g: float) -> np.ndarray:
    """Return the 10 spin-orbital crystal-field energies in edrixs' real basis."""
    orb = np.zeros(5)
    orb[list(_EG)] = 0.6 * ten_dq
    orb[list(_T2G)] = -0.4 * ten_dq
    # Tetragonal elongation along z: dz2 lowered, dx2-y2 raised; dxy raised.
    orb[0] -= tet_eg / 2
    orb[3] += tet_eg / 2
    orb[4] += 2 * tet_t2g / 3
    orb[1] -= tet_t2g / 3
    orb[2] -= tet_t2g / 3
    return np.repeat(orb, 2)


def _siam_problem(params: MultipletParameters, valence_soc: bool = True) -> tuple[list, float]:
    """Build the Anderson-impurity problem of one Mn site with :func:`edrixs.models.model_siam`.

    Returns the model's problem (its arguments to :func:`edrixs.solvers.get_ops`) and its energy
    shift. ``valence_soc=False`` drops the 3d spin-orbit coupling of the initial state, so that the
    total spin S_z is conserved and the cubic levels keep their exact degeneracies
    (:func:`optical_ten_dq`).
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import edrixs  # imported lazily: only the bank builder needs it
    from edrixs.models import model_siam

    nd = D_COUNT[params.valence]
    info = edrixs.get_atom_data("Mn", "3d", nd, edge="L23")
    sl_i = dict(info["slater_i"])
    sl_n = dict(info["slater_n"])
    s, c = params.slater_scale, params.core_valence_scale
    f2_i, f4_i = sl_i["F2_11"] * s, sl_i["F4_11"] * s
    f2_n, f4_n = sl_n["F2_11"] * s, sl_n["F4_11"] * s
    f2_dp, g1_dp, g3_dp = sl_n["F2_12"] * c, sl_n["G1_12"] * c, sl_n["G3_12"] * c
    udd = params.udd
    upd = params.upd_ratio * udd
    f0_i = udd + edrixs.get_F0("d", f2_i, f4_i)
    f0_n = udd + edrixs.get_F0("d", f2_n, f4_n)
    f0_dp = upd + edrixs.get_F0("dp", g1_dp, g3_dp)
    slater = ([f0_i, f2_i, f4_i], [f0_n, f2_n, f4_n, f0_dp, f2_dp, g1_dp, g3_dp])

    e_d, e_l = edrixs.CT_imp_bath(udd, params.delta, nd)
    e_dc, e_lc, e_p = edrixs.CT_imp_bath_core_hole(udd, upd, params.delta, nd)

    tmat = edrixs.tmat_c2r("d", True)
    cf = np.diag(_real_cf_diagonal(params.ten_dq, params.tetragonal_eg, params.tetragonal_t2g))
    soc_real_i = edrixs.cb_op(edrixs.atom_hsoc("d", info["v_soc_i"][0]), tmat) if valence_soc else 0.0
    soc_real_n = edrixs.cb_op(edrixs.atom_hsoc("d", info["v_soc_n"][0]), tmat)
    imp_mat = cf + soc_real_i + e_d * np.eye(10)
    imp_mat_n = cf + soc_real_n + e_dc * np.eye(10)
    lig = _real_cf_diagonal(params.ligand_ten_dq, 0.0, 0.0)
    bath_level = (e_l + lig)[None, :]
    bath_level_n = (e_lc + lig)[None, :]
    v_orb = np.zeros(5)
    v_orb[list(_EG)] = params.v_eg
    v_orb[list(_T2G)] = params.v_eg * params.vt2g_ratio
    hyb = np.repeat(v_orb, 2)[None, :]

    model = model_siam(
        ("d", "p"), 1, v_noccu=nd + 10, c_level=-e_p, c_soc=info["c_soc"],
        trans_c2n=tmat, imp_mat=imp_mat, imp_mat_n=imp_mat_n,
        bath_level=bath_level, bath_level_n=bath_level_n, hyb=hyb,
        slater=slater, sparse_U=True,
    )
    *problem, shift = model
    return problem, shift


def _operators(problem: list):
    """Sparse initial and intermediate Hamiltonians and the transition operators of a problem."""
    from edrixs.solvers import get_ops

    return get_ops(*problem, backend="scipy")


def calculate_spectrum(
    params: MultipletParameters,
    omega: np.ndarray,
    n_states: int | None = None,
) -> tuple[np.ndarray, float]:
    """Calculate the isotropic L2,3 absorption of one Mn site.

    Parameters
    ----------
    params : MultipletParameters
        The physics of the site.
    omega : numpy.ndarray
        Incident-energy grid, relative to the model's own zero (eV).
    n_states : int, optional
        Low-lying initial states kept for the thermal average; default covers
        the ground-state multiplet of each d count.

    Returns
    -------
    intensity : numpy.ndarray
        Isotropic absorption on ``omega`` (arbitrary but consistent units).
    d_occupancy : float
        3d occupation of the ground state (covalency measure; used for the
        hole-count normalization).
    """
    from edrixs.solvers import ed, xas

    problem, shift = _siam_problem(params)
    hmat_i, hmat_n, trans_ops = _operators(problem)
    nd = D_COUNT[params.valence]
    if n_states is None:
        n_states = N_STATES[nd]
    for spare in ED_SPARE_VECTORS_TRIES:
        eval_i, evec_i = ed(hmat_i, num_evals=n_states, shift=shift, backend="scipy",
                            backend_kws={"tol": ED_TOLERANCE, "seed": ED_SEED, "maxiter": ED_MAXITER,
                                         "blocksize": n_states + spare})
        try:
            check_ground_states(hmat_i, eval_i, evec_i)
            break
        except RuntimeError:
            if spare == ED_SPARE_VECTORS_TRIES[-1]:
                raise
    spec = xas(eval_i, evec_i, hmat_n, trans_ops, omega, gamma_c=CALC_GAMMA,
               pol_type=[("isotropic", 0.0)], temperature=params.temperature,
               backend="scipy", backend_kws={"nkryl": KRYLOV_DIMENSION})
    intensity = np.asarray(spec)[:, 0].real
    occupancy = _d_occupancy(problem[2], eval_i, evec_i, params.temperature)
    return intensity, occupancy


#: Eigenvalues asked of ARPACK in :func:`optical_ten_dq`, one try after another: with few, it can
#: return two of a threefold degenerate level (measured: 2 of the 24 Mn4+ calculations at 6 or 8;
#: at 24 every one shows the full 4T2g level, and the solve takes under a second).
OPTICAL_EIGENVALUES_TRIES = (24, 48)

#: Spin-orbitals of the initial state's valence shell: ten impurity 3d, then ten ligand (bath)
#: spin-orbitals, each at index 2 * orbital + spin in edrixs' real basis.
VALENCE_SPIN_ORBITALS = 20


def two_sz(states: np.ndarray, n_spin_orbitals: int = VALENCE_SPIN_ORBITALS) -> np.ndarray:
    """Twice the total spin projection 2 S_z of Fock states given as occupation bit masks.

    Parameters
    ----------
    states : numpy.ndarray
        Integer bit masks; bit ``k`` set means spin-orbital ``k`` is occupied, even ``k`` spin
        up and odd ``k`` spin down (edrixs' ordering, ``2 * orbital + spin``).
    n_spin_orbitals : int
        Spin-orbitals counted (the valence shell; core orbitals above them are ignored).

    Returns
    -------
    numpy.ndarray
        ``n_up - n_down`` per state (int).
    """
    bits = (np.asarray(states, dtype=np.int64)[:, None] >> np.arange(n_spin_orbitals)) & 1
    sign = np.where(np.arange(n_spin_orbitals) % 2 == 0, 1, -1)
    return bits @ sign


def optical_ten_dq(params: MultipletParameters, tol: float = 1e-9) -> float:
    """The 4A2g -> 4T2g excitation energy (eV) of a d3 (Mn4+) site: its optical 10Dq.

    In a cubic d3 ion this spin-allowed d-d excitation equals the full ligand-field splitting,
    ionic crystal field and covalency (hybridization) together, which is what optical absorption
    and luminescence measure (the 4T2 band of Mn4+ phosphors).  The charge-transfer model's
    parameters (10Dq, Delta, V) only fix it jointly, so a member is checked on this measurable
    quantity instead of on any one parameter
    (:data:`offline_training.references.parameters.OPTICAL_TEN_DQ_EV`).

    The initial-state Hamiltonian is built without the small 3d spin-orbit coupling, so the total
    S_z is conserved; in its S_z = 3/2 block the quartets are the only low-lying states: the
    4A2g ground state, then the threefold 4T2g level (checked: a calculation without it raises
    RuntimeError).

    Parameters
    ----------
    params : MultipletParameters
        A Mn4+ site (``valence == 4``).
    tol : float
        ARPACK tolerance of the eigenvalues.

    Returns
    -------
    float
        E(4T2g) - E(4A2g) in eV.
    """
    import scipy.sparse.linalg as sla
    from edrixs.fock_basis import build_fock_basis

    if params.valence != 4:
        raise ValueError(f"optical_ten_dq is defined for d3 (Mn4+) sites, got valence {params.valence}")
    problem, _ = _siam_problem(params, valence_soc=False)
    hmat_i = _operators(problem)[0].tocsr()
    basis = build_fock_basis(problem[2])
    states = np.fromiter((basis.decode(j) for j in range(len(problem[2]))), dtype=np.int64)
    block = np.flatnonzero(two_sz(states) == 3)
    h = hmat_i[block][:, block]
    for k in OPTICAL_EIGENVALUES_TRIES:
        energies = np.sort(sla.eigsh(h, k=k, which="SA", tol=tol, ncv=max(4 * k, 40))[0])
        if np.allclose(energies[1:4], energies[1], atol=1e-5) and energies[4] > energies[3] + 1e-4:
            return float(energies[1] - energies[0])
    raise RuntimeError(f"the lowest quartet levels {energies[:6]} do not show a threefold 4T2g level")


def check_ground_states(hmat, evals: np.ndarray, evecs: np.ndarray, limit: float = ED_MAX_RESIDUAL) -> None:
    """Refuse unconverged eigenpairs: raise RuntimeError when ``max |H v - E v|`` exceeds ``limit`` (eV).

    A spectrum calculated from unconverged ground states looks plausible and is
    wrong; the bank builder must fail loudly instead of shipping it.
    """
    vecs = np.asarray(evecs)
    residual = np.linalg.norm(hmat @ vecs - vecs * np.asarray(evals)[None, :], axis=0)
    if not np.all(residual <= limit):
        raise RuntimeError(f"ground states not converged: residuals {np.array2string(residual, precision=2)} eV "
                           f"exceed {limit} eV")


def _d_occupancy(basis_spec, eval_i, evec_i, temperature: float) -> float:
    """Thermal average of the number of electrons in the ten impurity 3d spin-orbitals."""
    from edrixs.fock_basis import build_fock_basis
    from edrixs.solvers import build_op

    basis = build_fock_basis(basis_spec)
    ntot = basis_spec.norbs
    nmat = np.zeros((ntot, ntot), dtype=complex)
    nmat[range(10), range(10)] = 1.0
    op = build_op(nmat, None, basis, backend="scipy")
    w = boltzmann_weights(eval_i, temperature)
    vecs = np.asarray(evec_i)
    return float(sum(wk * np.vdot(vecs[:, k], op @ vecs[:, k]).real for k, wk in enumerate(w)))


def boltzmann_weights(energies: np.ndarray, temperature: float) -> np.ndarray:
    """Normalized Boltzmann weights of the given state energies (eV) at ``temperature`` K."""
    e = np.asarray(energies, float) - np.min(energies)
    w = np.exp(-e / max(_BOLTZMANN_EV * temperature, 1e-12))
    return w / w.sum()


__all__ = ["MultipletParameters", "calculate_spectrum", "optical_ten_dq", "two_sz", "check_ground_states", "boltzmann_weights", "D_COUNT"]
