"""Strict JSON text of results: numpy values as plain numbers, NaN and infinities as ``null``.

Python's ``json`` writes ``NaN`` and ``Infinity``, which strict parsers (browsers, ``jq``, most
languages' libraries) refuse; a metric that is undefined (no spectrum in a bin, none answered)
is ``null`` in every JSON file and stream the training tools write.
"""

from __future__ import annotations

import json
import math

import numpy as np


def _plain(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


def _finite(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def strict_json(obj, indent: int | None = 2) -> str:
    """``obj`` as strict JSON text (numpy scalars and arrays as numbers and lists; NaN, inf as null)."""
    return json.dumps(_finite(json.loads(json.dumps(obj, default=_plain))), indent=indent)
