"""The client side of RS: durations, the ``service`` command line, program resolution,
and one real ``service`` run against a kernel whose root answers as RS would."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from hwl import ipc
from hwl.cli import main as hwl_main
from hwl.cli import service
from hwl.cli.service import USAGE, CommandError, Request, parse_command
from hwl.ipc import codec
from hwl.ipc.wire import HZ
from hwl.kernel.errno import Errno
from hwl.kernel.launcher import KernelProcess
from hwl.proto.rs import RS_FI, RS_SYSCTL, SysctlType
from hwl.proto.sef import FiType
from hwl.system import proto
from hwl.system.durations import MAX_TICKS, format_ticks, parse_ticks
from hwl.system.proto import LuState, Policy, UpdateFlag
from hwl.system.rs import (
    ProgramNotFound,
    RsError,
    ServiceStatus,
    UpdateRow,
    UpdateStatus,
    default_label,
    edit_fields,
    program_argv,
    up_fields,
    update_fields,
)

ROOT = Path(__file__).resolve().parents[1]
SERVICE = [sys.executable, "-m", "hwl.cli.service"]


# --- fixtures ----------------------------------------------------------------


@pytest.fixture
def script(tmp_path: Path) -> Path:
    """A Python program on disk, as ``service up prog.py`` would name it."""
    path = tmp_path / "blkdrv.py"
    path.write_text("print('hello')\n")
    return path


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable package with a runnable module and a package without __main__."""
    pkg = tmp_path / "mods" / "fakesrv"
    (pkg / "netdrv").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "ds.py").write_text("")
    (pkg / "netdrv" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    return "fakesrv.ds"


def request(*argv: str) -> Request:
    command = parse_command(list(argv))
    assert command.request is not None
    return command.request


def refused(*argv: str) -> CommandError:
    with pytest.raises(CommandError) as info:
        parse_command(list(argv))
    return info.value


# --- durations ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ticks"),
    [("0", 0), ("1", 1), ("120", 120), ("5HZ", 5 * HZ), ("0HZ", 0), ("007", 7)],
)
def test_durations_are_ticks_or_nhz(text: str, ticks: int) -> None:
    assert parse_ticks(text) == ticks


