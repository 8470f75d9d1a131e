"""The codec of a chunk's raw samples (``chunk.samples``): named numpy columns in one blob.

A chunk keeps its summary in columns (``energy_j``, ``mean_power_w``, ...) and its raw arrays in
one binary value, read only when a plot or a phase boundary needs them. The blob is
self-describing, so the set of arrays can grow (temperature, clocks) without a schema change, and
versioned, so old rows stay readable when the layout changes.

Layout, version 1 (all integers little-endian)::

    byte 0       version (1)
    byte 1       flags: bit 0 = payload is zlib-compressed, bit 1 = columns are byte-shuffled
    bytes 2..    payload (compressed when bit 0 is set), which is
                 u32 n (samples per column) | u8 column count |
                 per column: u8 name length | name (ASCII) | u8 dtype code |
                 the column data, one after another, n × itemsize bytes each

dtype codes: 1 float32, 2 float64, 3 int32, 4 int64, 5 uint32, 6 uint64.

Byte-shuffling (bytes of equal significance stored together, as in Blosc/HDF5) turns a slowly
varying power trace into long runs that zlib compresses well; decoding undoes it exactly, so the
round trip is lossless for every dtype.

The recommended columns for a meter chunk: ``t_s`` float32 seconds since the chunk's ``t0_s``
(1 µs resolution over a 10 s chunk; absolute unix seconds would need float64), ``power_w``
float32 (NVML reports integer milliwatts, exact in float32 up to 16 kW) and, when the device has
one, ``energy_j`` float64 (the cumulative counter reaches 10¹⁰ mJ, beyond float32's 24 bits).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import SampleCodecError

__all__ = [
    "CODEC_VERSION",
    "MAX_DECODED_BYTES",
    "concat_rows",
    "decode_samples",
    "encode_sample_rows",
    "encode_samples",
    "encode_samples_many",
]

CODEC_VERSION = 1
#: Largest payload `decode_samples` will inflate (64 MiB): a guard against zlib bombs.
MAX_DECODED_BYTES = 64 * 1024 * 1024

_FLAG_ZLIB = 0b01
_FLAG_SHUFFLE = 0b10
_KNOWN_FLAGS = _FLAG_ZLIB | _FLAG_SHUFFLE
_PREFIX_ZLIB = bytes((CODEC_VERSION, _FLAG_ZLIB | _FLAG_SHUFFLE))
_PREFIX_RAW = bytes((CODEC_VERSION, 0))
_DTYPES: dict[int, np.dtype[Any]] = {
    1: np.dtype("<f4"),
    2: np.dtype("<f8"),
    3: np.dtype("<i4"),
    4: np.dtype("<i8"),
    5: np.dtype("<u4"),
    6: np.dtype("<u8"),
}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}


def encode_samples(columns: Mapping[str, npt.ArrayLike], *, compress: bool = True) -> bytes:
    """Pack named 1-D arrays of equal length into one versioned blob.

    Args:
        columns: Column name (ASCII, 1–255 characters) → 1-D array. Every column must have the
            same length n ≥ 0; dtypes must be float32/64, int32/64 or uint32/64 (kept exactly).
        compress: Byte-shuffle and zlib-compress the payload (the default); ``False`` stores it
            raw, which is faster to read for short chunks.

    Returns:
        The blob, starting with the version byte.

    Raises:
        SampleCodecError: No columns, ragged or non-1-D columns, an unsupported dtype, a bad
            column name, or more than 255 columns.
    """
    header, arrays = _layout(columns)
    if compress:
        body = [_shuffle(array) for array in arrays]
        return _PREFIX_ZLIB + zlib.compress(b"".join([header, *body]), 6)
    return _PREFIX_RAW + b"".join([header, *(array.tobytes() for array in arrays)])


def encode_samples_many(
    chunks: Sequence[Mapping[str, npt.ArrayLike]], *, compress: bool = True
) -> list[bytes]:
    """`encode_samples` of every chunk, the same bytes, vectorised across chunks.

    Chunks with the same columns (names, dtypes, length) are stacked and go through
    `encode_sample_rows` together; what is left per chunk is finding its group.

    Args:
        chunks: Per chunk, its columns (as `encode_samples` takes them).
        compress: As in `encode_samples`.

    Returns:
        One blob per chunk, in order.

    Raises:
        SampleCodecError: As `encode_samples`, for the first chunk of a layout that is invalid.
    """
    groups: dict[tuple[tuple[str, np.dtype[Any], int], ...], list[int]] = {}
    columns_of: list[list[npt.NDArray[Any]]] = []
    for i, columns in enumerate(chunks):
        arrays = [
            raw if isinstance(raw, np.ndarray) else np.asarray(raw) for raw in columns.values()
        ]
        layout = tuple(
            (name, a.dtype, a.shape[0] if a.ndim == 1 else -1)
            for name, a in zip(columns, arrays, strict=True)
        )
        groups.setdefault(layout, []).append(i)
        columns_of.append(arrays)
    out: list[bytes] = [b""] * len(chunks)
    for members in groups.values():
        _layout(chunks[members[0]])  # validates the whole group's layout
        names = list(chunks[members[0]])
        stacked = {
            name: np.stack([columns_of[i][j] for i in members]) for j, name in enumerate(names)
        }
        for i, blob in zip(members, encode_sample_rows(stacked, compress=compress), strict=True):
            out[i] = blob
    return out


def encode_sample_rows(
    columns: Mapping[str, npt.NDArray[Any]], *, compress: bool = True
) -> list[bytes]:
    """`encode_samples` of many chunks of one layout at once: row k of each column is chunk k.

    The blobs are assembled as one byte matrix (header, then each column's bytes, shuffled
    when compressing) in a few numpy operations, then cut into rows: for a batch of short
    chunks this costs a fraction of encoding them one by one.

    Args:
        columns: Column name → 2-D array (chunks × samples); every column has the same shape
            and a dtype `encode_samples` accepts.
        compress: As in `encode_samples`.

    Returns:
        One blob per row, byte for byte what `encode_samples` makes of that row's columns.

    Raises:
        SampleCodecError: As `encode_samples`, or columns that are not 2-D of one shape.
    """
    arrays = [np.asarray(a) for a in columns.values()]
    if not arrays:
        raise SampleCodecError("at least one sample column is required")
    shape = arrays[0].shape
    if any(a.ndim != 2 or a.shape != shape for a in arrays):
        shapes = [a.shape for a in arrays]
        raise SampleCodecError(f"sample rows must be 2-D arrays of one shape, got {shapes}")
    rows, n = shape
    if rows == 0:
        return []
    header, _ = _layout({name: a[0] for name, a in zip(columns, arrays, strict=True)})
    blocks: list[npt.NDArray[np.uint8]] = []
    for a in arrays:
        little = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
        planes = little.view(np.uint8).reshape(rows, n, little.dtype.itemsize)
        # byte k of every value of a row together when shuffling (`_shuffle`), else as is
        blocks.append((planes.transpose(0, 2, 1) if compress else planes).reshape(rows, -1))
    if compress:
        payloads = concat_rows([header, *blocks], rows)
        return [_PREFIX_ZLIB + zlib.compress(payload, 6) for payload in payloads]
    return concat_rows([_PREFIX_RAW + header, *blocks], rows)


def concat_rows(parts: Sequence[bytes | npt.NDArray[Any]], rows: int) -> list[bytes]:
    """Concatenate, row by row, constant byte strings and per-row arrays (rows × anything):
    row k of the result is every part's row k (or the constant) in order, as bytes. One byte
    matrix for all rows, cut at the end: a batch's blobs or hashed messages without a Python
    join per row."""
    blocks = [
        np.broadcast_to(np.frombuffer(p, np.uint8), (rows, len(p)))
        if isinstance(p, bytes)
        else np.ascontiguousarray(p).view(np.uint8).reshape(rows, -1)
        for p in parts
    ]
    matrix = np.concatenate(blocks, axis=1)
    width = matrix.shape[1]
    data = memoryview(matrix.tobytes())
    return [bytes(data[k * width : (k + 1) * width]) for k in range(rows)]


def _layout(columns: Mapping[str, npt.ArrayLike]) -> tuple[bytes, list[npt.NDArray[Any]]]:
    """The payload header of ``columns`` and the columns as contiguous little-endian arrays."""
    if not columns:
        raise SampleCodecError("at least one sample column is required")
    if len(columns) > 255:
        raise SampleCodecError(f"{len(columns)} columns; at most 255 fit the format")
    arrays: list[npt.NDArray[Any]] = []
    n: int | None = None
    header = [b""]
    for name, raw in columns.items():
        encoded_name = _encode_name(name)
        array = np.asarray(raw)
        if array.ndim != 1:
            raise SampleCodecError(f"column {name!r} must be 1-D, got shape {array.shape}")
        if n is None:
            n = array.shape[0]
        elif array.shape[0] != n:
            raise SampleCodecError(f"column {name!r} has {array.shape[0]} samples, expected {n}")
        dtype = array.dtype.newbyteorder("<")
        code = _CODES.get(dtype)
        if code is None:
            raise SampleCodecError(f"column {name!r} has unsupported dtype {array.dtype}")
        arrays.append(np.ascontiguousarray(array, dtype=dtype))
        header.append(struct.pack("<B", len(encoded_name)) + encoded_name + struct.pack("<B", code))
    assert n is not None  # columns is non-empty
    if n > 0xFFFFFFFF:
        raise SampleCodecError(f"{n} samples; at most 2**32 - 1 fit the format")
    header[0] = struct.pack("<IB", n, len(arrays))
    return b"".join(header), arrays


def decode_samples(blob: bytes) -> dict[str, npt.NDArray[Any]]:
    """Unpack a blob made by `encode_samples`.

    Args:
        blob: The stored bytes.

    Returns:
        Column name → a new, writable 1-D array with the dtype that was encoded, in the order
        the columns were encoded.

    Raises:
        SampleCodecError: Unknown version or flags, corrupt or truncated data, trailing bytes,
            or a payload that would inflate beyond `MAX_DECODED_BYTES`.
    """
    if len(blob) < 2:
        raise SampleCodecError("sample blob is shorter than its 2-byte preamble")
    version, flags = blob[0], blob[1]
    if version != CODEC_VERSION:
        raise SampleCodecError(f"sample codec version {version} is not supported")
    if flags & ~_KNOWN_FLAGS:
        raise SampleCodecError(f"unknown sample codec flags {flags:#04x}")
    payload = _inflate(blob[2:]) if flags & _FLAG_ZLIB else bytes(blob[2:])

    reader = _Reader(payload)
    n, count = reader.unpack("<IB")
    layout: list[tuple[str, np.dtype[Any]]] = []
    for _ in range(count):
        (name_length,) = reader.unpack("<B")
        name = _decode_name(reader.take(name_length))
        (code,) = reader.unpack("<B")
        dtype = _DTYPES.get(code)
        if dtype is None:
            raise SampleCodecError(f"column {name!r} has unknown dtype code {code}")
        layout.append((name, dtype))
    if count == 0:
        raise SampleCodecError("sample blob has no columns")

    columns: dict[str, npt.NDArray[Any]] = {}
    for name, dtype in layout:
        if name in columns:
            raise SampleCodecError(f"column {name!r} appears twice")
        data = reader.take(n * dtype.itemsize)
        if flags & _FLAG_SHUFFLE:
            columns[name] = _unshuffle(data, n, dtype)
        else:
            columns[name] = np.frombuffer(data, dtype=dtype).copy()
    if reader.remaining:
        raise SampleCodecError(f"{reader.remaining} trailing bytes after the last column")
    return columns


def _encode_name(name: str) -> bytes:
    if not isinstance(name, str) or not name or not name.isascii() or len(name) > 255:
        raise SampleCodecError(f"column name {name!r} must be 1–255 ASCII characters")
    return name.encode("ascii")


def _decode_name(raw: bytes) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError as e:
        raise SampleCodecError("column name is not ASCII") from e


def _shuffle(array: npt.NDArray[Any]) -> bytes:
    # n × itemsize bytes → itemsize planes of n bytes: byte k of every value together.
    return array.view(np.uint8).reshape(-1, array.dtype.itemsize).T.tobytes()


def _unshuffle(data: bytes, n: int, dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    planes = np.frombuffer(data, dtype=np.uint8).reshape(dtype.itemsize, n)
    return np.ascontiguousarray(planes.T).view(dtype).reshape(n)


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        payload = inflater.decompress(data, MAX_DECODED_BYTES)
    except zlib.error as e:
        raise SampleCodecError(f"sample blob is not valid zlib data: {e}") from e
    if inflater.unconsumed_tail:
        raise SampleCodecError(f"sample blob inflates beyond {MAX_DECODED_BYTES} bytes")
    if not inflater.eof:
        raise SampleCodecError("sample blob's zlib stream is truncated")
    if inflater.unused_data:
        raise SampleCodecError("trailing bytes after the sample blob's zlib stream")
    return payload


class _Reader:
    """Sequential reads from a payload, failing cleanly instead of with struct.error."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._offset

    def take(self, size: int) -> bytes:
        if size > self.remaining:
            raise SampleCodecError(
                f"sample blob truncated: needed {size} bytes at offset {self._offset}, "
                f"{self.remaining} left"
            )
        chunk = self._data[self._offset : self._offset + size]
        self._offset += size
        return chunk

    def unpack(self, fmt: str) -> tuple[int, ...]:
        values: tuple[int, ...] = struct.unpack(fmt, self.take(struct.calcsize(fmt)))
        return values
