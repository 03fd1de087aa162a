"""No QEMU and no shared-memory file outlive their machine, however it ends."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hwl import Machine

pytestmark = pytest.mark.qemu


def gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # a zombie child of ours counts as gone once reaped by its parent
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
                return True
        except OSError:  # reaped since the kill(0)
            return True
        time.sleep(0.05)
    return False


def test_exception_inside_with_closes_everything() -> None:
    with pytest.raises(RuntimeError, match="boom"), Machine("pc") as m:
        pid, run_dir = m.pid, m.run_dir
        assert pid is not None and run_dir.is_dir()
        raise RuntimeError("boom")
    assert pid is not None and gone(pid, 5)
    assert not run_dir.exists()
    assert not list(Path("/dev/shm").glob(f"hwl-{os.getpid()}-*"))


def test_keep_run_dir_keeps_the_logs() -> None:
    with Machine("pc", keep_run_dir=True) as m:
        run_dir = m.run_dir
    try:
        assert "hwl-stub ready" in (run_dir / "serial.log").read_text()
        assert "-kernel" in (run_dir / "qemu.cmdline").read_text()
        assert '"RESUME"' in (run_dir / "qmp-events.jsonl").read_text()
    finally:
        subprocess.run(["rm", "-rf", str(run_dir)], check=False)


def test_sigkilled_owner_takes_qemu_with_it() -> None:
    script = (
        "import sys, time\n"
        "from hwl import Machine\n"
        "m = Machine('pc').start()\n"
        "print(m.pid, m.run_dir, flush=True)\n"
        "time.sleep(60)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    run_dir = None
    try:
        assert owner.stdout is not None
        pid, run_dir = owner.stdout.readline().rstrip("\n").split(" ", 1)
        qemu_pid = int(pid)
        assert not gone(qemu_pid, 0.2)
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        assert gone(qemu_pid, 5), "QEMU outlived the process that started it"
    finally:
        owner.kill()
        owner.wait()
        if run_dir is not None:  # nobody is left to remove it (its disks: 160 MiB)
            shutil.rmtree(run_dir, ignore_errors=True)