@pytest.mark.parametrize("text", ["", "-5", "5hz", "1.5HZ", "HZ", "5 HZ", " 5", "5s", "0x10"])
def test_bad_durations_name_the_text_and_the_forms(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_ticks(text, "period")
    assert f"bad period {text!r}" in str(info.value)
    assert "NHZ" in str(info.value)


def test_a_duration_over_a_year_is_refused() -> None:
    with pytest.raises(ValueError, match="more than a year"):
        parse_ticks(str(MAX_TICKS + 1))
    assert parse_ticks(str(MAX_TICKS)) == MAX_TICKS


def test_durations_format_as_nhz_when_exact() -> None:
    assert format_ticks(5 * HZ) == "5HZ"
    assert format_ticks(90) == "90"
    assert format_ticks(0) == "0"
    assert parse_ticks(format_ticks(7 * HZ)) == 7 * HZ


# --- program resolution ------------------------------------------------------


def test_a_py_file_runs_under_this_interpreter_by_absolute_path(
    script: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(script.parent)
    assert program_argv("blkdrv.py", ["-v"]) == [sys.executable, str(script), "-v"]
    assert default_label(program_argv("blkdrv.py")) == "blkdrv"


def test_an_executable_runs_itself(tmp_path: Path) -> None:
    exe = tmp_path / "tool"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    assert program_argv(str(exe), ["a b"]) == [str(exe), "a b"]
    assert default_label(program_argv(str(exe))) == "tool"


def test_a_module_runs_with_dash_m(module: str) -> None:
    assert program_argv(module, ["x"]) == [sys.executable, "-m", module, "x"]
    assert default_label(program_argv(module)) == "ds"


@pytest.mark.parametrize(
    ("program", "why"),
    [
        ("nosuchmodule.really", "no importable module"),
        ("fakesrv.netdrv", "no importable module"),  # a package without __main__
        ("fakesrv.nope", "no importable module"),
        ("./missing.py", "no such file by that name"),
        ("/no/such/file", "no such file by that name"),
        ("bad name", "no importable module"),
    ],
)
def test_a_missing_program_is_a_clear_error(module: str, program: str, why: str) -> None:
    with pytest.raises(ProgramNotFound) as info:
        program_argv(program)
    assert str(info.value).startswith(f"no such program: {program!r}")
    assert why in str(info.value)


def test_a_plain_file_is_not_a_program(tmp_path: Path) -> None:
    data = tmp_path / "data.txt"
    data.write_text("")
    with pytest.raises(ProgramNotFound, match=r"neither a \.py file nor executable"):
        program_argv(str(data))
    with pytest.raises(ProgramNotFound, match="not a regular file"):
        program_argv(str(tmp_path))


def test_default_labels() -> None:
    assert default_label([sys.executable, "-m", "hwl.servers.ds"]) == "ds"
    assert default_label(["python3", "/x/at_wini.py", "-q"]) == "at_wini"
    assert default_label(["/usr/bin/filter.py"]) == "filter"
    assert default_label(["/sbin/e1000"]) == "e1000"


# --- requests with a label or nothing ----------------------------------------


@pytest.mark.parametrize(
    ("name", "m_type"),
    [
        ("down", proto.RS_DOWN),
        ("refresh", proto.RS_REFRESH),
        ("restart", proto.RS_RESTART),
        ("clone", proto.RS_CLONE),
        ("unclone", proto.RS_UNCLONE),
        ("lookup", proto.RS_LOOKUP),
    ],
)
def test_label_requests(name: str, m_type: int) -> None:
    assert request(name, "at_wini") == Request(name, m_type, {"label": "at_wini"})
    missing = refused(name)
    assert missing.code == Errno.EINVAL and missing.usage
    assert f"{name} needs a target label" in str(missing)
    extra = refused(name, "at_wini", "ds")
    assert extra.code == Errno.EINVAL and "unexpected argument 'ds'" in str(extra)


@pytest.mark.parametrize(("name", "m_type"), [("shutdown", proto.RS_SHUTDOWN), ("status", 0)])
def test_requests_without_arguments(name: str, m_type: int) -> None:
    m_type = m_type or proto.RS_STATUS
    assert request(name) == Request(name, m_type, {})
    assert refused(name, "now").code == Errno.EINVAL


# --- fi, run -------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(FiType))
def test_fi_types(kind: FiType) -> None:
    assert request("fi", "at_wini", "-type", kind.option) == Request(
        "fi", RS_FI, {"label": "at_wini", "type": int(kind)}
    )


def test_fi_defaults_to_minix_crash() -> None:
    assert request("fi", "at_wini") == Request("fi", RS_FI, {"label": "at_wini", "type": 0})


def test_run_is_up_never_restarted(script: Path) -> None:
    sent = request("run", str(script), "-label", "once", "-policy", "restart")
    up = request("up", str(script), "-label", "once", "-policy", "restart")
    assert sent.m_type == up.m_type == proto.RS_UP
    assert sent.fields == {**up.fields, "run": True}
    assert "run" not in up.fields  # an up is as it was on the wire


def test_installed_as_minix_service_not_service() -> None:
    """Debian's /usr/sbin/service is another program: ours must not shadow it."""
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("minix-service") == "hwl.cli.service:main"
    assert "service" not in scripts
    out = subprocess.run(
        [str(Path(sys.executable).parent / "minix-service"), "-h"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "service fi LABEL [-type crash|hang|" in out.stdout


# --- up ------------------------------------------------------------------------


def test_up_with_defaults(script: Path) -> None:
    assert request("up", str(script)) == Request(
        "up",
        proto.RS_UP,
        {
            "argv": [sys.executable, str(script)],
            "label": "blkdrv",
            "period": 0,
            "script": "",
            "conf": "",
            "dev": "",
            "restarts": -1,
            "policy": Policy.RESET,
            "cold": False,
        },
    )


def test_up_with_every_option(script: Path, module: str, tmp_path: Path) -> None:
    recovery = tmp_path / "recover.sh"
    recovery.write_text("#!/bin/sh\n")
    conf = tmp_path / "system.conf"
    conf.write_text("service other { };\nservice eth0 { irq 11; ipc SYSTEM ds; };\n")
    got = request(
        "up", module, "-args", "-q --name 'two words'", "-dev", "c0d0", "-label", "eth0",
        "-period", "2HZ", "-script", str(recovery), "-config", str(conf), "-restarts", "3",
        "-policy", "restart", "-cold",
    )  # fmt: skip
    assert got.fields == {
        "argv": [sys.executable, "-m", module, "-q", "--name", "two words"],
        "label": "eth0",
        "period": 2 * HZ,
        "script": str(recovery),
        "conf": "service eth0\n{\n\tipc SYSTEM ds;\n\tirq 11;\n};\n",
        "dev": "c0d0",
        "restarts": 3,
        "policy": Policy.RESTART,
        "cold": True,
    }


def test_up_sends_a_relative_recovery_script_by_absolute_path(
    script: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(script.parent)
    (script.parent / "rec.sh").write_text("")
    assert request("up", "blkdrv.py", "-script", "rec.sh").fields["script"] == str(
        script.parent / "rec.sh"
    )
    assert request("up", "blkdrv.py", "-script", "rs.single").fields["script"] == "rs.single"


def test_up_restarts_may_be_unlimited(script: Path) -> None:
    assert request("up", str(script), "-restarts", "-1").fields["restarts"] == -1
    assert request("up", str(script), "-restarts", "0").fields["restarts"] == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["-period"], "option -period needs a value"),
        (["-period", "5 s"], "bad period '5 s'"),
        (["-period", "-1"], "bad period '-1'"),
        (["-restarts", "-2"], "bad number of restarts '-2'"),
        (["-restarts", "many"], "bad number of restarts 'many'"),
        (["-policy", "keep"], "bad policy 'keep': expected reset or restart"),
        (["-label", ""], "-label needs a non-empty label"),
        (["-major", "3"], "unknown option -major"),
        (["-state", "1"], "unknown option -state"),
        (["stray"], "unexpected argument 'stray'"),
        (["-label", "a", "-label", "b"], "option -label given twice"),
        (["-args", "'unclosed"], "cannot be split"),
    ],
)
def test_up_refuses_malformed_options(script: Path, options: list[str], message: str) -> None:
    error = refused("up", str(script), *options)
    assert error.code == Errno.EINVAL and error.usage
    assert message in str(error)


def test_up_needs_an_existing_program() -> None:
    assert refused("up").code == Errno.EINVAL
    assert "up needs a program to start" in str(refused("up", "-label", "x"))
    missing = refused("up", "/no/such/driver.py")
    assert missing.code == Errno.ENOENT and not missing.usage
    assert "no such program: '/no/such/driver.py'" in str(missing)


# --- -config -----------------------------------------------------------------


def test_config_with_a_syntax_error_names_file_and_line(script: Path, tmp_path: Path) -> None:
    conf = tmp_path / "bad.conf"
    conf.write_text("service blkdrv\n{\n\tirq 99;\n};\n")
    error = refused("up", str(script), "-config", str(conf))
    assert error.code == 1 and not error.usage  # MINIX: errx(1, "couldn't parse config")
    assert f"{conf}:3: service blkdrv: key 'irq'" in str(error)


def test_config_without_the_label_lists_what_it_has(script: Path, tmp_path: Path) -> None:
    conf = tmp_path / "other.conf"
    conf.write_text("service a { };\nservice b { };\n")
    error = refused("up", str(script), "-config", str(conf))
    assert error.code == 1
    assert f"{conf}: no entry 'service blkdrv' (entries: a, b)" in str(error)
    assert "cannot read" in str(refused("up", str(script), "-config", str(tmp_path / "none")))


# --- edit --------------------------------------------------------------------


def test_edit_a_label_sends_only_the_changes() -> None:
    got = request("edit", "at_wini", "-period", "3HZ", "-policy", "restart", "-cold")
    assert got == Request(
        "edit",
        proto.RS_EDIT,
        {"label": "at_wini", "period": 3 * HZ, "policy": Policy.RESTART, "cold": True},
    )


def test_edit_in_minix_form_sets_the_program(script: Path) -> None:
    got = request("edit", str(script), "-label", "disk", "-args", "-x 1")
    assert got.fields == {"label": "disk", "argv": [sys.executable, str(script), "-x", "1"]}


def test_edit_refuses_args_without_a_program_and_an_empty_edit() -> None:
    error = refused("edit", "at_wini", "-args", "-v")
    assert error.code == Errno.EINVAL and "service edit PROGRAM -label at_wini" in str(error)
    assert "nothing to change for 'at_wini'" in str(refused("edit", "at_wini"))
    assert "edit needs a label" in str(refused("edit"))


# --- update ------------------------------------------------------------------


def test_update_self_with_defaults() -> None:
    assert request("update", "self", "-label", "ds") == Request(
        "update",
        proto.RS_UPDATE,
        {
            "label": "ds",
            "argv": [],
            "state": LuState.WORK_FREE,
            "maxtime": 0,
            "flags": UpdateFlag.NONE,
            "conf": "",
        },
    )


def test_update_flags_go_before_the_request(script: Path) -> None:
    fields = request("-o", "-xy", "update", "self", "-label", "ds").fields
    assert fields["flags"] == (
        UpdateFlag.PREPARE_ONLY | UpdateFlag.FORCE_INIT_CRASH | UpdateFlag.FORCE_INIT_FAIL
    )
    assert request("-z", "update", str(script)).fields["flags"] == UpdateFlag.FORCE_INIT_TIMEOUT
    assert request("-c", "-r", "update", str(script)).fields["flags"] == UpdateFlag.NONE


def test_q_queues_an_update_with_its_other_flags(script: Path) -> None:
    """MINIX's -q (batch mode): the update is queued for ``sysctl upd_run``."""
    assert request("-q", "update", str(script)).fields["flags"] == UpdateFlag.BATCH
    fields = request("-qx", "update", "self", "-label", "ds").fields
    assert fields["flags"] == UpdateFlag.BATCH | UpdateFlag.FORCE_INIT_CRASH
    assert request("-o", "-q", "update", str(script)).fields["flags"] == (
        UpdateFlag.BATCH | UpdateFlag.PREPARE_ONLY
    )


@pytest.mark.parametrize("kind", list(SysctlType))
def test_sysctl_types_are_minix_names_and_numbers(kind: SysctlType) -> None:
    assert request("sysctl", kind.name.lower()) == Request(
        f"sysctl {kind.name.lower()}", RS_SYSCTL, {"subtype": int(kind)}
    )
    # MINIX's com.h numbers
    numbers = {"srv_status": 1, "upd_start": 2, "upd_run": 3, "upd_stop": 4, "upd_status": 5}
    assert numbers[kind.option] == kind


def test_upd_status_is_printed_in_queue_order() -> None:
    queued: dict[str, codec.Value] = {"state": 1, "maxtime": 3.0, "endpoint": 32770}
    queued["program"] = "hwl.servers.echo"
    rows: list[codec.Value] = [
        {**queued, "label": "a", "phase": "prepared", "flags": 0x10, "new_endpoint": 32773,
         "batch": True},
        {**queued, "label": "b", "phase": "queued", "flags": 0x11, "new_endpoint": 0x6ACE,
         "batch": True},
        {**queued, "label": "c", "phase": "init", "flags": 0x2, "new_endpoint": 32780,
         "batch": False},
    ]  # fmt: skip
    status = UpdateStatus("running", tuple(UpdateRow.from_fields(row) for row in rows))
    lines = service.format_upd_status(status).splitlines()
    assert lines[0] == "A 2-service update is running:"
    assert lines[1].split()[:8] == [
        "#", "LABEL", "PHASE", "STATE", "FLAGS", "MAXTIME", "ENDPOINT", "NEW"
    ]  # fmt: skip
    assert lines[2].split()[:8] == ["1", "a", "prepared", "1", "-", "3s", "32770", "32773"]
    assert lines[3].split()[:8] == ["2", "b", "queued", "1", "-o", "3s", "32770", "-"]
    assert lines[4].split()[:8] == ["-", "c", "init", "1", "-x", "3s", "32770", "32780"]
    empty = UpdateStatus("none", ())
    assert service.format_upd_status(empty) == "No update is in progress or queued"
    with pytest.raises(ValueError, match="'batch' is 1, not a bool"):
        UpdateRow.from_fields({**rows[0], "batch": 1})  # type: ignore[dict-item]


def test_update_to_a_program_with_state_maxtime_and_args(script: Path) -> None:
    fields = request(
        "update", str(script), "-state", "request_free", "-maxtime", "2HZ", "-args", "--v2"
    ).fields
    assert fields["argv"] == [sys.executable, str(script), "--v2"]
    assert fields["label"] == "blkdrv"
    assert fields["state"] == LuState.REQUEST_FREE
    assert fields["maxtime"] == 2 * HZ
    assert request("update", str(script), "-state", "9").fields["state"] == 9
    assert request("update", str(script), "-maxtime", "0").fields["maxtime"] == -1  # no limit


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["update", "self"], "label option mandatory for update self"),
        (["update", "self", "-label", "ds", "-args", "x"], "-args cannot be given with self"),
        (["update", "self", "-label", "ds", "-state", "0"], "null live update state"),
        (["update", "self", "-label", "ds", "-state", "x > 3"], "hwl has no eval expressions"),
        (["update", "self", "-label", "ds", "-maxtime", "soon"], "bad maxtime 'soon'"),
        (["update", "self", "-label", "ds", "-period", "1"], "unknown option -period"),
        (["update"], "update needs a program, or self"),
    ],
)
def test_update_refuses_malformed_commands(argv: list[str], message: str) -> None:
    error = refused(*argv)
    assert error.code == Errno.EINVAL and error.usage
    assert message in str(error)


