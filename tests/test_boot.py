"""Booting a system: the profile's boot list, RS's synchronous boot, `hwl up`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hwl import Profile, ProfileError
from hwl.system.boot import BootError, System, boot_entries
from hwl.system.rs import up_fields

ECHO = [sys.executable, "-m", "hwl.servers.echo"]
LABELS = ["ds", "pci", "at_wini", "at_wini1", "vfs", "echo"]
FAILING = str(Path(__file__).with_name("programs") / "init_fails.py")


def profile_with(tmp_path: Path, services: str) -> Profile:
    path = tmp_path / "m.cfg"
    path.write_text('[machine]\n  type = "pc"\n' + services)
    return Profile.load(path)


def test_shipped_boot_list() -> None:
    entries = boot_entries(Profile.load("pc"))
    assert [e["label"] for e in entries] == LABELS
    assert entries[0]["argv"] == [sys.executable, "-m", "hwl.servers.ds"]
    assert entries[3]["argv"] == [sys.executable, "-m", "hwl.drivers.at_wini", "instance=1"]
    assert entries[5]["period"] == 60  # "1HZ"


@pytest.mark.parametrize(
    ("group", "line", "message"),
    [
        ('[hwl-service "x"]\n  args = "-v"\n', 3, 'needs program = "..."'),
        (
            '[hwl-service "x"]\n  program = "hwl.servers.echo"\n  colour = "red"\n',
            5,
            "key 'colour'",
        ),
        ('[hwl-service]\n  program = "hwl.servers.echo"\n', 3, "needs a label"),
        ('[hwl-service "x"]\n  program = "no.such.module"\n', 3, "no such program"),
        ('[hwl-service "x"]\n  program = "hwl.servers.echo"\n  period = "1s"\n', 3, "period"),
        ('[hwl-service "x"]\n  program = "hwl.servers.echo"\n  policy = "often"\n', 3, "policy"),
    ],
)
def test_a_bad_boot_entry_names_file_and_line(
    tmp_path: Path, group: str, line: int, message: str
) -> None:
    with pytest.raises(ProfileError) as err:
        boot_entries(profile_with(tmp_path, group))
    assert f"{tmp_path / 'm.cfg'}:{line}:" in str(err.value)
    assert message in str(err.value)


def test_boot_services_come_up_in_order_and_are_published() -> None:
    boot = [up_fields(ECHO, label="first"), up_fields([*ECHO, "--tag", "2"], label="second")]
    with System.start(None, boot) as system:
        rows = {row.label: row for row in system.rs.status()}
        assert rows["first"].state == rows["second"].state == "up"
        events = system.events()
        ups = [e["label"] for e in events if e["event"] == "up"]
        assert ups == ["first", "second"]
        assert events[-1]["event"] == "boot-done"
        assert system.rs.lookup("second") == rows["second"].endpoint


def test_a_boot_service_that_fails_init_fails_the_boot_by_name() -> None:
    boot = [up_fields(ECHO, label="fine"), up_fields([sys.executable, FAILING], label="broken")]
    boot.append(up_fields(ECHO, label="never"))
    with pytest.raises(BootError, match="boot failed at service 'broken'"):
        System.start(None, boot)


@pytest.mark.qemu
def test_hwl_up_boots_the_pc_and_shows_recovery() -> None:
    """The README's main job, end to end on QEMU: a disk read through VFS while
    at_wini is killed sees no error, and its bytes are the image's."""
    out = subprocess.run(
        [sys.executable, "-m", "hwl.cli.main", "up", "pc", "--kill", "at_wini", "--once"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    rows = [line.split() for line in lines if line.split()[:1] and line.split()[0] in LABELS]
    table = [row for row in rows if len(row) >= 7 and row[1].isdigit()]
    assert [row[0] for row in table[:6]] == LABELS
    assert all(row[-3] == "up" for row in table)  # STATE; POLICY and FLAGS follow
    assert any(line.startswith("at_wini is back as pid") for line in lines)
    assert "read 16 MiB of /dev/c0d0 across the kill: no error, every byte matches hd0.img" in lines
    last = [row for row in table if row[0] == "at_wini"][-1]
    assert last[3] == "1"  # restarts
