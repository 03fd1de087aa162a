"""Every process says who it is: ``ps`` shows ``hwl: LABEL (ep N)`` and ``top`` the
label, not a row of identical fork-server command lines."""

from __future__ import annotations

from pathlib import Path

from hwl.procs import descendants
from hwl.system.boot import System
from hwl.system.rs import program_argv, up_fields


def title(pid: int) -> tuple[str, str]:
    """(comm, command line) of ``pid`` as ps and top read them."""
    proc = Path(f"/proc/{pid}")
    cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    return (proc / "comm").read_text().strip(), cmdline


def test_kernel_fork_server_rs_and_services_are_named() -> None:
    boot = [
        up_fields(program_argv("hwl.servers.echo", ["--tag", "a"]), label="echo_a"),
        up_fields(program_argv("hwl.servers.echo", ["--tag", "b"]), label="echo_b"),
    ]
    with System.start(None, boot) as system:
        kernel = system.kernel.proc.pid
        names = {pid: title(pid) for pid in descendants(kernel) | {kernel}}
        assert names[kernel] == ("kernel", f"hwl: kernel (run dir {system.run_dir})")
        assert ("forkserver", "hwl: forkserver") in names.values()
        assert ("rs", "hwl: rs") in names.values()
        for row in system.rs.status():
            assert names[row.pid] == (row.label, f"hwl: {row.label} (ep {row.endpoint})")
