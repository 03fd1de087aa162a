"""Placement: parsing and the auto rule without QEMU; on QEMU, that QEMU's threads,
the kernel and everything it started, and the client have the cores chosen."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hwl.kernel.launcher import KernelProcess
from hwl.machine import placement as placing
from hwl.machine.machine import Machine
from hwl.machine.placement import Placement, PlacementError
from hwl.procs import descendants
from hwl.system.boot import System
from hwl.system.vfs import Vfs

pytestmark = pytest.mark.qemu

HERE = frozenset(os.sched_getaffinity(0))


def cores(n: int) -> frozenset[int]:
    return frozenset(range(n))


# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    ("text", "qemu", "hwl"),
    [
        ("qemu:0;hwl:1", {0}, {1}),
        (" HWL : 2,3 ; qemu:0-1 ", {0, 1}, {2, 3}),
        ("qemu:1", {1}, None),
        ("hwl:0-2,5;", None, {0, 1, 2, 5}),
        ("qemu:0;hwl:0", {0}, {0}),
    ],
)
def test_parse_explicit(text: str, qemu: set[int] | None, hwl: set[int] | None) -> None:
    got = placing.parse(text)
    assert isinstance(got, Placement)
    assert got.qemu == (None if qemu is None else frozenset(qemu))
    assert got.hwl == (None if hwl is None else frozenset(hwl))
    assert got.active


@pytest.mark.parametrize(("text", "word"), [("auto", "auto"), (" OFF ", "off"), ("Auto", "auto")])
def test_parse_words(text: str, word: str) -> None:
    assert placing.parse(text) == word


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("bogus", "'bogus' is not qemu:CORES or hwl:CORES"),
        ("", "it is empty"),
        (";", "it is empty"),
        ("qemu:0;qemu:1", "'qemu' is given twice"),
        ("vm:0;hwl:1", "'vm:0' is not qemu:CORES"),
        ("qemu:x;hwl:1", "'x' is not a core number or range"),
        ("qemu:;hwl:1", "'' is not a core number or range"),
        ("qemu:3-1;hwl:0", "'3-1' is not a core range"),
        ("qemu:-1;hwl:0", "'-1' is not a core number or range"),
        ("qemu 0 hwl 1", "'qemu 0 hwl 1' is not qemu:CORES"),
    ],
)
def test_a_bad_value_is_named(text: str, why: str) -> None:
    with pytest.raises(PlacementError) as err:
        placing.parse(text, source="--placement")
    message = str(err.value)
    assert f"bad placement {text!r} (--placement)" in message
    assert why in message


def test_cores_this_process_may_not_use_are_refused() -> None:
    with pytest.raises(PlacementError) as err:
        placing.resolve("qemu:0;hwl:7", available=cores(2), source="HWL_PLACEMENT")
    assert "bad placement 'qemu:0;hwl:7' (HWL_PLACEMENT): hwl names core(s) 7" in str(err.value)
    assert "may use only 0,1" in str(err.value)


def test_the_environment_is_read_when_no_value_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(placing.ENV, "off")
    assert placing.resolve(None, available=cores(4)) == placing.UNPINNED
    monkeypatch.setenv(placing.ENV, "qemu:3;hwl:0-2")
    assert placing.resolve(None, available=cores(4)).qemu == frozenset({3})
    monkeypatch.setenv(placing.ENV, "nope")
    with pytest.raises(PlacementError, match=r"'nope' \(HWL_PLACEMENT\)"):
        placing.resolve(None, available=cores(4))
    monkeypatch.delenv(placing.ENV)
    assert placing.resolve(None, available=cores(2)) == placing.choose(cores(2))
    # an explicit value wins over the environment
    monkeypatch.setenv(placing.ENV, "nope")
    assert placing.resolve("off", available=cores(2)) == placing.UNPINNED


# ------------------------------------------------------------------ choosing


@pytest.mark.parametrize(
    ("n", "vcpus", "qemu", "hwl"),
    [
        (2, 1, {1}, {0}),
        (3, 1, {2}, {0, 1}),
        (4, 1, {2, 3}, {0, 1}),
        (8, 1, {6, 7}, {0, 1, 2, 3, 4, 5}),
        (8, 2, {5, 6, 7}, {0, 1, 2, 3, 4}),
        (8, 8, {4, 5, 6, 7}, {0, 1, 2, 3}),
        (2, 4, {1}, {0}),
    ],
)
def test_the_auto_rule(n: int, vcpus: int, qemu: set[int], hwl: set[int]) -> None:
    chosen = placing.choose(cores(n), vcpus)
    assert (chosen.qemu, chosen.hwl) == (frozenset(qemu), frozenset(hwl))
    assert chosen.qemu is not None and chosen.hwl is not None
    assert not chosen.qemu & chosen.hwl


def test_auto_uses_the_cores_given_not_their_count() -> None:
    chosen = placing.choose(frozenset({3, 5}))
    assert (chosen.qemu, chosen.hwl) == (frozenset({5}), frozenset({3}))


def test_one_core_runs_unpinned_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    placing._logged.clear()
    with caplog.at_level("WARNING", logger=placing.__name__):
        assert placing.resolve("auto", available=cores(1)) == placing.UNPINNED
        assert placing.resolve("auto", available=cores(1)) == placing.UNPINNED
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["placement: 1 core(s) here; QEMU and hwl run unpinned"]


def test_a_refused_affinity_is_logged_once_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    """A process whose affinity is not what was asked for (here: a core that does
    not exist) is reported as unpinned, once."""
    placing._logged.clear()
    odd = frozenset({max(HERE) + 1})
    with caplog.at_level("WARNING", logger=placing.__name__):
        assert not placing.check(os.getpid(), odd, "QEMU")
        assert not placing.check(os.getpid(), odd, "QEMU")
        assert placing.check(os.getpid(), frozenset(os.sched_getaffinity(0)), "QEMU")
    assert len(caplog.records) == 1
    assert "QEMU could not be pinned" in caplog.records[0].getMessage()


def test_client_cpus_restores_every_thread() -> None:
    before = frozenset(os.sched_getaffinity(0))
    one = frozenset({min(before)})
    with placing.client_cpus(one):
        assert os.sched_getaffinity(0) == one
    assert os.sched_getaffinity(0) == before


# ------------------------------------------------------------------ CLI and plugin


def test_cli_refuses_a_bad_placement_naming_it() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hwl.cli.main", "bench", "ipc", "--placement", "qemu:0;hwl:zz"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "bad placement 'qemu:0;hwl:zz' (--placement): 'zz' is not a core" in done.stderr


def test_plugin_refuses_a_bad_placement_naming_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess("--hwl-placement=qemu:0;hwl:9999")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*bad placement 'qemu:0;hwl:9999' (--hwl-placement)*9999*"])


def test_plugin_sets_the_placement_of_every_machine(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        "import os\ndef test_x():\n    assert os.environ['HWL_PLACEMENT'] == 'off'\n"
    )
    result = pytester.runpytest_subprocess("--hwl-placement=off")
    result.assert_outcomes(passed=1)


# ------------------------------------------------------------------ on QEMU


def affinity(pid: int) -> dict[int, frozenset[int]]:
    """Every thread of ``pid`` and its cores."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found[int(task.name)] = frozenset(os.sched_getaffinity(int(task.name)))
        except ProcessLookupError:
            continue
    return found


