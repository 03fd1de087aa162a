"""Profiles: the shipped one parses; each malformed line gets an error naming file, line, key."""

from __future__ import annotations

from pathlib import Path

import pytest

from hwl import Profile, ProfileError
from hwl.machine.profile import parse_size


def test_shipped_profile_parses(tmp_path: Path) -> None:
    p = Profile.load("pc")
    assert p.machine_type == "pc"
    assert p.memory == 128 << 20
    assert {d.id: d.size for d in p.disks} == {"hd0": 128 << 20, "hd1": 32 << 20}
    text = p.render(tmp_path)
    assert f'file = "{tmp_path / "hd0.img"}"' in text
    assert "[hwl-disk" not in text and "[memory]" not in text
    drivers = {g.options.get("driver") for g in p.groups if g.name == "device"}
    assert {"ne2k_pci", "rtl8139", "e1000", "ide-hd"} <= drivers


def test_disks_are_created_on_demand(tmp_path: Path) -> None:
    made = Profile.load("pc").create_disks(tmp_path)
    assert made["hd1"].stat().st_size == 32 << 20
    first = made["hd1"].read_bytes()[:4096]
    assert first != bytes(4096)  # fill = "random"
    with made["hd1"].open("r+b") as fh:  # a machine writes its own copy only
        fh.write(bytes(4096))
    again = Profile.load("pc").create_disks(tmp_path / "..")
    assert again["hd1"].read_bytes()[:4096] == first  # the seed makes it reproducible
    for path in again.values():
        path.unlink()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.cfg"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[drive "d"\n', r"bad\.cfg:1: malformed group header"),
        ('[drive "d"]\n  file = unquoted\n', r"bad\.cfg:2: malformed line"),
        ('  file = "x"\n', r"bad\.cfg:1: option 'file' outside any \[group\]"),
        ('[memory]\n  size = "lots"\n', r"bad\.cfg:2: key 'size': 'lots' is not a size"),
        (
            '[drive "d"]\n[hwl-disk "d"]\n  size = "1000"\n',
            r"bad\.cfg:3: key 'size': must be a positive multiple of 512",
        ),
        (
            '[drive "d"]\n[hwl-disk "d"]\n  size = "1M"\n  fill = "ones"\n',
            r"bad\.cfg:4: key 'fill'",
        ),
        (
            '[drive "d"]\n[hwl-disk "d"]\n  size = "1M"\n  colour = "red"\n',
            r"bad\.cfg:4: key 'colour': unknown",
        ),
        ('[hwl-disk "x"]\n  size = "1M"\n', r'bad\.cfg:1: \[hwl-disk "x"\] has no \[drive "x"\]'),
        ('[drive "d"]\n  if = "none"\n  if = "ide"\n', r"bad\.cfg:3: key 'if': set twice"),
        ('[machine]\n  type = "pc"\n  accel = "kvm"\n', r"bad\.cfg:3: key 'accel'"),
    ],
)
def test_malformed_profiles_name_file_line_and_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    with pytest.raises(ProfileError, match=expected):
        Profile.load(write(tmp_path, text))


def test_unknown_profile_lists_known_ones() -> None:
    with pytest.raises(ProfileError, match=r"no machine profile 'nope' \(known: .*pc"):
        Profile.load("nope")


def test_sizes() -> None:
    assert parse_size("64M") == 64 << 20
    assert parse_size("512") == 512
    assert parse_size("1g") == 1 << 30
    with pytest.raises(ValueError):
        parse_size("-1M")