# --- options before the request, unknown requests ----------------------------


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        ([], Errno.EINVAL, "no request given"),
        (["-o"], Errno.EINVAL, "no request given"),
        (["start", "x"], Errno.ENOSYS, "illegal request type 'start'"),
        (["sysctl", "x"], Errno.EINVAL, "bad sysctl type 'x' (known: srv_status|upd_start|"),
        (["sysctl"], Errno.EINVAL, "sysctl requires an action type"),
        (["sysctl", "upd_run", "now"], Errno.EINVAL, "sysctl: unexpected argument 'now'"),
        (["-q", "sysctl", "upd_run"], Errno.EINVAL, "options -q apply only to update, not sysctl"),
        (["-q", "down", "x"], Errno.EINVAL, "options -q apply only to update, not down"),
        (["fi"], Errno.EINVAL, "fi needs a target label"),
        (["fi", "x", "-type"], Errno.EINVAL, "fi: option -type needs a value"),
        (["fi", "x", "-type", "boom"], Errno.EINVAL, "fi: bad fault type 'boom': expected crash|"),
        (["fi", "x", "-label", "y"], Errno.EINVAL, "fi: unknown option -label"),
        (["-x", "fi", "x"], Errno.EINVAL, "options -x apply only to update, not fi"),
        (["run"], Errno.EINVAL, "run needs a program to start"),
        (["-k", "down", "x"], Errno.EINVAL, "unknown option -k"),
        (["--verbose", "down", "x"], Errno.EINVAL, "unknown option --verbose"),
        (["-p", "down", "x"], Errno.EINVAL, "option -p (create a replica"),
        (["-o", "down", "x"], Errno.EINVAL, "options -o apply only to update, not down"),
        (["-xz", "up", "x.py"], Errno.EINVAL, "options -xz apply only to update, not up"),
        (["--run-dir"], Errno.EINVAL, "option --run-dir needs a directory"),
        (["--run-dir=", "status"], Errno.EINVAL, "option --run-dir needs a directory"),
    ],
)
def test_malformed_command_lines(argv: list[str], code: Errno, message: str) -> None:
    error = refused(*argv)
    assert (error.code, error.usage) == (code, True)
    assert message in str(error)


