"""``hwl up --tcp-transfer``, the network half of the README's main job, run as the
demo runs it (a subprocess, real QEMU): on the inet machine it sends MiB over TCP
to Linux's own socket in the namespace while the e1000 driver is SIGKILLed three
times, and prints that every byte arrived and the connection stayed up; on a
profile without INET it refuses with a clear message.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.qemu

HWL = [sys.executable, "-m", "hwl.cli.main"]


def test_hwl_up_tcp_transfer_through_driver_kills() -> None:
    out = subprocess.run([*HWL, "up", "inet", "--tcp-transfer", "8", "--once"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, (out.stdout, out.stderr)
    kills = re.findall(r"^  kill -9 (\d+) \(e1000\) at [\d.]+ MiB: back as pid (\d+) ", out.stdout,
                       re.M)  # fmt: skip
    assert len(kills) == 3, out.stdout
    pids = [int(p) for kill in kills for p in kill]
    assert pids[1] == pids[2] and pids[3] == pids[4]  # each kill hits the last one's successor
    assert len({pids[0], pids[1], pids[3], pids[5]}) == 4
    assert re.search(r"^every byte arrived: SHA-256 equal both ways \(8 MiB to Linux, 1 MiB back\);"
                     r" the connection stayed up through 3 kills of e1000 \(no reset, no error",
                     out.stdout, re.M), out.stdout  # fmt: skip
    assert "FAILED" not in out.stdout


def test_hwl_up_tcp_transfer_needs_inet() -> None:
    out = subprocess.run([*HWL, "up", "pc", "--tcp-transfer", "1", "--once"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "--tcp-transfer needs a profile that runs inet" in out.stderr
    assert "every byte arrived" not in out.stdout