def test_qemu_kernel_children_and_client_get_their_cores() -> None:
    """The pc machine's whole boot list under auto placement; a disk read first, so
    QEMU's I/O threads made after the start are counted too."""
    chosen = placing.choose(HERE)
    assert chosen.active, f"placement needs two cores; this process may use {sorted(HERE)}"
    assert chosen.qemu is not None and chosen.hwl is not None
    with Machine("pc", placement="auto") as machine:
        assert machine.placement == chosen
        assert os.sched_getaffinity(0) == chosen.hwl  # the client, while the machine is up
        with System.start(machine, backoff_unit=0.0) as system:
            with Vfs.attach(machine.run_dir, timeout=30) as vfs, vfs.open("/dev/c0d0") as f:
                assert len(f.read(1 << 20)) == 1 << 20
            assert machine.pid is not None
            qemu = affinity(machine.pid)
            assert len(qemu) > 1, "QEMU has more than one thread"
            assert set(qemu.values()) == {chosen.qemu}, qemu
            kernel = system.kernel.pid
            family = descendants(kernel)
            labels = {row.label for row in system.rs.status()}
            assert {"ds", "pci", "at_wini", "vfs"} <= labels
            pids = {row.pid for row in system.rs.status() if row.pid > 0}
            assert pids <= family, (pids, family)
            for pid in {kernel, *family}:
                cpus = set(affinity(pid).values())
                assert cpus in ({chosen.hwl}, set()), (pid, cpus)
    assert frozenset(os.sched_getaffinity(0)) == HERE  # the client's cores are back


def test_placement_off_pins_nothing() -> None:
    """Not even while another placed machine holds this process on hwl's cores:
    QEMU and the kernel get every core, not the client's."""
    chosen = placing.choose(HERE)
    assert placing.hold_client(chosen)
    try:
        with Machine("pc", placement="off") as machine:
            assert not machine.placement.active
            assert frozenset(os.sched_getaffinity(0)) == chosen.hwl  # held by the other
            kernel = KernelProcess.start(machine)
            assert machine.pid is not None
            assert set(affinity(machine.pid).values()) == {HERE}
            assert set(affinity(kernel.pid).values()) == {HERE}
    finally:
        placing.release_client()
    assert frozenset(os.sched_getaffinity(0)) == HERE