def test_run_dir_and_help() -> None:
    assert parse_command(["--run-dir", "/r", "status"]).run_dir == "/r"
    assert parse_command(["--run-dir=/r", "-c", "status"]).run_dir == "/r"
    assert parse_command(["-h"]).request is None
    assert parse_command(["--", "status"]).request == Request("status", proto.RS_STATUS)


# --- field builders shared with the Python API -------------------------------


def test_field_builders_check_values() -> None:
    with pytest.raises(ValueError, match="argv must be a non-empty list"):
        up_fields("python3 x.py")
    with pytest.raises(ValueError, match="period must be a whole number >= 0"):
        up_fields(["/x"], period=-1)
    with pytest.raises(ValueError, match="no live-update state"):
        update_fields("ds", state=LuState.NULL)
    with pytest.raises(ValueError, match="maxtime -2"):
        update_fields("ds", maxtime=-2)
    with pytest.raises(ValueError, match="unknown update flags 0x40"):
        update_fields("ds", flags=0x40)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="RS cannot change 'state'"):
        edit_fields("ds", state=1)
    with pytest.raises(TypeError, match="period must be a int"):
        edit_fields("ds", period="2HZ")
    with pytest.raises(ValueError, match="nothing to change"):
        edit_fields("ds")
    assert edit_fields("ds", script="", policy=Policy.RESTART) == {
        "label": "ds",
        "script": "",
        "policy": 1,
    }


