"""Clear errors: no QEMU, QEMU dying at start, a stub of another ABI, a stub that never answers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hwl import (
    Machine,
    QemuExitedError,
    QemuNotFoundError,
    StubAbiError,
    StubBuildError,
    StubTimeoutError,
)
from hwl.link import abi
from hwl.machine.stub import build_stub, guest_dir, inspect_stub

pytestmark = pytest.mark.qemu


def stub_variant(tmp_path: Path, file: str, old: str, new: str) -> Path:
    """Build a stub from a copy of guest/ with one edit."""
    src = tmp_path / "guest"
    shutil.copytree(guest_dir(), src)
    text = (src / file).read_text()
    assert old in text, f"{old!r} not in guest/{file}"
    (src / file).write_text(text.replace(old, new, 1))
    return build_stub(src, cache=tmp_path / "cache")


def test_missing_qemu_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HWL_QEMU", "/nonexistent/qemu-system-x86_64")
    with pytest.raises(QemuNotFoundError, match="apt-get install qemu-system-x86"):
        Machine("pc").start()


def test_missing_qemu_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HWL_QEMU", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(QemuNotFoundError, match="qemu-system-x86_64 not found"):
        Machine("pc").start()


def test_qemu_exiting_at_start_shows_its_stderr(tmp_path: Path) -> None:
    cfg = tmp_path / "broken.cfg"
    cfg.write_text('[machine]\n  type = "pc"\n\n[device "x"]\n  driver = "no-such-device"\n')
    machine = Machine(cfg)
    with pytest.raises(QemuExitedError, match="no-such-device") as err:
        machine.start()
    assert err.value.returncode not in (None, 0)
    assert machine.closed and not machine.alive()


def test_stub_with_another_abi_version_is_refused(tmp_path: Path) -> None:
    ours = f"#define HWL_ABI_VERSION {abi.ABI_VERSION}u"
    elf = stub_variant(tmp_path, "abi.h", ours, "#define HWL_ABI_VERSION 99u")
    with pytest.raises(
        StubAbiError, match=f"version: stub has 0x63, host expects {abi.ABI_VERSION:#x}"
    ):
        inspect_stub(elf)
    with pytest.raises(StubAbiError, match="Rebuild the stub"):
        Machine("pc", stub=elf).start()  # refused before QEMU starts


def test_not_a_stub_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "fake.elf"
    fake.write_bytes(Path("/bin/true").read_bytes())
    with pytest.raises(StubAbiError, match="not an i386 ELF"):
        inspect_stub(fake)


def test_stub_that_fails_to_compile_shows_the_compiler(tmp_path: Path) -> None:
    with pytest.raises(StubBuildError, match="error"):
        stub_variant(tmp_path, "stub.c", "#include", "#error broken on purpose\n#include")


def test_stub_that_never_answers_times_out(tmp_path: Path) -> None:
    elf = stub_variant(
        tmp_path, "boot.S", "call stub_main", "1: hlt\n    jmp 1b\n    call stub_main"
    )
    machine = Machine("pc", stub=elf, boot_timeout=2)
    with pytest.raises(StubTimeoutError, match="did not report ready within 2"):
        machine.start()
    assert machine.closed and not machine.alive()


def test_kvm_boots_where_it_exists_and_is_refused_clearly_where_not() -> None:
    import os

    from hwl import HwlError
    from hwl.hw import ata
    from hwl.machine.machine import resolve_accel

    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        with Machine("pc", accel="kvm") as m:
            assert m.accel == "kvm"
            assert ata.identify(m.link).model == "HWL DISK 0"
    else:
        with pytest.raises(HwlError, match="/dev/kvm is missing or not accessible"):
            resolve_accel("kvm")
    assert resolve_accel("auto") == "tcg"
    with pytest.raises(HwlError, match="unknown accelerator 'warp'"):
        resolve_accel("warp")
