"""Host processes: whether one still exists (for the cleanups that outlive their
owner), which run below one (for the checks that nothing was left behind), and
what each of hwl's own says it is in ``ps`` and ``top``."""

from __future__ import annotations

import os
from pathlib import Path

import setproctitle

TITLE_PREFIX = "hwl: "


def set_title(name: str, detail: str = "") -> None:
    """Name this process for ``ps`` (``hwl: at_wini (ep 32771)``) and ``top``
    (its command, ``at_wini``), so a developer finds the process to attach a
    debugger or profiler to among the fork server's children, which would
    otherwise all read ``python3 -m hwl.kernel.forkserver``."""
    setproctitle.setproctitle(f"{TITLE_PREFIX}{name}{f' ({detail})' if detail else ''}")
    setproctitle.setthreadtitle(name[:15])  # the kernel's comm: 15 bytes


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists (another user's process too; a zombie counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def descendants(root: int) -> set[int]:
    """Every process below ``root`` now (children, their children, ...), read from
    /proc: a process that ends meanwhile is left out."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    found: set[int] = set()
    todo = [root]
    while todo:
        parent = todo.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                todo.append(pid)
    return found
