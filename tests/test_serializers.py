"""The msgpack wire format: arrays of numbers round-trip; nothing that holds Python objects is ever built."""

from __future__ import annotations

import pickle

import msgpack
import numpy as np
import pytest

from mnedge_live.serializers import get_serializer, msgpack_dumps, msgpack_loads


@pytest.mark.parametrize("value", [
    np.linspace(630.0, 670.0, 401),
    np.arange(12, dtype=np.int16).reshape(3, 4),
    np.array([(1.5, 2)], dtype=[("energy", "<f8"), ("counts", "<i4")]),
    np.array([1 + 2j, 3 - 1j]),
    np.float32(2.5),
    np.int64(-7),
])
def test_arrays_and_scalars_of_numbers_round_trip(value):
    got = msgpack_loads(msgpack_dumps({"data": {"x": value}, "n": 3}))["data"]["x"]
    assert got.dtype == value.dtype
    np.testing.assert_array_equal(got, value)


def _array(kind, descr, data=b"\x41" * 16, shape=(2,), nd=True) -> bytes:
    obj = {b"nd": nd, b"type": descr, b"data": data}
    if nd:
        obj[b"shape"] = list(shape)
    if kind is not None:
        obj[b"kind"] = kind
    return msgpack.packb({"x": obj}, use_bin_type=True)


@pytest.mark.parametrize("payload", [
    _array(b"O", "|O", data=pickle.dumps([1])),            # msgpack-numpy's own pickle path
    _array(b"", "|O"),                                     # object dtype, empty kind: bytes read as pointers
    _array("O", "|O"),                                     # the kind as text
    _array(None, "|O"),                                    # no kind at all
    _array(b"V", [["a", "|O"]]),                           # a structured type with an object field
    _array(b"V", [["a", "<f8"], ["b", [["c", "|O"]]]]),    # nested deeper
    _array(b"", "|O", data=b"\x41" * 8, nd=False),         # an object scalar
], ids=["kind O", "empty kind", "text kind", "no kind", "object field", "nested object field", "scalar"])
def test_every_object_dtype_is_refused(payload):
    with pytest.raises(ValueError, match="refused"):
        msgpack_loads(payload)


@pytest.mark.parametrize("payload", [
    _array(b"", "<f8", data=b"\x00" * 8, shape=(4,)),      # buffer shorter than the shape
    _array(b"", "no-such-type"),
    _array(b"", "<f8", data="text", shape=(1,)),
    b"\x93\x01\x02",                                       # a list, not a document
    b"\xc1",                                               # never-used msgpack byte
])
def test_malformed_payloads_raise_value_error(payload):
    with pytest.raises(ValueError):
        msgpack_loads(payload)


def test_pickle_is_refused_unless_allowed():
    with pytest.raises(ValueError, match="allow_pickle"):
        get_serializer("pickle")
    dumps, loads = get_serializer("pickle", allow_pickle=True)
    assert loads(dumps({"a": 1})) == {"a": 1}
