"""Build a ``/sys/class/hwmon``-like tree in a directory, for the hwmon backend's tests.

Chips are ``hwmonK`` directories with a ``name`` file. `FakeHwmon.add_amd_energy` adds one as
the ``amd_energy`` driver lays it out (``Documentation/hwmon/amd_energy.rst``): channels
``energy1..N`` for the cores (labels ``Ecore000``…) followed by one per socket (``Esocket0``…),
each an ``energyN_input`` in µJ beside its ``energyN_label``. `FakeHwmon.add_chip` adds any
other chip (``coretemp`` with a temperature, say), which the backend must leave alone.

`FakeHwmon.read_text` refuses denied files with ``PermissionError`` (EACCES) even when the tests
run as root, as `meters.testing.fake_powercap.FakePowercap` does.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


class FakeHwmon:
    """A fake hwmon class directory rooted at ``root`` (created if missing).

    Args:
        root: Directory to build the tree in (e.g. pytest's ``tmp_path / "hwmon"``).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.denied: set[Path] = set()
        self._sockets: dict[int, Path] = {}  # socket -> its energyN_input

    def add_chip(self, name: str, files: dict[str, str] | None = None) -> Path:
        """Add chip ``hwmon<next>`` called ``name`` with the given extra files."""
        chip = self.root / f"hwmon{len(list(self.root.glob('hwmon*')))}"
        chip.mkdir()
        (chip / "name").write_text(f"{name}\n")
        for filename, text in (files or {}).items():
            (chip / filename).write_text(f"{text}\n")
        return chip

    def add_amd_energy(
        self,
        *,
        sockets: int = 1,
        cores: int = 2,
        socket_energy_uj: int = 0,
        core_energy_uj: int = 0,
        driver: str = "amd_energy",
    ) -> Path:
        """Add an ``amd_energy`` chip with ``cores`` core channels, then ``sockets`` socket ones.

        Returns:
            The chip's directory.
        """
        files: dict[str, str] = {}
        channel = 0
        for core in range(cores):
            channel += 1
            files[f"energy{channel}_label"] = f"Ecore{core:03d}"
            files[f"energy{channel}_input"] = str(core_energy_uj)
        first_socket = channel + 1
        for socket in range(sockets):
            channel += 1
            files[f"energy{channel}_label"] = f"Esocket{socket}"
            files[f"energy{channel}_input"] = str(socket_energy_uj)
        chip = self.add_chip(driver, files)
        for socket in range(sockets):
            self._sockets[socket] = chip / f"energy{first_socket + socket}_input"
        return chip

    def socket_input(self, socket: int) -> Path:
        """The ``energyN_input`` file of socket ``socket``."""
        return self._sockets[socket]

    def energy_uj(self, socket: int) -> int:
        """Socket ``socket``'s counter, µJ."""
        return int(self.socket_input(socket).read_text())

    def add_energy_j(self, socket: int, energy_j: float) -> None:
        """Let socket ``socket`` draw ``energy_j`` joules (64-bit counter: no wrap)."""
        path = self.socket_input(socket)
        path.write_text(f"{self.energy_uj(socket) + round(energy_j * 1e6)}\n")

    def deny(self, path: Path) -> Path:
        """Make ``path`` unreadable (owner and group only, as amd_energy does since a CVE)."""
        path.chmod(0o440)
        self.denied.add(path)
        return path

    def read_text(self, path: Path) -> str:
        """Read a file of the tree as an unprivileged reader would (denied files refuse)."""
        if path in self.denied:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return path.read_text(encoding="ascii")
