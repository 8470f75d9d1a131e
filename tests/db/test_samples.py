"""The raw-sample codec: lossless, versioned, and strict about what it reads."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from thermoledger.db.errors import SampleCodecError, StorageError
from thermoledger.db.samples import (
    CODEC_VERSION,
    MAX_DECODED_BYTES,
    decode_samples,
    encode_sample_rows,
    encode_samples,
    encode_samples_many,
)

DTYPES = ["<f4", "<f8", "<i4", "<i8", "<u4", "<u8"]


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n=st.integers(min_value=0, max_value=300),
    dtypes=st.lists(st.sampled_from(DTYPES), min_size=1, max_size=4),
    compress=st.booleans(),
)
def test_round_trip_is_exact(
    data: st.DataObject, n: int, dtypes: list[str], compress: bool
) -> None:
    columns = {f"c{i}": data.draw(hnp.arrays(np.dtype(dtype), n)) for i, dtype in enumerate(dtypes)}
    decoded = decode_samples(encode_samples(columns, compress=compress))
    assert list(decoded) == list(columns)
    for name, array in columns.items():
        assert decoded[name].dtype == array.dtype
        # Bitwise, so NaN payloads and -0.0 count too.
        assert decoded[name].tobytes() == array.tobytes()


def test_blob_layout_starts_with_version_and_flags() -> None:
    raw = encode_samples({"power_w": np.array([1.0, 2.0], dtype=np.float32)}, compress=False)
    assert raw[:2] == bytes((CODEC_VERSION, 0))
    assert struct.unpack_from("<IB", raw, 2) == (2, 1)
    assert raw[7:16] == b"\x07power_w\x01"  # name length, name, dtype code (float32)
    assert np.frombuffer(raw[16:], dtype="<f4").tolist() == [1.0, 2.0]
    packed = encode_samples({"power_w": np.array([1.0, 2.0], dtype=np.float32)})
    assert packed[:2] == bytes((CODEC_VERSION, 0b11))


def test_big_endian_input_is_stored_little_endian() -> None:
    values = np.array([1.5, -2.25, 1e300], dtype=">f8")
    decoded = decode_samples(encode_samples({"x": values}))["x"]
    assert decoded.dtype == np.dtype("<f8")
    np.testing.assert_array_equal(decoded, values)


def test_shuffle_compresses_a_power_trace() -> None:
    rng = np.random.default_rng(0)
    trace = {
        "t_s": np.arange(1000, dtype=np.float32) * np.float32(0.1),
        "power_w": np.round(300.0 + rng.normal(0.0, 3.0, 1000), 3).astype(np.float32),
    }
    raw, packed = encode_samples(trace, compress=False), encode_samples(trace)
    assert len(packed) < 0.75 * len(raw)


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({}, "at least one"),
        ({"a": np.zeros(3), "b": np.zeros(4)}, "expected 3"),
        ({"a": np.zeros((2, 2))}, "1-D"),
        ({"a": np.zeros(3, dtype=np.float16)}, "unsupported dtype"),
        ({"a": np.array(["x"])}, "unsupported dtype"),
        ({"": np.zeros(3)}, "ASCII"),
        ({"wärme": np.zeros(3)}, "ASCII"),
    ],
)
def test_encode_refuses_malformed_columns(columns: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(SampleCodecError, match=message):
        encode_samples(columns)


def _good() -> bytes:
    return encode_samples({"power_w": np.arange(10, dtype=np.float32)}, compress=False)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "preamble"),
        (bytes((2, 0)) + _good()[2:], "version 2"),
        (bytes((1, 0b100)) + _good()[2:], "flags"),
        (_good()[:-1], "truncated"),
        (_good() + b"\x00", "trailing"),
        (bytes((1, 1)) + b"not zlib", "zlib"),
        (bytes((1, 1)) + zlib.compress(_good()[2:])[:-4], "truncated"),
        (bytes((1, 0)) + struct.pack("<IB", 0, 0), "no columns"),
        (bytes((1, 0)) + struct.pack("<IBB", 1, 1, 1) + b"x" + b"\x09" + b"\x00" * 8, "dtype code"),
        (
            bytes((1, 0))
            + struct.pack("<IBB", 0, 2, 1)
            + b"x\x01"
            + struct.pack("<B", 1)
            + b"x\x01",
            "twice",
        ),
    ],
)
def test_decode_refuses_malformed_blobs(blob: bytes, message: str) -> None:
    with pytest.raises(SampleCodecError, match=message):
        decode_samples(blob)


def test_decode_refuses_a_zlib_bomb() -> None:
    bomb = bytes((1, 1)) + zlib.compress(b"\x00" * (MAX_DECODED_BYTES + 1), 9)
    with pytest.raises(SampleCodecError, match="inflates beyond"):
        decode_samples(bomb)


def test_codec_errors_are_value_and_storage_errors() -> None:
    with pytest.raises(ValueError, match="preamble"):
        decode_samples(b"\x01")
    assert issubclass(SampleCodecError, StorageError)


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    layouts=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=40),
            st.lists(st.sampled_from([*DTYPES, ">f4", ">i8"]), min_size=1, max_size=3),
        ),
        min_size=1,
        max_size=4,
    ),
    copies=st.integers(min_value=1, max_value=4),
    compress=st.booleans(),
)
def test_many_is_the_same_bytes_as_one_at_a_time(
    data: st.DataObject,
    layouts: list[tuple[int, list[str]]],
    copies: int,
    compress: bool,
) -> None:
    """Chunks sharing a layout are encoded together; the blobs must not notice."""
    chunks = [
        {f"c{i}": data.draw(hnp.arrays(np.dtype(dtype), n)) for i, dtype in enumerate(dtypes)}
        for n, dtypes in layouts
        for _ in range(copies)
    ]
    many = encode_samples_many(chunks, compress=compress)
    assert many == [encode_samples(c, compress=compress) for c in chunks]


def test_many_refuses_what_one_refuses() -> None:
    good = {"t_s": np.zeros(3, np.float32)}
    with pytest.raises(SampleCodecError, match="unsupported dtype"):
        encode_samples_many([good, {"t_s": np.zeros(3, np.float16)}])
    with pytest.raises(SampleCodecError, match="expected 3"):
        encode_samples_many([good, {"t_s": np.zeros(3), "power_w": np.zeros(2)}])
    assert encode_samples_many([]) == []


def test_rows_are_the_blobs_of_each_row() -> None:
    t = np.arange(12, dtype=np.float32).reshape(3, 4)
    e = np.arange(12, dtype=">f8").reshape(3, 4) * 1e9
    for compress in (False, True):
        rows = encode_sample_rows({"t_s": t, "energy_j": e}, compress=compress)
        assert rows == [
            encode_samples({"t_s": t[k], "energy_j": e[k]}, compress=compress) for k in range(3)
        ]
    assert encode_sample_rows({"t_s": np.zeros((0, 4))}) == []
    with pytest.raises(SampleCodecError, match="one shape"):
        encode_sample_rows({"t_s": np.zeros((2, 3)), "power_w": np.zeros((2, 4))})
    with pytest.raises(SampleCodecError, match="one shape"):
        encode_sample_rows({"t_s": np.zeros(3)})
    with pytest.raises(SampleCodecError, match="unsupported dtype"):
        encode_sample_rows({"t_s": np.zeros((2, 3), np.float16)})
