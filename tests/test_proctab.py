"""The process-table cache alone (hwl/system/proctab.py), against a fake kernel.

RS, DS and PCI use it in their own processes: tests/test_rs.py, test_ds.py and
test_pci_server.py run them on real machines.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from hwl.ipc.client import IpcError
from hwl.kernel.errno import Errno
from hwl.system.proctab import Proc, ProcTable, procs_of


def row(endpoint: int, label: str, pid: int = 100, system: bool = True) -> dict[str, Any]:
    return {"endpoint": endpoint, "label": label, "pid": pid, "system": system,
            "state": "receiving"}  # fmt: skip


class FakeKernel:
    """Answers ``proctab`` with ``rows``, or raises ``error``; counts the reads."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.error: IpcError | None = None
        self.reads = 0

    def proctab(self) -> list[dict[str, Any]]:
        self.reads += 1
        if self.error is not None:
            raise self.error
        return [dict(r) for r in self.rows]


REFUSED = IpcError(Errno.EPERM, "getinfo", "proctab not allowed")


@pytest.fixture
def kernel() -> FakeKernel:
    return FakeKernel([row(5, "rs", 10), row(7, "ds", 11), row(40, "service", 50, False)])


def test_rows_are_parsed_and_malformed_ones_skipped() -> None:
    rows: list[dict[str, Any]] = [
        row(5, "rs", 10),
        {"endpoint": 6, "label": "nopid"},  # pid defaults to -1, system to True
        {"endpoint": "8", "label": "x", "pid": 1},
        {"endpoint": 9, "label": None, "pid": 1},
        {"endpoint": 10, "label": "x", "pid": "1"},
        {"label": "no endpoint"},
    ]
    assert procs_of(rows) == {5: Proc(5, "rs", 10, True), 6: Proc(6, "nopid", -1, True)}


def test_refresh_reads_and_keeps_the_table(kernel: FakeKernel) -> None:
    table = ProcTable(kernel)
    assert table.last == {}
    procs = table.refresh()
    assert procs == table.last
    assert procs is not None and procs[40] == Proc(40, "service", 50, False)
    assert set(procs) == {5, 7, 40}
    assert kernel.reads == 1


def test_refused_refresh_warns_and_keeps_the_previous_table(
    kernel: FakeKernel, caplog: pytest.LogCaptureFixture
) -> None:
    owner = logging.getLogger("test.owner")
    table = ProcTable(kernel, owner)
    table.refresh()
    before = table.last
    kernel.error = REFUSED
    with caplog.at_level(logging.WARNING):
        assert table.refresh() is None
    assert table.last is before
    [record] = caplog.records
    assert record.name == "test.owner" and record.levelno == logging.WARNING
    assert record.getMessage() == f"getinfo proctab failed: {REFUSED}"
    assert "EPERM" in record.getMessage() and "proctab not allowed" in record.getMessage()


def test_get_reads_again_only_on_a_miss(kernel: FakeKernel) -> None:
    table = ProcTable(kernel)
    assert table.get(7) == Proc(7, "ds", 11, True)
    assert table.get(5) == Proc(5, "rs", 10, True)
    assert kernel.reads == 1  # the second was a hit
    kernel.rows.append(row(41, "newcomer", 51, False))
    assert table.get(41) == Proc(41, "newcomer", 51, False)
    assert kernel.reads == 2
    assert table.get(99) is None
    assert kernel.reads == 3
    kernel.rows = []  # a hit is not checked against the kernel
    assert table.get(41) is not None and kernel.reads == 3


def test_get_on_a_refusal(kernel: FakeKernel, caplog: pytest.LogCaptureFixture) -> None:
    table = ProcTable(kernel)
    table.refresh()
    kernel.error = REFUSED
    assert table.get(7) == Proc(7, "ds", 11, True)  # cached: no read
    with caplog.at_level(logging.WARNING):
        assert table.get(99) is None
    assert len(caplog.records) == 1
    caplog.clear()
    with pytest.raises(IpcError) as info:
        table.get(99, strict=True)
    assert info.value is REFUSED
    assert caplog.records == []  # strict: the caller reports it
    assert table.get(7, strict=True) is not None  # a hit never reads


def test_alive_reads_afresh(kernel: FakeKernel) -> None:
    table = ProcTable(kernel)
    assert table.alive(7)
    kernel.rows = [r for r in kernel.rows if r["endpoint"] != 7]
    assert not table.alive(7)
    assert kernel.reads == 2
    assert 7 not in table.last


def test_alive_when_the_kernel_refuses(kernel: FakeKernel) -> None:
    table = ProcTable(kernel)
    kernel.error = REFUSED
    assert table.alive(12345)  # cannot tell: the holder keeps what it holds
