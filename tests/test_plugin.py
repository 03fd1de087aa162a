"""The pytest plugin, run in an inner pytest session against a real machine."""

from __future__ import annotations

import pytest

from hwl.buildcache import cache_home
from hwl.link import abi

pytestmark = pytest.mark.qemu

#: The build cache of this session (hwl/buildcache.py). pytester points HOME at each
#: test's own folder, so without it every inner session built the stub again.
CACHE = str(cache_home())


@pytest.fixture(autouse=True)
def _shared_build_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", CACHE)


INNER = """
import pytest

pytestmark = pytest.mark.qemu

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


SYSTEM_INNER = """
import os, signal, time
import pytest
from hwl.proto.ds import DS_DRIVER_UP

pytestmark = pytest.mark.qemu
seen = []

def test_clients_of_the_booted_system(hwl_system):
    labels = {row.label for row in hwl_system.rs.status()}
    assert {"ds", "pci", "at_wini", "vfs"} <= labels
    assert hwl_system.ds.retrieve_u32("drv.blk.at_wini") == DS_DRIVER_UP
    with hwl_system.vfs.open("/dev/c0d0", "rb") as disk:
        assert len(disk.read(4096)) == 4096
    seen.append(hwl_system.run_dir)

def test_the_module_shares_one_system(hwl_system):
    assert seen == [hwl_system.run_dir]
    assert 0, "fails on purpose"

def test_kernel_killed(hwl_system):
    os.kill(hwl_system.system.kernel.proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while hwl_system.watch.wait(0.1) is None and time.monotonic() < deadline:
        pass

def test_after_the_death(hwl_system):
    pass
"""


def test_hwl_system_boots_the_profile_and_fails_on_a_core_death(pytester: pytest.Pytester) -> None:
    """One system per module with its RS, DS and VFS clients; a failed test carries
    the event log and each service's log; the kernel's death fails the test it
    happened in, naming it, and every later test of the module (RS's is not a
    death: the kernel restarts RS, tests/test_rs_restart.py)."""
    pytester.makepyfile(SYSTEM_INNER)
    result = pytester.runpytest_subprocess("--hwl-accel=tcg", "-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(passed=2, failed=1, errors=2)  # the death: 1 teardown, 1 setup
    out = result.stdout.str()
    assert "fails on purpose" in out
    result.stdout.fnmatch_lines(["*hwl pc (*) events.jsonl*", '*"event": "boot-done"*'])
    result.stdout.fnmatch_lines(["*hwl pc (*) at_wini.log*"])
    result.stdout.fnmatch_lines(["*hwl pc (*) kernel.log*"])
    result.stdout.fnmatch_lines(
        [
            "*the trusted core died during this test: the kernel (pid *) died: "
            "killed by signal 9 (SIGKILL)*"
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_after_the_death*",
            "*core died in an earlier test: the kernel (pid *) died: killed by signal 9*",
        ]
    )


UNMARKED_INNER = """
def test_boots_without_the_marker(hwl_machines):
    hwl_machines.boot("pc").close()

def test_no_machine():
    pass
"""


def test_a_test_booting_qemu_without_the_qemu_marker_fails(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(UNMARKED_INNER)
    result = pytester.runpytest_subprocess("--hwl-accel=tcg", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*test_boots_without_the_marker boots a QEMU machine but is not*"])


SEED_INNER = """
def test_draw(hwl_rng, hwl_seed):
    print(f"draw {hwl_seed} {hwl_rng.random()!r}")
"""


def draw(pytester: pytest.Pytester, *args: str) -> tuple[str, str]:
    # In this process: no machine, and five sessions' start-up in a subprocess each
    # cost more than the rest of the test.
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-s", *args)
    result.assert_outcomes(passed=1)
    header = next(line for line in result.outlines if line.startswith("hwl: seed"))
    return header, next(line for line in result.outlines if "draw " in line).split(" ", 1)[1]


def test_the_seed_is_printed_and_repeats_the_draws(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SEED_INNER)
    header, first = draw(pytester, "--hwl-seed", "1234")
    assert header == "hwl: seed 1234 (repeat with --hwl-seed 1234)"
    assert first.startswith("draw 1234 ")
    assert draw(pytester, "--hwl-seed", "1234")[1] == first
    assert draw(pytester, "--hwl-seed", "1235")[1] != first
    drawn_header, drawn = draw(pytester)
    seed = drawn_header.split()[2]
    assert draw(pytester, "--hwl-seed", seed)[1] == drawn


FAULT_INNER = """
import pytest
from hwl.faults import SlowDisk

pytestmark = pytest.mark.qemu

def iops(system):
    block = next(b for b in system.qmp.execute("query-block") if b.get("device") == "hd0")
    return block["inserted"].get("iops", 0)

@pytest.mark.hwl_fault(lambda system: SlowDisk(system, "hd0", iops=50))
def test_a_declared_fault_is_in_place(hwl_system, hwl_faults):
    assert [f.kind for f in hwl_faults] == ["slow-disk"]
    assert iops(hwl_system) == 50

def test_healed_after_the_test_that_declared_it(hwl_system):
    assert iops(hwl_system) == 0
    SlowDisk(hwl_system, "hd0", iops=70).inject()
    assert iops(hwl_system) == 70
    assert 0, "fails on purpose"

def test_a_fault_left_injected_is_healed_too(hwl_system):
    assert iops(hwl_system) == 0
"""


def test_declared_faults_are_injected_and_every_fault_healed(pytester: pytest.Pytester) -> None:
    """A hwl_fault marker's fault is in place during its test; any fault a test
    leaves injected is healed at its teardown and listed in its failure report;
    the event log has every inject and heal."""
    pytester.makepyfile(FAULT_INNER)
    result = pytester.runpytest_subprocess("--hwl-accel=tcg", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*hwl faults still injected*", '*"kind": "slow-disk"*"iops": 70*'])
    result.stdout.fnmatch_lines(['*"event": "fault-inject"*', '*"event": "fault-heal"*'])
