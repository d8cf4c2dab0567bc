"""Inference engine: verified artifact + backend + the shared preprocessing.

>>> from mnedge_live.engine import load_engine
>>> engine = load_engine()                      # doctest: +SKIP
>>> engine.predict([(energy, intensity)])       # doctest: +SKIP
"""

from mnedge_live.engine.backends import BACKEND_ORDER, BackendUnavailable, make_backend
from mnedge_live.engine.core import PREPROCESSING_ID, Engine, load_engine

__all__ = ["BACKEND_ORDER", "BackendUnavailable", "Engine", "PREPROCESSING_ID", "load_engine", "make_backend"]
