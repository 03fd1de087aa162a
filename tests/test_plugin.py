"""The pytest plugin, run in an inner pytest session against a real machine."""

from __future__ import annotations

import pytest

from hwl.link import abi

INNER = """
def test_fails_with_a_machine(hwl_machine):
    assert hwl_machine.accel == "tcg"
    assert hwl_machine.link.nop(1) == 2, "fails on purpose"

def test_passes(hwl_machines):
    m = hwl_machines.boot("pc")
    assert m.link.nop(3) == 3
"""


def test_failed_test_report_carries_the_machine_logs(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(INNER)
    result = pytester.runpytest_subprocess("--hwl-accel=tcg", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "fails on purpose" in out
    result.stdout.fnmatch_lines(
        ["*hwl pc (*) serial.log*", f"hwl-stub ready abi={abi.ABI_VERSION} *"]
    )
    result.stdout.fnmatch_lines(["*hwl pc (*) qemu.stderr*"])
    result.stdout.fnmatch_lines(["*hwl pc (*) qmp-events.jsonl*", '*"RESUME"*'])


def test_options_are_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*--hwl-accel=*", "*--hwl-keep-run-dir*"])


def test_bad_accel_is_refused(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess("--hwl-accel=warp")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*--hwl-accel*invalid choice*warp*"])