def test_status_rows_are_checked() -> None:
    row: dict[str, codec.Value] = {
        "label": "ds",
        "endpoint": 32770,
        "pid": 12,
        "restarts": 0,
        "period": 0,
        "last_heartbeat": 1,
        "state": "up",
        "policy": "reset",
        "program": "hwl.servers.ds",
    }
    assert ServiceStatus.from_fields(row).last_heartbeat == 1.0
    with pytest.raises(ValueError, match="field 'pid' is None"):
        ServiceStatus.from_fields({**row, "pid": None})
    with pytest.raises(ValueError, match="not a dict"):
        ServiceStatus.from_fields([1])


def test_rs_error_keeps_the_errno() -> None:
    error = RsError(Errno.ESRCH, "down", "no service 'x'")
    assert (error.errno, error.request) == (Errno.ESRCH, "down")
    assert str(error) == "down failed: ESRCH: no service 'x'"
    assert str(RsError(Errno.EPERM, "up")).startswith("up failed: EPERM: operation not permitted")


# --- main: messages and exit codes --------------------------------------------


def test_main_prints_usage_and_exits_einval(capsys: pytest.CaptureFixture[str]) -> None:
    assert service.main(["up"]) == Errno.EINVAL
    err = capsys.readouterr().err
    assert err.startswith("service: up needs a program to start\n")
    assert USAGE in err
    assert service.main(["frobnicate"]) == Errno.ENOSYS
    assert service.main(["-h"]) == 0
    assert "usage: service" in capsys.readouterr().out


