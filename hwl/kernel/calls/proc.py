"""Processes and privileges: ``privctl``, ``statectl``, ``spawn``, ``kill``, ``update``,
``exit``, ``diagctl``, ``getinfo``, as MINIX's ``do_privctl.c``, ``do_fork.c`` and
``do_exec.c`` (one call here), ``do_kill.c``, ``do_update.c``, ``do_getinfo.c``.

A process controls another (privctl set, kill, update) if it is its parent or has
it on its ``control`` line; adding a resource to a system process needs only the
call (the PCI server grants a reserved device to a driver it did not start). The
processes themselves are started, swapped and ended by :mod:`hwl.kernel.lifecycle`.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Protocol

from hwl.config.system_conf import IoRange, MemoryRange
from hwl.ipc import arena, wire
from hwl.kernel.calls.base import (
    I32_MAX,
    I32_MIN,
    U32,
    Fields,
    Reply,
    deny,
    fail,
    get_bool,
    get_int,
    get_str,
    one_entry,
    require_link,
)
from hwl.kernel.calls.watch import Watches
from hwl.kernel.errno import Errno
from hwl.kernel.priv import Priv
from hwl.kernel.proc import Proc, ProcTable, State
from hwl.kernel.stublink import HasLink

log = logging.getLogger("hwl.kernel.calls")


class Processes(Protocol):
    """What the process calls ask of the processes' lifecycle."""

    @property
    def root_endpoint(self) -> int: ...

    def spawn(
        self,
        parent: Proc | None,
        argv: list[str],
        label: str,
        priv: Priv,
        *,
        env: dict[str, str] | None = None,
        arena_size: int = arena.DEFAULT_SIZE,
        endpoint: int | None = None,
        cold: bool = False,
    ) -> Proc: ...

    def doom(self, proc: Proc, reason: str) -> None: ...

    def dying(self, proc: Proc) -> bool: ...

    def update(self, a: Proc, b: Proc) -> None: ...


class IpcRefs(Protocol):
    """IPC's side (hwl.kernel.ipc.Ipc): statectl, and the clock uptime counts from."""

    boot: float

    def clear_refs(self, proc: Proc) -> None: ...


class Rechecker(Protocol):
    """The channels, checked again when a process's privileges change."""

    def recheck(self, proc: Proc) -> None: ...


