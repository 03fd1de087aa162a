"""Bringing the kernel process up: logging, the link, the socket, the root process."""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import resource
import signal
import socket
import traceback
from pathlib import Path
from typing import Any

from hwl.kernel.kernel import Kernel
from hwl.kernel.priv import Priv
from hwl.link.link import Link
from hwl.link.memory import GuestMemory
from hwl.procs import pid_alive

log = logging.getLogger("hwl.kernel")


class _FdDoorbell:
    """COM2 as an inherited socket fd."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: bytes) -> int | None:
        try:
            return os.write(self.fd, data)
        except BlockingIOError:
            return 0

    def fileno(self) -> int:
        return self.fd


def open_link(spec: dict[str, Any]) -> Link:
    size = int(spec["ram_size"])
    ram_fd = int(spec["ram_fd"])
    mapping = mmap.mmap(ram_fd, size, mmap.MAP_SHARED)
    os.set_inheritable(ram_fd, False)
    memory = GuestMemory(mapping, size, fd=ram_fd)  # kept: dmamap hands it to drivers
    pid = int(spec["qemu_pid"])
    return Link(
        memory,
        int(spec["ctl"]),
        int(spec["slots"]),
        _FdDoorbell(int(spec["doorbell_fd"])),
        alive=lambda: pid_alive(pid),
    )


def _drain(fd: int) -> None:
    """Swallow the bytes of the signal wake-up pipe (the handler has run)."""
    with contextlib.suppress(BlockingIOError):
        os.read(fd, 512)


def _more_files() -> None:
    """Raise the open-file limit to the hard one (at most 1 << 16): the kernel holds
    both ends of every call channel, two descriptors each, besides a socket, an
    arena and a pidfd per process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard if hard != resource.RLIM_INFINITY else 1 << 16, 1 << 16)
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            log.warning("open-file limit stays %d: %s", soft, exc)


def main(config: dict[str, Any]) -> int:
    run_dir = Path(config["run_dir"])
    logging.basicConfig(
        filename=run_dir / "kernel.log",
        level=logging.DEBUG if os.environ.get("HWL_KERNEL_DEBUG") else logging.INFO,
        format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    ready = os.fdopen(int(config["ready_fd"]), "w")
    _more_files()
    try:
        link = open_link(config["link"]) if config.get("link") else None
        kernel = Kernel(run_dir, link)
        if "dma_keep_seconds" in config:
            kernel.calls.keeper.keep_seconds = float(config["dma_keep_seconds"])
        kernel.listen()
        kernel.lifecycle.start_forkserver()
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGTERM, kernel.stop)
        signal.signal(signal.SIGINT, kernel.stop)
        kernel.watch(wake_r, lambda: _drain(wake_r))
        label = str(config.get("root_label", "root"))
        root = config["root"]
        if "fd" in root:
            conn = socket.socket(fileno=int(root["fd"]))
            kernel.lifecycle.add_process(conn, label, Priv.root(label), root=True)
        else:
            argv = [str(a) for a in root["argv"]]
            kernel.lifecycle.spawn(None, argv, label, Priv.root(label), root=True)
    except Exception:
        ready.write("error " + traceback.format_exc().replace("\n", "\\n") + "\n")
        ready.close()
        raise
    ready.write(f"ready {kernel.socket_path}\n")
    ready.close()
    log.info("kernel up: socket %s, link %s", kernel.socket_path, "yes" if link else "none")
    try:
        kernel.serve_forever()
    finally:
        kernel.shutdown()
        log.info("kernel stopped")
    return 0