def test_main_without_a_run_dir_says_how_to_give_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HWL_RUN_DIR", raising=False)
    assert service.main(["status"]) == Errno.EINVAL
    err = capsys.readouterr().err
    assert "give --run-dir DIR or set $HWL_RUN_DIR" in err
    assert "usage:" not in err


def test_main_with_no_kernel_there_fails_clearly(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert service.main(["--run-dir", str(tmp_path), "status"]) == Errno.ECONNREFUSED
    err = capsys.readouterr().err
    assert f"service: cannot reach the kernel at {tmp_path / 'kernel.sock'}" in err
    assert "is the machine running" in err


def test_hwl_service_forwards_to_the_service_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert hwl_main.main(["service", "-o", "down", "x"]) == Errno.EINVAL
    assert "options -o apply only to update" in capsys.readouterr().err


# --- a real service command against a kernel whose root answers as RS ----------


Answer = Callable[[ipc.Message], tuple[int, dict[str, codec.Value]]]


class FakeRs:
    """The test process is the kernel's root; a thread answers RS requests with
    canned replies, as RS would, and records what arrived."""

    def __init__(self, root: ipc.Connection, answer: Answer) -> None:
        self.root = root
        self.answer = answer
        self.seen: list[tuple[int, dict[str, codec.Value]]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                message = self.root.receive(timeout=0.2)
            except ipc.IpcTimeout:
                continue
            if message.is_notify or not proto.RS_BASE < message.m_type < proto.RS_INIT:
                continue  # exit notifies of the service commands
            self.seen.append((message.m_type, message.fields))
            m_type, fields = self.answer(message)
            self.root.sendnb(message.source, m_type, fields)


@pytest.fixture
def fake_rs(root: ipc.Connection) -> Iterator[FakeRs]:
    def answer(message: ipc.Message) -> tuple[int, dict[str, codec.Value]]:
        if message.m_type == proto.RS_STATUS:
            rows: list[codec.Value] = [
                {
                    "label": "ds",
                    "endpoint": 32771,
                    "pid": 4242,
                    "restarts": 2,
                    "period": 5 * HZ,
                    "last_heartbeat": 0.25,
                    "state": "up",
                    "policy": "reset",
                    "program": "hwl.servers.ds",
                },
                {
                    "label": "at_wini",
                    "endpoint": 65540,
                    "pid": -1,
                    "restarts": 0,
                    "period": 0,
                    "last_heartbeat": -1.0,
                    "state": "restarting",
                    "policy": "restart",
                    "flags": "run,cold",
                    "program": "hwl.drivers.at_wini",
                },
            ]
            return 0, {"services": rows}
        if message.m_type == proto.RS_LOOKUP and message["label"] == "ds":
            return 0, {"endpoint": 32771}
        return -Errno.ESRCH, {"error": f"no service '{message.get('label')!s}'"}

    rs = FakeRs(root, answer)
    rs.thread.start()
    try:
        yield rs
    finally:
        rs.stop.set()
        rs.thread.join(timeout=5)


def run_service(kernel: KernelProcess, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HWL_RUN_DIR": str(kernel.run_dir)}
    return subprocess.run(
        [*SERVICE, *argv], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT
    )


def test_service_status_lookup_and_errors_over_the_wire(
    kernel: KernelProcess, fake_rs: FakeRs
) -> None:
    out = run_service(kernel, "status")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == [
        "LABEL", "ENDPOINT", "PID", "RESTARTS", "PERIOD", "HEARTBEAT", "STATE", "POLICY", "FLAGS"
    ]  # fmt: skip
    # An RS that sends no flags (ds's row) shows "-".
    assert lines[1].split() == [
        "ds",
        "32771",
        "4242",
        "2",
        "5HZ",
        "0.2s",
        "ago",
        "up",
        "reset",
        "-",
    ]
    assert lines[2].split() == [
        "at_wini", "65540", "-", "0", "-", "-", "restarting", "restart", "run,cold"
    ]  # fmt: skip
    assert fake_rs.seen[-1] == (proto.RS_STATUS, {})

    out = run_service(kernel, "lookup", "ds")
    assert (out.returncode, out.stdout) == (0, "32771\n"), out.stderr
    assert fake_rs.seen[-1] == (proto.RS_LOOKUP, {"label": "ds"})

    out = run_service(kernel, "down", "nosuch")
    assert out.returncode == Errno.ESRCH
    assert out.stderr == "service: down failed: ESRCH: no service 'nosuch'\n"
    assert fake_rs.seen[-1] == (proto.RS_DOWN, {"label": "nosuch"})
