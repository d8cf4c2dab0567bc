"""Wire formats for documents on 0MQ: msgpack + msgpack-numpy by default, pickle only on request.

msgpack-numpy's own decoder unpickles object arrays; :func:`msgpack_loads`
refuses them, so a msgpack payload can never execute code.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable

import msgpack
import msgpack_numpy

#: Serializer names accepted by ``--serializer``.
SERIALIZERS = ("msgpack", "pickle")


def _decode(obj: dict):
    """msgpack-numpy decoding without its pickle path for object arrays."""
    if obj.get(b"nd") is True and obj.get(b"kind") == b"O":
        raise ValueError("object arrays are refused (they would be unpickled)")
    return msgpack_numpy.decode(obj)


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
