"""CUDA's own device order, from the CUDA driver library (``libcuda.so.1``), through ctypes.

An integer entry of ``CUDA_VISIBLE_DEVICES`` is a CUDA ordinal, and CUDA orders devices
FASTEST_FIRST unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``: it need not be NVML's index. The one
authority on what CUDA device ``k`` is, is CUDA: `libcuda_uuids` asks it (``cuInit(0)``,
``cuDeviceGetCount``, ``cuDeviceGet``, ``cuDeviceGetUuid_v2`` or else ``cuDeviceGetUuid``) for
the UUID of every device it enumerates, in its order, as ``GPU-xxxxxxxx-xxxx-xxxx-xxxx-
xxxxxxxxxxxx``. libcuda reads ``CUDA_VISIBLE_DEVICES`` and ``CUDA_DEVICE_ORDER`` from the
process environment, so its answer holds only for that environment (the caller checks).

`libcuda_uuids_isolated`, the default the NVML backend uses, asks from a short-lived child
process (this file run by the same interpreter, standard library only): ``cuInit`` in the
meter's process would initialise CUDA in the user's training process, and a process that has
initialised CUDA cannot use it again in a child it forks. Every failure (no libcuda, no GPU, a
CUDA error, a timeout) raises `CudaUnavailable`, and the caller falls back to its other rules:
never fatal.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["CudaUnavailable", "format_uuid", "libcuda_uuids", "libcuda_uuids_isolated"]

_LIBCUDA = "libcuda.so.1"
_CUDA_SUCCESS = 0
_UUID_BYTES = 16
# cuInit can take seconds on a large node whose driver is not kept loaded (no persistence mode)
_CHILD_TIMEOUT_S = 20.0


class CudaUnavailable(OSError):
    """CUDA could not say its device order (no libcuda, no device, an error): not fatal."""


class _CUuuid(ctypes.Structure):
    _fields_ = [("bytes", ctypes.c_ubyte * _UUID_BYTES)]


def format_uuid(raw: bytes) -> str:
    """16 UUID bytes as NVML writes a GPU's UUID: ``GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx``."""
    if len(raw) != _UUID_BYTES:
        raise CudaUnavailable(f"a CUDA UUID has {_UUID_BYTES} bytes, got {len(raw)}")
    h = raw.hex()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def libcuda_uuids(load: Callable[[str], Any] = ctypes.CDLL) -> list[str]:
    """The UUIDs of the devices CUDA enumerates in this process, in CUDA's order (ordinal k).

    Args:
        load: Opens the library by name (default ``ctypes.CDLL``; tests pass a fake whose
            functions take the same ``ctypes.byref`` arguments).

    Raises:
        CudaUnavailable: No libcuda, or any CUDA call failed.
    """
    try:
        lib = load(_LIBCUDA)
    except OSError as e:
        raise CudaUnavailable(f"no {_LIBCUDA} ({e})") from e
    try:
        _check(lib.cuInit(0), "cuInit")
        count = ctypes.c_int(0)
        _check(lib.cuDeviceGetCount(ctypes.byref(count)), "cuDeviceGetCount")
        get_uuid = getattr(lib, "cuDeviceGetUuid_v2", None) or lib.cuDeviceGetUuid
        uuids = []
        for ordinal in range(count.value):
            device = ctypes.c_int(0)
            _check(lib.cuDeviceGet(ctypes.byref(device), ordinal), "cuDeviceGet")
            uuid = _CUuuid()
            _check(get_uuid(ctypes.byref(uuid), device), "cuDeviceGetUuid")
            uuids.append(format_uuid(bytes(uuid.bytes)))
    except CudaUnavailable:
        raise
    except Exception as e:  # a missing symbol, a foreign type: never fatal
        raise CudaUnavailable(f"{_LIBCUDA}: {type(e).__name__}: {e}") from e
    return uuids


def libcuda_uuids_isolated(timeout_s: float = _CHILD_TIMEOUT_S) -> list[str]:
    """`libcuda_uuids` asked in a child process (same interpreter, same environment).

    Raises:
        CudaUnavailable: The child failed, timed out or said nothing usable.
    """
    command = [sys.executable, "-I", "-S", str(Path(__file__).resolve())]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise CudaUnavailable(f"asking CUDA in a child process failed ({e})") from e
    try:
        answer = json.loads(done.stdout or "null")
    except ValueError:
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("uuids"), list):
        return [str(u) for u in answer["uuids"]]
    if isinstance(answer, dict) and "error" in answer:
        raise CudaUnavailable(str(answer["error"]))
    raise CudaUnavailable(f"CUDA's child process said nothing usable (exit {done.returncode})")


def _check(result: int, call: str) -> None:
    if result != _CUDA_SUCCESS:
        raise CudaUnavailable(f"{call} returned CUDA error {result}")


def _main() -> None:
    try:
        print(json.dumps({"uuids": libcuda_uuids()}))
    except CudaUnavailable as e:
        print(json.dumps({"error": str(e)}))


if __name__ == "__main__":
    _main()
