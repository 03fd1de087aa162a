"""Starting programs as processes: the connection to the kernel is inherited.

Python programs are forked from the fork server (hwl/kernel/forkserver.py), with
the interpreter and hwl already loaded; anything else, or a spawn that asks for
it, starts cold with ``start``.

The child finds its connection in the fd named by ``$HWL_KERNEL_FD``; nothing
else names it, so no process can take over another's endpoint. Output goes to
``<label>.log`` in the run directory. A child dies with the kernel
(PR_SET_PDEATHSIG), so a killed machine leaves no orphans.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from hwl.ipc import wire
from hwl.machine.machine import die_with_parent


def start(
    argv: list[str], conn_fd: int, log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Run ``argv`` with the kernel connection ``conn_fd``; raises OSError when the
    program cannot be started (``check_program`` first for a clear error)."""
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
            preexec_fn=lambda: die_with_parent(kernel_pid),
        )


class ForkServer:
    """The kernel's side of hwl/kernel/forkserver.py: ask it to fork, hear of exits."""

    def __init__(self, run_dir: Path) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        kernel_pid = os.getpid()
        with (run_dir / "forkserver.log").open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hwl.kernel.forkserver", str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=(theirs.fileno(),),
                preexec_fn=lambda: die_with_parent(kernel_pid),
            )
        theirs.close()
        self.sock = ours
        self.exits: list[tuple[int, int]] = []  # (pid, exit code) reported, not yet taken

    def fileno(self) -> int:
        return self.sock.fileno()

    def spawn(
        self,
        argv: list[str],
        conn_fd: int,
        log_path: Path,
        env: dict[str, str] | None = None,
        label: str = "",
    ) -> tuple[int, int]:
        """Fork a process running ``argv`` (``label``: its process title until SEF
        adds the endpoint); returns its pid and a pidfd for it. Raises OSError
        when the fork server does not answer (the caller then starts it cold)."""
        # The fork server started with the kernel's environment; only additions travel.
        request = {"argv": argv, "env": env or {}, "log": str(log_path), "label": label}
        self.sock.setblocking(True)
        self.sock.settimeout(5)
        try:
            socket.send_fds(self.sock, [json.dumps(request).encode()], [conn_fd])
            while True:
                data, fds, _flags, _addr = socket.recv_fds(self.sock, 65536, 1)
                if not data:
                    raise OSError("the fork server is gone")
                answer = json.loads(data)
                if "exit" in answer:
                    self.exits.append((int(answer["exit"]), int(answer["code"])))
                elif "pid" in answer and len(fds) == 1:
                    return int(answer["pid"]), fds[0]
                else:
                    for fd in fds:
                        os.close(fd)
                    raise OSError(f"the fork server refused: {answer.get('error')}")
        finally:
            self.sock.setblocking(False)

    def take_exits(self) -> list[tuple[int, int]]:
        """Exit reports that arrived, including any read while spawning."""
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            if not data:
                break
            answer = json.loads(data)
            if "exit" in answer:
                self.exits.append((int(answer["exit"]), int(answer["code"])))
        exits, self.exits = self.exits, []
        return exits

    def close(self) -> None:
        self.sock.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def check_program(argv: list[str]) -> None:
    """Raise FileNotFoundError now, rather than start a process that dies at once."""
    if not argv:
        raise FileNotFoundError("an empty command line")
    if shutil.which(argv[0]) is None:
        raise FileNotFoundError(2, "no such program", argv[0])
    if len(argv) > 1 and argv[1].endswith(".py") and not os.path.isfile(argv[1]):
        raise FileNotFoundError(2, "no such script", argv[1])
