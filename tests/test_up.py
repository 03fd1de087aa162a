"""``hwl up`` and the trusted core: a SIGKILL of the kernel, RS or QEMU under a
running ``hwl up`` (a real QEMU, the e1000 profile for its network namespace)
ends ``hwl up`` at once with CORE_DIED, a message naming the dead process and
its signal, and nothing left behind: no QEMU, no kernel, no service, no
namespace, no run directory.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rs_fixtures import pid_alive, wait_for

from hwl.cli.up import CORE_DIED
from hwl.machine.netpeer import NETNS_DIR, PREFIX
from hwl.procs import descendants
from hwl.system.watch import kernel_log_pid

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

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read() if self.proc.poll() is not None else ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.mark.parametrize("victim", ["the kernel", "RS", "QEMU"])
def test_hwl_up_stops_at_once_when_the_core_dies(victim: str) -> None:
    up = Up()
    try:
        up.wait_up()
        run_dir = Path(up.field(r"^run dir (\S+)"))
        pids = {
            "QEMU": int(up.field(r"QEMU pid (\d+)")),
            "the kernel": int(up.field(r"kernel pid (\d+)")),
            "RS": kernel_log_pid(run_dir, "rs") or -1,
        }
        assert pid_alive(pids["RS"]), pids
        everything = descendants(up.proc.pid)
        assert set(pids.values()) <= everything
        namespaces = list(NETNS_DIR.glob(f"{PREFIX}{up.proc.pid}-*"))
        assert len(namespaces) == 1, namespaces

        killed_at = time.monotonic()
        os.kill(pids[victim], signal.SIGKILL)
        code = up.proc.wait(timeout=60)
        took = time.monotonic() - killed_at
        err = up.stderr()
        print(f"{victim}: hwl up exited {took * 1000:.0f} ms after the kill")
        assert code == CORE_DIED, (code, err)
        said = f"hwl up: {victim} (pid {pids[victim]}) died: killed by signal 9 (SIGKILL)"
        assert said in err, err
        assert f"({victim} died)" in err and "Traceback" not in err, err
        assert took < 20, took  # the death seen within a poll; the rest is the cleanup
        left = [pid for pid in everything if pid_alive(pid)]
        assert not left, f"left running after hwl up: {left}"
        assert not any(ns.exists() for ns in namespaces), namespaces
        assert not run_dir.exists()
    finally:
        up.kill()
