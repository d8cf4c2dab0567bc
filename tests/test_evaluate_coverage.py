"""``evaluate.coverage``: overall shares, and the valence's share per calibration group and per kind of composition."""

from __future__ import annotations

import numpy as np

from offline_training.evaluate import coverage


def test_coverage_is_reported_per_group_of_the_reading_and_per_kind_of_truth():
    true = np.array([[1.0, 0, 0], [1.0, 0, 0], [0.5, 0.5, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5], [0, 0, 1.0]])
    frac = np.array([[1.0, 0, 0], [0.995, 0.005, 0], [0.6, 0.4, 0], [0.3, 0.7, 0], [0.2, 0.3, 0.5], [0, 0, 1.0]])
    val = frac @ np.array([2.0, 3.0, 4.0])
    err = np.abs(val - true @ np.array([2.0, 3.0, 4.0]))          # 0, 0.005, 0.1, 0.2, 0, 0
    vstd = np.array([0.01, 0.001, 0.05, 0.3, 0.01, 0.01])         # inside: yes, no, no, yes, yes, yes
    pred = {"ok": np.array([True] * 6), "fractions": frac, "fractions_std": np.full((6, 3), 0.5),
            "valence": val, "valence_std": vstd}
    c = coverage(pred, true)
    assert np.allclose(err, [0, 0.005, 0.1, 0.2, 0, 0])
    assert c["valence_1sigma"] == 4 / 6 and c["fractions_1sigma"] == 1.0
    assert c["valence_1sigma_by_kind"] == {"pure": 2 / 3, "binary": 0.5, "ternary": 1.0}
    # groups by the largest fraction read: 0.6 / 0.7 / 0.5 -> [0, 0.8); 0.995 and 1.0 -> [0.99, 1]
    assert c["valence_1sigma_by_largest_fraction"] == {"0-0.8": 2 / 3, "0.8-0.95": None, "0.95-0.99": None,
                                                       "0.99-1": 2 / 3}
