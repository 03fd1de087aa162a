"""Starting programs as processes: the connection to the kernel is inherited.

The child finds its connection in the fd named by ``$HWL_KERNEL_FD``; nothing
else names it, so no process can take over another's endpoint. Output goes to
``<label>.log`` in the run directory. A child dies with the kernel
(PR_SET_PDEATHSIG), so a killed machine leaves no orphans.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from pathlib import Path

from hwl.ipc import wire

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _child_setup(kernel_pid: int) -> None:
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != kernel_pid:
        os._exit(1)


def start(
    argv: list[str], conn_fd: int, log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Run ``argv`` with the kernel connection ``conn_fd``; raises OSError when the
    program cannot be started."""
    if not argv:
        raise FileNotFoundError("an empty command line")
    environment = dict(os.environ)
    environment.update(env or {})
    environment[wire.ENV_FD] = str(conn_fd)
    kernel_pid = os.getpid()
    with log_path.open("ab") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=(conn_fd,),
            env=environment,
            preexec_fn=lambda: _child_setup(kernel_pid),
        )