class ProcCalls:
    def __init__(
        self,
        table: ProcTable,
        procs: Processes,
        ipc: IpcRefs,
        channels: Rechecker,
        machine: HasLink,
        watches: Watches,
    ) -> None:
        self.table = table
        self.watches = watches  # privctl set ends the target's watched doorbells
        self.procs = procs
        self.ipc = ipc
        self.channels = channels
        self.machine = machine

    def _target(self, f: Fields, name: str = "endpoint") -> Proc:
        endpoint = get_int(f, name, I32_MIN, I32_MAX)
        proc = self.table.lookup(endpoint)
        if proc is None:
            fail(Errno.EDEADSRCDST, f"{wire.endpoint_name(endpoint)} is not a live process")
        return proc

    def _controls(self, proc: Proc, target: Proc, call: str) -> None:
        if target.parent != proc.endpoint and not proc.priv.may_control(target.label):
            deny(f"{call}: may not control {target.label} (not its parent nor on its control line)")

    def do_privctl(self, proc: Proc, f: Fields) -> Reply:
        target = self._target(f)
        op = get_str(f, "op")
        if op == "get":
            return {"priv": target.priv.describe()}  # type: ignore[dict-item]
        if op in ("add_io", "add_irq", "add_mem", "add_pci"):
            # MINIX: adding a resource needs only the PRIVCTL call (the PCI server
            # grants a reserved device to a driver it did not start).
            if not target.priv.system:
                deny(f"privctl {op}: {target.label} is a user process")
        else:
            self._controls(proc, target, "privctl")
        priv = target.priv
        if op == "set":
            entry = one_entry("privctl", get_str(f, "conf"), "<privctl>")
            target.priv = Priv(entry)
            target.label = entry.label  # a process is known by its service's label
            self.channels.recheck(target)
            self.watches.drop(target, "its privileges were set anew")
        elif op == "add_io":
            base = get_int(f, "base", 0, 0xFFFF)
            length = get_int(f, "length", 1, 0x10000 - base, 1)
            priv.extra_io.append(IoRange(base, length))
        elif op == "add_irq":
            priv.extra_irq.add(get_int(f, "irq", 0, 15))
        elif op == "add_mem":
            base = get_int(f, "base", 0, U32)
            priv.extra_memory.append(MemoryRange(base, get_int(f, "length", 1, (1 << 32) - base)))
        elif op == "add_pci":  # a reserved function: bus mastering off at its death
            bdf = (get_int(f, "bus", 0, 255), get_int(f, "dev", 0, 31), get_int(f, "fn", 0, 7))
            priv.extra_pci.add(bdf)
        else:
            fail(Errno.EINVAL, f"privctl: unknown op {op!r} "
                 "(set, add_io, add_irq, add_mem, add_pci, get)")  # fmt: skip
        log.info("privctl %s by %s on %s", op, proc.label, target.label)
        return {}

    def do_statectl(self, proc: Proc, f: Fields) -> Reply:
        op = get_str(f, "op")
        if op != "clear_ipc_refs":
            fail(Errno.EINVAL, f"statectl: unknown op {op!r} (clear_ipc_refs)")
        self.ipc.clear_refs(proc)
        return {}

    def do_spawn(self, proc: Proc, f: Fields) -> Reply:
        argv = f.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            fail(Errno.EINVAL, "spawn: argv must be a non-empty list of strings")
        label = get_str(f, "label")
        if not label or "/" in label or len(label) > 64:
            fail(Errno.EINVAL, f"spawn: bad label {label!r}")
        env = f.get("env", {})
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            fail(Errno.EINVAL, "spawn: env must map names to strings")
        size = get_int(f, "arena", arena.DATA_START + 4096, 1 << 30, arena.DEFAULT_SIZE)
        if "conf" in f:
            priv = Priv(one_entry("spawn", get_str(f, "conf"), f"<spawn {label}>"))
        else:
            priv = Priv.user(label)
        reuse = get_int(f, "endpoint", 0, I32_MAX) if "endpoint" in f else None
        try:
            child = self.procs.spawn(
                proc,
                [str(a) for a in argv],
                label,
                priv,
                env={str(k): str(v) for k, v in env.items()},
                arena_size=size,
                endpoint=reuse,
                cold=get_bool(f, "cold"),
            )
        except LookupError as exc:
            fail(Errno.EAGAIN, f"spawn: {exc}")
        except OSError as exc:
            fail(Errno.ENOENT if isinstance(exc, FileNotFoundError) else Errno.ENOEXEC,
                 f"spawn: cannot run {argv[0]!r}: {exc.strerror or exc}")  # fmt: skip
        assert child.pid is not None
        return {"endpoint": child.endpoint, "pid": child.pid}

    def do_kill(self, proc: Proc, f: Fields) -> Reply:
        target = self._target(f)
        signo = get_int(f, "signal", 1, 64, int(signal.SIGKILL))
        self._controls(proc, target, "kill")
        if target.pid is None:
            self.procs.doom(target, f"cut off by {proc.label}")
        else:
            os.kill(target.pid, signo)
        return {}

    def do_update(self, proc: Proc, f: Fields) -> Reply:
        """Swap the processes behind endpoints ``src`` and ``dst`` (live update):
        afterwards the program that ran at ``dst`` answers at ``src`` and the other
        way round; calling it again swaps back."""
        src, dst = self._target(f, "src"), self._target(f, "dst")
        if src is dst:
            fail(Errno.EINVAL, "update: src and dst are the same process")
        if proc in (src, dst):
            fail(Errno.EINVAL, "update: a process cannot update itself")
        for target in (src, dst):
            self._controls(proc, target, "update")
            if self.procs.dying(target):
                fail(Errno.EDEADSRCDST, f"update: {target.label} is dying")
            if target.state in (State.SENDING, State.KCALL):
                fail(Errno.EBUSY, f"update: {target.label} ({wire.endpoint_name(target.endpoint)})"
                     f" is {target.state.value}: only a receiving or running process "
                     "can be swapped")  # fmt: skip
        self.procs.update(src, dst)
        log.info(
            "update by %s: %s now runs %s (pid %s), %s runs %s (pid %s)",
            proc.label,
            wire.endpoint_name(src.endpoint), src.label, src.pid,
            wire.endpoint_name(dst.endpoint), dst.label, dst.pid,
        )  # fmt: skip
        return {}

    def do_exit(self, proc: Proc, f: Fields) -> Reply:
        self.procs.doom(proc, f"exit({get_int(f, 'status', 0, 255, 0)})")
        return {}

    def do_diagctl(self, proc: Proc, f: Fields) -> Reply:
        log.info("diag %s: %s", proc.label, get_str(f, "text")[:1000])
        return {}

    def do_getinfo(self, proc: Proc, f: Fields) -> Reply:
        what = get_str(f, "what")
        if what == "whoami":
            return {"endpoint": proc.endpoint, "label": proc.label, "parent": proc.parent,
                    "root": self.procs.root_endpoint}  # fmt: skip
        if what == "uptime":
            seconds = time.monotonic() - self.ipc.boot
            return {"ticks": int(seconds * wire.HZ), "seconds": seconds, "hz": wire.HZ}
        if what == "proctab":
            return {"procs": [p.describe() for p in self.table]}  # type: ignore[misc]
        if what == "exits":
            records = [
                {"endpoint": r.endpoint, "pid": r.pid, "label": r.label, "status": r.status,
                 "signal": r.signal}
                for r in proc.exits
            ]  # fmt: skip
            proc.exits.clear()
            return {"exits": records}  # type: ignore[dict-item]
        if what == "priv":
            return {"priv": proc.priv.describe()}  # type: ignore[dict-item]
        if what == "machine":
            link = require_link(self.machine)
            return {"tsc_khz": link.tsc_khz, "ram": link.memory.size}
        fail(
            Errno.EINVAL,
            f"getinfo: unknown item {what!r} (whoami, uptime, proctab, exits, priv, machine)",
        )
