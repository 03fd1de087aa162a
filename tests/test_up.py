"""``hwl up`` and the trusted core: a SIGKILL of the kernel or QEMU under a
running ``hwl up`` (a real QEMU, the e1000 profile for its network namespace)
ends ``hwl up`` at once with CORE_DIED, a message naming the dead process and
its signal, and nothing left behind: no QEMU, no kernel, no service, no
namespace, no run directory. A SIGKILL of RS is said with the pid the kernel
restarted it as, and ``hwl up`` goes on; only when RS keeps dying and the kernel
gives up does it end the same way, naming RS.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import pytest
from rs_fixtures import pid_alive, wait_for

from hwl.cli.up import CORE_DIED
from hwl.kernel.kernel import ROOT_RESTARTS
from hwl.machine.netpeer import NETNS_DIR, PREFIX
from hwl.procs import descendants
from hwl.system.watch import kernel_log_pid, kernel_log_pids

pytestmark = pytest.mark.qemu

HWL = [sys.executable, "-m", "hwl.cli.main"]
PROFILE = "e1000"
BOOT_TIMEOUT_S = 180.0
UP_LINE = "up; Ctrl-C stops the system"


class Up:
    """``hwl up PROFILE`` as a subprocess, its output read as it comes."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [*HWL, "up", PROFILE],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.out: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.out.append(line.rstrip("\n"))

    def wait_up(self) -> None:
        def up() -> bool | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"hwl up ended: {self.out} {self.stderr()}")
            return UP_LINE in self.out or None

        wait_for("hwl up to be up", up, BOOT_TIMEOUT_S)

    def field(self, pattern: str) -> str:
        for line in self.out:
            found = re.search(pattern, line)
            if found:
                return found.group(1)
        raise AssertionError(f"no {pattern!r} in {self.out}")

    def said(self, text: str) -> str | None:
        """The first line of output holding ``text``."""
        return next((line for line in self.out if text in line), None)

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read() if self.proc.poll() is not None else ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


class Running:
    """What ``hwl up`` printed it runs, and everything under it, once it is up."""

    def __init__(self, up: Up) -> None:
        up.wait_up()
        self.run_dir = Path(up.field(r"^run dir (\S+)"))
        self.pids = {
            "QEMU": int(up.field(r"QEMU pid (\d+)")),
            "the kernel": int(up.field(r"kernel pid (\d+)")),
            "RS": kernel_log_pid(self.run_dir, "rs") or -1,
        }
        assert pid_alive(self.pids["RS"]), self.pids
        self.everything = descendants(up.proc.pid)
        assert set(self.pids.values()) <= self.everything
        self.namespaces = list(NETNS_DIR.glob(f"{PREFIX}{up.proc.pid}-*"))
        assert len(self.namespaces) == 1, self.namespaces

    def check_stopped(self, up: Up, victim: str, pid: int, killed_at: float) -> str:
        """``hwl up`` ended with CORE_DIED naming ``victim``, nothing left; its stderr."""
        code = up.proc.wait(timeout=60)
        took = time.monotonic() - killed_at
        err = up.stderr()
        print(f"{victim}: hwl up exited {took * 1000:.0f} ms after the kill")
        assert code == CORE_DIED, (code, err)
        said = f"hwl up: {victim} (pid {pid}) died: killed by signal 9 (SIGKILL)"
        assert said in err, err
        assert f"({victim} died)" in err and "Traceback" not in err, err
        assert took < 20, took  # the death seen within a poll; the rest is the cleanup
        left = [pid for pid in self.everything if pid_alive(pid)]
        assert not left, f"left running after hwl up: {left}"
        assert not any(ns.exists() for ns in self.namespaces), self.namespaces
        assert not self.run_dir.exists()
        return err


@pytest.mark.parametrize("victim", ["the kernel", "QEMU"])
def test_hwl_up_stops_at_once_when_the_core_dies(victim: str) -> None:
    up = Up()
    try:
        running = Running(up)
        killed_at = time.monotonic()
        os.kill(running.pids[victim], signal.SIGKILL)
        running.check_stopped(up, victim, running.pids[victim], killed_at)
    finally:
        up.kill()


def test_hwl_up_goes_on_when_rs_is_restarted_and_stops_when_the_kernel_gives_up() -> None:
    up = Up()
    try:
        running = Running(up)
        rs = running.pids["RS"]
        for n in range(ROOT_RESTARTS):
            os.kill(rs, signal.SIGKILL)
            said = f"RS (pid {rs}) died"
            line = wait_for(f"hwl up to say RS's restart #{n + 1}", partial(up.said, said), 30)
            new = kernel_log_pids(running.run_dir, "rs")[-1]
            assert line == (
                f"hwl up: RS (pid {rs}) died: killed by signal 9 (SIGKILL); the kernel "
                f"restarted it: pid {new}; the new RS adopts the running services"
            ), line
            assert up.proc.poll() is None and pid_alive(new)
            assert pid_alive(running.pids["the kernel"]) and pid_alive(running.pids["QEMU"])
            rs = new
        killed_at = time.monotonic()
        os.kill(rs, signal.SIGKILL)  # one death too many within the kernel's window
        err = running.check_stopped(up, "RS", rs, killed_at)
        assert "the kernel gave up restarting it" in err, err
    finally:
        up.kill()
