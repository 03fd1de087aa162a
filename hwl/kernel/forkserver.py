"""The fork server: new processes forked from a warm interpreter, not started cold.

A cold ``python3`` start costs ~150 ms here; recovery time is the product, so the
kernel keeps this process beside it, with the interpreter up and hwl imported, and
asks it to fork. The child becomes the program: a Python script or module runs
in place (``runpy``), anything else is exec'd. The kernel passes the new
process's connection as an fd with each request; the fork server replies with the
child's pid and a pidfd for it, and reports each child's exit status when it
reaps it.

Requests and reports are JSON over a SOCK_SEQPACKET socketpair (no pickle).

See docs/kernel.md.
"""

from __future__ import annotations

import argparse  # noqa: F401  (most services parse their arguments with it)
import contextlib
import ctypes
import importlib
import json
import os
import runpy
import select
import signal
import socket
import sys
import traceback
from typing import Any

from hwl.ipc import wire
from hwl.procs import set_title

# What services and drivers import, loaded once when the fork server starts
# (hwl.system.sef: every service). A restarted driver that compiled the driver
# libraries itself spent 20-130 ms in imports (no .pyc cache when
# PYTHONDONTWRITEBYTECODE is set), most of a NIC's kill-to-first-frame. Drivers'
# and servers' own modules are not preloaded, so a live update runs their code as
# it is on disk. By name, in main(): the kernel's package imports nothing above it.
PRELOAD = (
    "hwl.driver.blockdriver",
    "hwl.driver.netdriver",
    "hwl.driver.nic",
    "hwl.ipc",
    "hwl.ipc.client",
    "hwl.link.batch",
    "hwl.system.ds",
    "hwl.system.pci",
    "hwl.system.rs",
    "hwl.system.sef",
)

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def python_target(argv: list[str]) -> tuple[str, str] | None:
    """("path", script) or ("module", name) when ``argv`` runs Python code that the
    fork server can run in place; None when it must be exec'd."""
    if len(argv) < 2:
        return None
    exe = os.path.basename(argv[0])
    if argv[0] != sys.executable and not exe.startswith("python"):
        return None
    if argv[1] == "-m" and len(argv) >= 3:
        return ("module", argv[2])
    if argv[1].endswith(".py") and os.path.isfile(argv[1]):
        return ("path", argv[1])
    return None


def _become(request: dict[str, Any], conn_fd: int, control: socket.socket) -> None:
    """In the child: set up the process and run the program; never returns."""
    code = 1
    try:
        control.close()
        set_title(str(request.get("label") or "child"))  # SEF adds the endpoint
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        os.set_inheritable(conn_fd, True)
        os.environ.update(request["env"])
        os.environ[wire.ENV_FD] = str(conn_fd)
        argv = [str(a) for a in request["argv"]]
        target = python_target(argv)
        if target is None:
            os.execvp(argv[0], argv)
        kind, name = target
        if kind == "module":
            sys.argv = [name, *argv[3:]]
            runpy.run_module(name, run_name="__main__", alter_sys=True)
        else:
            sys.argv = argv[1:]
            sys.path[0] = os.path.dirname(os.path.abspath(name))
            runpy.run_path(name, run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int) and exc.code is not None:
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _reap(control: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        report = {"exit": pid, "code": os.waitstatus_to_exitcode(status)}
        control.send(json.dumps(report).encode())


def serve(control: socket.socket) -> None:
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    control_fd = control.fileno()
    while True:
        ready, _, _ = select.select([control_fd, wake_r], [], [])
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 512)
            _reap(control)
        if control_fd in ready:
            data, fds, _flags, _addr = socket.recv_fds(control, 65536, 1)
            if not data:
                return  # the kernel is gone
            request = json.loads(data)
            if len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                control.send(json.dumps({"error": "a spawn request carries one fd"}).encode())
                continue
            pid = os.fork()
            if pid == 0:
                _become(request, fds[0], control)
            os.close(fds[0])
            # The pidfd is opened here, before this loop can reap the child: a
            # program that exits at once is still a zombie, so the pid is still its.
            pidfd = os.pidfd_open(pid)
            socket.send_fds(control, [json.dumps({"pid": pid}).encode()], [pidfd])
            os.close(pidfd)


def main() -> int:
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    set_title("forkserver")
    for name in PRELOAD:
        importlib.import_module(name)
    control = socket.socket(fileno=int(sys.argv[1]))
    serve(control)
    return 0


if __name__ == "__main__":
    sys.exit(main())
