"""Mn2+/Mn3+/Mn4+ compositions: the labels, and the per-atom weights of the end members."""

from __future__ import annotations

import torch

#: 3d holes per Mn atom used for the per-atom normalization (10 - n_d with the
#: charge-transfer ground-state occupancies 5.10, 4.77, 4.20 of the bank's
#: central parameters; nominal ionic values would be 5, 6, 7).
HOLES = {2: 4.90, 3: 5.23, 4: 5.80}

VALENCES = (2, 3, 4)


def sample_fractions(gen: torch.Generator, n: int, shares: tuple[float, float, float]) -> torch.Tensor:
    """Draw Mn2+/Mn3+/Mn4+ fractions: pure, binary or ternary in the given shares.

    Binary and ternary mixtures are uniform on their edge / on the simplex
    (flat Dirichlet).  Rows sum to 1.
    """
    s = torch.tensor(shares, dtype=torch.float64)
    kind = torch.multinomial(s / s.sum(), n, replacement=True, generator=gen)
    e = -torch.log(torch.rand(n, 3, generator=gen, dtype=torch.float64).clamp(min=1e-12))
    # choose which components are present
    perm = torch.argsort(torch.rand(n, 3, generator=gen), dim=1)
    rank = torch.argsort(perm, dim=1)
    present = rank <= kind[:, None]
    w = torch.where(present, e, torch.zeros_like(e))
    return w / w.sum(dim=1, keepdim=True)
