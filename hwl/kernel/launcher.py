"""Starting a machine's kernel process, from the process that booted the machine.

The machine hands over its link (guest RAM and the doorbell line, as fds); from
then on only the kernel drives the stub. Unless a root program is given, the
starter itself becomes the root process: it keeps the other end of a socketpair,
with full privileges, as :attr:`KernelProcess.root`.

See docs/kernel.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hwl.errors import HwlError
from hwl.ipc import wire
from hwl.ipc.client import Connection
from hwl.machine import placement as placing
from hwl.machine.machine import die_with_parent

if TYPE_CHECKING:
    from hwl.machine.machine import Machine

log = logging.getLogger(__name__)


class KernelError(HwlError):
    """The kernel process could not start, or died."""


def _start_child(parent: int, cpus: frozenset[int]) -> None:
    """The kernel's preexec: die with the starter, run on ``cpus`` (its children inherit)."""
    die_with_parent(parent)
    placing.pin_child(cpus)


class KernelProcess:
    """A running kernel: its socket, its root connection (if the starter is root)."""

    def __init__(
        self,
        run_dir: Path,
        proc: subprocess.Popen[bytes],
        root: Connection | None,
        own_dir: bool = False,
    ) -> None:
        self.run_dir = run_dir
        self.proc = proc
        self.root = root
        self.socket_path = run_dir / wire.SOCKET_NAME
        self._own_dir = own_dir  # a temporary run directory, removed on stop

    @classmethod
    def start(
        cls,
        machine: Machine | None = None,
        *,
        run_dir: Path | None = None,
        root_argv: list[str] | None = None,
        root_label: str = "root",
        timeout: float = 15.0,
        dma_keep_seconds: float | None = None,
        placement: placing.Placement | None = None,
    ) -> KernelProcess:
        """Start the kernel for ``machine`` (or, without one, a kernel with no
        hardware: IPC only, in ``run_dir`` or a fresh temporary directory).
        ``dma_keep_seconds``: how long a dead driver's tagged DMA buffers wait
        for adoption (tests shorten it). ``placement``: the cores of the kernel and
        of every process it starts (they inherit them); default: the machine's."""
        own_dir = False
        if machine is not None:
            run_dir = machine.run_dir
        elif run_dir is None:
            run_dir = Path(
                tempfile.mkdtemp(prefix="hwl-kernel-", dir=os.environ.get("HWL_RUN_ROOT"))
            )
            own_dir = True
        run_dir.chmod(0o700)
        pass_fds: list[int] = []
        config: dict[str, Any] = {"run_dir": str(run_dir), "root_label": root_label, "link": None}
        if dma_keep_seconds is not None:
            config["dma_keep_seconds"] = float(dma_keep_seconds)
        if machine is not None:
            handover = machine.hand_over_link("the kernel process")
            config["link"] = {
                "ram_fd": handover.ram_fd,
                "ram_size": handover.ram_size,
                "doorbell_fd": handover.doorbell_fd,
                "ctl": handover.ctl,
                "slots": handover.slots,
                "qemu_pid": handover.qemu_pid,
            }
            pass_fds += [handover.ram_fd, handover.doorbell_fd]
        ours: socket.socket | None = None
        if root_argv is None:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            config["root"] = {"fd": theirs.fileno()}
            pass_fds.append(theirs.fileno())
        else:
            config["root"] = {"argv": root_argv}
        ready_r, ready_w = os.pipe()
        config["ready_fd"] = ready_w
        pass_fds.append(ready_w)
        parent = os.getpid()
        if placement is None and machine is not None:
            placement = machine.placement
        cpus = placing.target(placement.hwl if placement is not None else None)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hwl.kernel", json.dumps(config)],
                stdin=subprocess.DEVNULL,
                stdout=(run_dir / "kernel.out").open("ab"),
                stderr=subprocess.STDOUT,
                pass_fds=pass_fds,
                preexec_fn=lambda: _start_child(parent, cpus),
            )
            placing.check(proc.pid, cpus, "the kernel")
        finally:
            os.close(ready_w)
            if root_argv is None:
                theirs.close()
        try:
            line = cls._wait_ready(ready_r, proc, run_dir, timeout)
        except BaseException:
            if ours is not None:
                ours.close()
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
            raise
        finally:
            os.close(ready_r)
        log.info("kernel up: pid %d, %s", proc.pid, line)
        root = Connection(ours) if ours is not None else None
        kernel = cls(run_dir, proc, root, own_dir)
        if machine is not None:
            machine.before_close(kernel.stop)
        return kernel

    @staticmethod
    def _wait_ready(fd: int, proc: subprocess.Popen[bytes], run_dir: Path, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        data = b""
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise KernelError(
                    f"the kernel did not start within {timeout} s; see {run_dir}/kernel.log"
                )
            ready, _, _ = select.select([fd], [], [], min(left, 0.1))
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                data += chunk
        line = data.decode(errors="replace").strip()
        if not line.startswith("ready"):
            out = ""
            with contextlib.suppress(OSError):
                out = (run_dir / "kernel.out").read_text(errors="replace")[-3000:]
            raise KernelError(
                f"the kernel failed to start (exit {proc.poll()}): "
                f"{line.replace(chr(92) + 'n', chr(10)) or '(no word)'}\n{out}"
            )
        return line

    def attach(self) -> Connection:
        """A new user-process connection to this kernel."""
        return Connection.attach(self.socket_path)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """End the kernel (SIGTERM, then SIGKILL) and with it every process it started."""
        if self.root is not None:
            self.root.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._own_dir and not os.environ.get("HWL_KEEP_RUN_DIR"):
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> KernelProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
