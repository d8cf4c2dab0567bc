"""Wire formats for documents on 0MQ: msgpack + msgpack-numpy by default, pickle only on request.

msgpack-numpy's own decoder unpickles object arrays and builds whatever dtype
it is sent; :func:`msgpack_loads` refuses every dtype that holds Python
objects, so a msgpack payload can never execute code or hand numpy pointers.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable

import msgpack
import msgpack_numpy
import numpy as np

#: Serializer names accepted by ``--serializer``.
SERIALIZERS = ("msgpack", "pickle")


def _dtype(descr) -> np.dtype:
    """A dtype from msgpack-numpy's description (nested lists for structured types, names possibly bytes)."""
    if isinstance(descr, (list, tuple)):
        return np.dtype([(f[0].decode() if isinstance(f[0], bytes) else f[0], _dtype(f[1]), *f[2:]) for f in descr])
    return np.dtype(descr.decode() if isinstance(descr, bytes) else descr)


def _decode(obj: dict):
    """msgpack-numpy decoding of arrays and scalars whose dtype holds no Python objects.

    msgpack-numpy unpickles arrays marked ``kind O`` and builds any other
    dtype it is sent; an object dtype reached another way (an empty or text
    ``kind``, a structured type with an object field) would make numpy read
    the sender's bytes as pointers.  Every array's dtype is therefore built
    here first and refused when it holds objects, whatever its ``kind`` says.
    """
    if b"nd" not in obj:
        return msgpack_numpy.decode(obj)   # complex numbers; any other map stays a map
    if obj.get(b"kind") in (b"O", "O"):
        raise ValueError("object arrays are refused (they would be unpickled)")
    if b"type" not in obj or b"data" not in obj:
        return obj
    dtype = _dtype(obj[b"type"])
    if dtype.hasobject:
        raise ValueError(f"arrays of Python objects are refused (dtype {dtype})")
    data = obj[b"data"]
    if not isinstance(data, bytes):
        raise ValueError(f"array data is a {type(data).__name__}, not bytes")
    if obj[b"nd"] is True:
        return np.ndarray(buffer=data, dtype=dtype, shape=obj[b"shape"])
    return np.frombuffer(data, dtype=dtype)[0]


def msgpack_dumps(doc: dict) -> bytes:
    """Serialize a document with msgpack, numpy arrays via msgpack-numpy."""
    return msgpack.packb(doc, default=msgpack_numpy.encode, use_bin_type=True)


def msgpack_loads(payload: bytes) -> dict:
    """Deserialize a msgpack document; never unpickles anything.

    Raises
    ------
    ValueError
        When the payload is not a msgpack map (garbage, truncated) or holds an object array.
    """
    try:
        doc = msgpack.unpackb(payload, object_hook=_decode, raw=False, strict_map_key=False)
    except ValueError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ValueError(f"undecodable msgpack payload: {type(exc).__name__}: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"payload is a {type(doc).__name__}, not a document")
    return doc


def get_serializer(name: str, allow_pickle: bool = False) -> tuple[Callable[[dict], bytes], Callable[[bytes], dict]]:
    """The ``(dumps, loads)`` pair of a wire format.

    Parameters
    ----------
    name : str
        ``"msgpack"`` or ``"pickle"``.
    allow_pickle : bool
        Pickle executes code from the network when loaded; it is refused unless this is True.

    Raises
    ------
    ValueError
        Unknown name, or pickle without ``allow_pickle``; the message names the option.
    """
    if name == "msgpack":
        return msgpack_dumps, msgpack_loads
    if name == "pickle":
        if not allow_pickle:
            raise ValueError("serializer: 'pickle' executes code from the network when loaded; "
                             "it is refused unless allow_pickle (--allow-pickle) is given")
        return pickle.dumps, pickle.loads
    raise ValueError(f"serializer: unknown wire format {name!r}; choose one of {', '.join(SERIALIZERS)}")
