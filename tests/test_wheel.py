"""hwl as a user installs a library: the wheel built from this tree, installed
(not editable) into a fresh venv, run from another folder. Its profiles, the
stub's sources and system.conf come with it (hwl/share.py), its servers and
drivers are installed as hwl.servers and hwl.drivers (no top-level package of
those common names), and they run: a machine boots and a whole system comes up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.qemu

ROOT = Path(__file__).resolve().parents[1]


def run(argv: list[str | Path], cwd: Path, timeout: float = 600) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HWL_PROFILE", "HWL_GUEST"))}
    env.pop("PYTHONPATH", None)
    env.pop("HWL_SYSTEM_CONF", None)
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{argv}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed; returns its bin/ folder. The venv
    has no pip of its own (ensurepip took most of the fixture's time on 2 cores):
    this pip installs into it (``--python``), dependencies and all."""
    tmp = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp / "dist", ROOT], tmp)
    (wheel,) = (tmp / "dist").glob("hwl-*.whl")
    run([sys.executable, "-m", "venv", "--without-pip", tmp / "venv"], tmp)
    python = tmp / "venv/bin/python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "-q", wheel], tmp)
    return tmp / "venv/bin"


def test_the_installed_package_finds_its_shared_files(installed: Path) -> None:
    venv = installed.parent
    out = run(
        [
            installed / "python",
            "-c",
            "import hwl, hwl.config.system_conf as c, hwl.machine.profile as p;"
            "import hwl.machine.stub as s;"
            "print(hwl.__file__); print(p.profile_dir()); print(s.guest_dir());"
            "print(c.default_path())",
        ],
        venv.parent,
    ).splitlines()
    assert out[0].startswith(str(venv)), out  # not this checkout
    site = Path(out[0]).parent.parent
    assert (site / "hwl/servers/rs/main.py").is_file() and (site / "hwl/drivers/at_wini").is_dir()
    assert not (site / "servers").exists() and not (site / "drivers").exists()
    sums = run([installed / "python", "-c", "from hwl import sectors;"
                "print(sectors.ready(), sectors.crc32c(b'123456789'))"], venv.parent)  # fmt: skip
    assert sums.split()[1] == str(0xE3069283), sums  # the filter's C loops built from the wheel
    assert out[1:] == [
        str(venv / "share/hwl/qemu-configs"),
        str(venv / "share/hwl/guest"),
        str(venv / "share/hwl/system.conf"),
    ]


def test_the_installed_hwl_boots_a_machine_and_a_system(installed: Path) -> None:
    elsewhere = installed.parent.parent
    pci = run([installed / "hwl", "machine", "pci", "pc"], elsewhere)
    assert "HWL DISK 0" in pci and "8086:7010" in pci, pci
    up = run([installed / "hwl", "up", "pc", "--once"], elsewhere)
    for label in ("ds", "pci", "at_wini", "at_wini1", "vfs", "echo"):
        assert f"\n{label} " in up, up
