"""The interactive commands driven as a person drives them: on a terminal (pexpect
gives each a pseudo-terminal), reading what they print, typing Ctrl-C.

``hwl up`` runs until Ctrl-C while ``minix-service`` reaches it from another shell
through the run directory it prints; ``hwl machine up`` likewise. Ctrl-C must stop
each cleanly: status 0, its last words printed, no QEMU, kernel or run directory
left.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

from hwl.procs import descendants

pytestmark = pytest.mark.qemu

HWL = [sys.executable, "-m", "hwl.cli.main"]
SERVICE = [sys.executable, "-m", "hwl.cli.service"]
BOOT_TIMEOUT_S = 180


def spawn(*args: str) -> pexpect.spawn:
    return pexpect.spawn(HWL[0], [*HWL[1:], *args], encoding="utf-8", timeout=BOOT_TIMEOUT_S)


def stop_with_ctrl_c(child: pexpect.spawn, last_words: str) -> set[int]:
    """Type Ctrl-C; the command's last words, then its end. The processes it had
    are returned, for the check that none outlives it."""
    below = descendants(child.pid)
    child.sendintr()
    child.expect_exact(last_words, timeout=60)
    child.expect(pexpect.EOF, timeout=60)
    child.close()
    return below


def left_over(pids: set[int], within: float = 10.0) -> dict[int, str]:
    """Those of ``pids`` still there after ``within`` seconds, with their command.
    Killed services can be zombies for a moment after the command ends (orphans
    that init reaps), so this waits for them, bounded."""
    deadline = time.monotonic() + within
    while True:
        left = {}
        for pid in pids:
            try:
                left[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def test_hwl_up_serves_service_commands_until_ctrl_c() -> None:
    child = spawn("up", "pc")
    try:
        child.expect(r"export HWL_RUN_DIR=(\S+) ")
        run_dir = Path(str(child.match.group(1)))
        child.expect_exact("up; Ctrl-C stops the system")
        # A second shell: the operator asks RS through the printed run directory.
        env = {**os.environ, "HWL_RUN_DIR": str(run_dir)}
        status = subprocess.run(
            [*SERVICE, "status"], env=env, capture_output=True, text=True, timeout=30
        )
        assert status.returncode == 0, status.stderr
        assert re.search(r"^at_wini\s+\S+\s+\d+\s+0\s", status.stdout, re.M), status.stdout
        refresh = subprocess.run(
            [*SERVICE, "refresh", "echo"], env=env, capture_output=True, text=True, timeout=30
        )
        assert refresh.returncode == 0, refresh.stderr
        below = stop_with_ctrl_c(child, "")
        assert child.exitstatus == 0, child.before
        assert below and not left_over(below), "processes outlived hwl up"
        assert not run_dir.exists()
    finally:
        child.terminate(force=True)


def test_hwl_machine_up_reports_the_link_and_stops_on_ctrl_c() -> None:
    child = spawn("machine", "up", "pc")
    try:
        child.expect(r"run dir (\S+)\r?\n")
        run_dir = Path(str(child.match.group(1)))
        child.expect(r"link round trip: ([0-9.]+) µs; Ctrl-C to stop")
        assert float(child.match.group(1)) > 0
        below = stop_with_ctrl_c(child, "machine stopped")
        assert child.exitstatus == 0
        assert below and not left_over(below), "QEMU outlived hwl machine up"
        assert not run_dir.exists()
    finally:
        child.terminate(force=True)
