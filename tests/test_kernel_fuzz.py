"""The kernel against malformed input: every bad frame gets an error, nothing else breaks.

A raw process (a bare socket, no client library) throws frames at the kernel:
random bytes, truncated and oversized frames, unknown operations and kernel
calls, and kernel calls whose fields have wrong names, types and ranges. Each
request must get exactly one answer (or be cancellable), and meanwhile an echo
server keeps answering the root.

Without a machine every hardware call stops at ENODEV, so the last two tests fuzz
a kernel that drives a pc machine (marked qemu), with frames aimed at the
hardware calls as well: answered, served on, QEMU still running.
"""

from __future__ import annotations

import os
import select
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hwl import Machine, ipc
from hwl.ipc import codec, wire
from hwl.kernel.errno import Errno
from hwl.kernel.launcher import KernelProcess
from hwl.link import abi
from hwl.proto import vdevio

ECHO = str(Path(__file__).parent / "programs" / "echo.py")
# Every call but those that end or start processes; ports and an IRQ to talk about.
FUZZ_CONF = (
    "service fuzz { ipc ALL; io 1f0:8; irq 14; memory dma; system devio vdevio sdevio "
    "irqctl privctl statectl umap setalarm getinfo safecopyfrom safecopyto vsafecopy "
    "safememset diagctl; };"
)
FIELD_NAMES = [
    "port", "width", "value", "ops", "count", "dir", "endpoint", "grant", "offset", "local",
    "length", "irq", "policy", "id", "hook", "op", "conf", "base", "what", "seconds", "ticks",
    "absolute", "size", "align", "boundary", "data", "grant_offset", "copies", "byte", "text",
    "to_grant",
]  # fmt: skip


class RawProcess:
    """A user process that speaks the wire format by hand."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.connect(str(path))
        frame, fds, _, _ = socket.recv_fds(self.sock, wire.MAX_RESPONSE, 1)
        for fd in fds:
            os.close(fd)
        self.endpoint = int(codec.decode(frame[wire.RESPONSE.size :])["endpoint"])  # type: ignore[arg-type]

    def _read(self, timeout: float) -> bytes | None:
        ready, _, _ = select.select([self.sock], [], [], timeout)
        return self.sock.recv(wire.MAX_RESPONSE) if ready else None

    def ask(self, frame: bytes) -> bytes | None:
        """Send a frame; return its answer. A call that blocks is cancelled, and
        then exactly one frame (the answer, or EINTR) must come."""
        self.sock.send(frame)
        if len(frame) >= wire.REQUEST.size and frame[0] == wire.Op.CANCEL:
            return None  # a cancel of nothing has no answer
        answer = self._read(0.05)
        if answer is None:
            self.sock.send(wire.REQUEST.pack(wire.Op.CANCEL, 0, 0, 0, 0))
            answer = self._read(5)
            assert answer is not None, f"no answer after cancelling {frame[:32]!r}"
        assert answer, "the kernel closed the connection"
        assert self._read(0) is None, "more than one answer to one request"
        return answer

    @staticmethod
    def status(answer: bytes) -> int:
        return int(wire.RESPONSE.unpack_from(answer)[3])

    def kcall(self, name: str, fields: dict[str, codec.Value]) -> bytes:
        frame = wire.REQUEST.pack(wire.Op.KCALL, 0, 0, 0, wire.KERNEL_CALL_NUMBERS[name])
        answer = self.ask(frame + codec.encode(fields))
        assert answer is not None
        return answer


@pytest.fixture(scope="module")
def setup(kernel: KernelProcess) -> Iterator[tuple[ipc.Connection, RawProcess, int]]:
    root = kernel.root
    assert root is not None
    echo, _pid = root.spawn([sys.executable, ECHO], "echo", conf="service echo { ipc ALL; };")
    raw = RawProcess(kernel.socket_path)
    root.privctl_set(raw.endpoint, FUZZ_CONF)
    yield root, raw, echo
    raw.sock.close()


def echo_still_serves(root: ipc.Connection, echo: int) -> None:
    reply = root.sendrec(echo, 77, {"still": "here"}, timeout=5)
    assert (reply.source, reply.m_type, reply["still"]) == (echo, 77, "here")


@pytest.mark.parametrize(
    ("frame", "errno"),
    [
        (b"\x01", Errno.EINVAL),  # shorter than a header
        (b"\x03" * 11, Errno.EINVAL),
        (wire.REQUEST.pack(99, 0, 0, 0, 0), Errno.EBADCALL),  # unknown operation
        (wire.REQUEST.pack(0, 0, 0, 0, 0), Errno.EBADCALL),
        (wire.REQUEST.pack(wire.Op.KCALL, 0, 0, 0, 999), Errno.EBADCALL),  # unknown call
        (wire.REQUEST.pack(wire.Op.KCALL, 0, 0, 0, -1), Errno.EBADCALL),
        (wire.REQUEST.pack(wire.Op.KCALL, 0, 0, 0, 15) + b"\xff\xff", Errno.EINVAL),  # payload
        (wire.REQUEST.pack(wire.Op.SEND, 0, 0, -77, 0), Errno.EINVAL),  # no such endpoint kind
        (wire.REQUEST.pack(wire.Op.SEND, 0, 0, 0x12345, 0), Errno.EDEADSRCDST),
        (wire.REQUEST.pack(wire.Op.SEND, 0, 0, 0, 0) + bytes(wire.MAX_PAYLOAD + 1), Errno.EMSGSIZE),
    ],
)
def test_malformed_frames_get_an_error_and_the_kernel_goes_on(
    setup: tuple[ipc.Connection, RawProcess, int], frame: bytes, errno: Errno
) -> None:
    root, raw, echo = setup
    answer = raw.ask(frame)
    assert answer is not None and raw.status(answer) == -errno
    echo_still_serves(root, echo)


@pytest.mark.parametrize(
    ("call", "fields", "errno", "words"),
    [
        ("devio", {}, Errno.EINVAL, "'port' is missing"),
        ("devio", {"port": "0x1f7"}, Errno.EINVAL, "'port' must be an integer"),
        ("devio", {"port": 1 << 40}, Errno.EINVAL, "outside 0..65535"),
        ("devio", {"port": True}, Errno.EINVAL, "must be an integer, not bool"),
        ("getinfo", {"what": "secrets"}, Errno.EINVAL, "unknown item"),
        ("privctl", {"endpoint": 0x8001, "op": "set", "conf": "x"}, Errno.EPERM, "may not control"),
        ("setalarm", {"seconds": "soon"}, Errno.EINVAL, "seconds must be a number"),
        ("safecopyfrom", {"endpoint": 0x7FFF_FFFF, "grant": 0, "length": 1, "local": 0},
         Errno.EDEADSRCDST, "not alive"),
        ("vsafecopy", {"copies": [1, 2]}, Errno.EINVAL, "entry 0 is not a dict"),
        ("spawn", {"argv": ["/bin/sh"], "label": "x"}, Errno.ECALLDENIED, "not on its system line"),
    ],
)  # fmt: skip
def test_bad_kernel_call_fields_are_refused_with_the_reason(
    setup: tuple[ipc.Connection, RawProcess, int],
    call: str,
    fields: dict[str, codec.Value],
    errno: Errno,
    words: str,
) -> None:
    root, raw, echo = setup
    if call == "privctl":
        fields = {**fields, "endpoint": echo}
    answer = raw.kcall(call, fields)
    assert raw.status(answer) == -errno
    assert words in str(codec.decode(answer[wire.RESPONSE.size :])["error"])
    echo_still_serves(root, echo)


VDEVIO_INB_1F7 = bytes([abi.OP_IN, 1, 0xF7, 0x01]) + bytes(12)


@pytest.mark.parametrize(
    ("hook", "ops", "words"),
    [
        (wire.NO_HOOK, b"\x01" * 17, "17 bytes are not 1..254 ops"),
        (wire.NO_HOOK, b"", "0 bytes are not 1..254 ops"),
        (wire.NO_HOOK, VDEVIO_INB_1F7 * 255, "not 1..254 ops"),
        (wire.NO_HOOK, bytes([0x7F]) + bytes(15), "op codes [127] are not port ops"),
        (wire.NO_HOOK, bytes([abi.OP_IN, 1, 0x70, 0x01]) + bytes(12), "port 0x170"),
        (12345, VDEVIO_INB_1F7, "IRQ hook 12345 is not one of this process's"),
        (-7, VDEVIO_INB_1F7, "IRQ hook -7 is not one of this process's"),
    ],
)
def test_bad_vdevio_batches_are_refused_with_the_reason(
    setup: tuple[ipc.Connection, RawProcess, int], hook: int, ops: bytes, words: str
) -> None:
    """vdevio skips the codec (wire.VDEVIO): its raw payload is checked as ops."""
    root, raw, echo = setup
    answer = raw.ask(wire.REQUEST.pack(wire.Op.KCALL, 0, 0, hook, wire.VDEVIO) + ops)
    assert answer is not None
    assert raw.status(answer) in (-Errno.EINVAL, -Errno.EPERM)
    assert words in str(codec.decode(answer[wire.RESPONSE.size :])["error"])
    echo_still_serves(root, echo)


def _copy_head(direction: int = 1, nchecks: int = 0, spare: int = 0, buffer: int = 1) -> bytes:
    """A vdevio copy descriptor (hwl.proto.vdevio) with the fields a test spoils."""
    head = vdevio.HEAD.pack(direction, nchecks, spare, buffer, 0, 512, wire.SELF, 0, 4096)
    return head + bytes(vdevio.SIZE - len(head))


COPY_PEER = vdevio.peer_field(None)


@pytest.mark.parametrize(
    ("peer", "payload", "words"),
    [
        (COPY_PEER, b"\x00" * 10, "10 bytes hold no 64-byte copy descriptor"),
        (COPY_PEER, _copy_head(direction=7) + VDEVIO_INB_1F7, "copy direction 7"),
        (COPY_PEER, _copy_head(nchecks=4) + VDEVIO_INB_1F7, "4 checks"),
        (COPY_PEER, _copy_head(spare=1) + VDEVIO_INB_1F7, "spare 1"),
        (COPY_PEER | 1 << 20, _copy_head() + VDEVIO_INB_1F7, "unknown bits"),
        (COPY_PEER, _copy_head(buffer=4242) + VDEVIO_INB_1F7, "DMA buffer 4242 is not one"),
        (COPY_PEER, _copy_head(buffer=-1) + VDEVIO_INB_1F7, "DMA buffer -1 is not one"),
    ],
)
def test_malformed_dma_copies_are_einval_and_the_kernel_serves_on(
    setup: tuple[ipc.Connection, RawProcess, int], peer: int, payload: bytes, words: str
) -> None:
    """vdevio with a DMA copy (hwl.proto.vdevio): a bad descriptor or peer field is
    refused with the reason, before anything runs."""
    root, raw, echo = setup
    answer = raw.ask(wire.REQUEST.pack(wire.Op.KCALL, 0, 0, peer, wire.VDEVIO) + payload)
    assert answer is not None and raw.status(answer) == -Errno.EINVAL
    assert words in str(codec.decode(answer[wire.RESPONSE.size :])["error"])
    echo_still_serves(root, echo)


def test_a_request_while_blocked_is_ebusy_and_the_blocked_call_survives(
    setup: tuple[ipc.Connection, RawProcess, int],
) -> None:
    _root, raw, _echo = setup
    raw.sock.send(wire.REQUEST.pack(wire.Op.RECEIVE, 0, 0, wire.ANY, 0))
    raw.sock.send(wire.REQUEST.pack(wire.Op.NOTIFY, 0, 0, raw.endpoint, 0))
    busy = raw._read(5)
    assert busy is not None and raw.status(busy) == -Errno.EBUSY
    raw.sock.send(wire.REQUEST.pack(wire.Op.CANCEL, 0, 0, 0, 0))
    cancelled = raw._read(5)
    assert cancelled is not None and raw.status(cancelled) == -Errno.EINTR


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.sampled_from([0, 1, -1, 0x1F7, 0x170, 14, 4096, 2**31, wire.ANY, wire.SELF])
    | st.floats(allow_nan=True)
    | st.text(max_size=12)
    | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(FIELD_NAMES), inner, max_size=3)
    ),
    max_leaves=6,
)
_fields = st.dictionaries(
    st.sampled_from(FIELD_NAMES) | st.text(min_size=1, max_size=6), _values, max_size=6
)
_payload = st.one_of(st.binary(max_size=200), _fields.map(codec.encode))
_endpoint = st.sampled_from(
    [0, wire.ANY, wire.NONE, wire.SELF, wire.SYSTEM, wire.CLOCK, wire.HARDWARE, 0x8000, 0x8001]
) | st.integers(-(2**31), 2**31 - 1)
EXIT = wire.KERNEL_CALL_NUMBERS["exit"]  # a fuzzer that exits has nothing left to fuzz


def _frame(op: int, flags: int, peer: int, m_type: int, payload: bytes) -> bytes:
    if op == wire.Op.KCALL and m_type == EXIT:
        m_type = 0
    return wire.REQUEST.pack(op, flags, 0, peer, m_type) + payload


_structured = st.builds(
    _frame,
    st.integers(0, 12),
    st.integers(0, 255),
    _endpoint,
    st.integers(-3, 30) | st.integers(-(2**31), 2**31 - 1),
    _payload,
)
_copies = st.builds(  # vdevio with a DMA copy: a descriptor (often a plausible one), ops
    lambda hook, head, rest: (
        wire.REQUEST.pack(wire.Op.KCALL, 0, 0, vdevio.COPY | hook, wire.VDEVIO) + head + rest
    ),
    st.integers(0, 0xFFFF),
    st.builds(_copy_head, st.integers(0, 3), st.integers(0, 4), st.just(0), st.integers(-1, 3))
    | st.binary(max_size=64),
    st.binary(max_size=64) | st.just(VDEVIO_INB_1F7),
)
_kcalls = st.builds(
    lambda number, payload: wire.REQUEST.pack(wire.Op.KCALL, 0, 0, 0, number) + payload,
    st.sampled_from(sorted(set(wire.KERNEL_CALL_NAMES) - {EXIT})),
    _payload,
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(frame=st.one_of(st.binary(min_size=1, max_size=80), _structured, _kcalls, _copies))
def test_fuzzed_frames_always_get_an_answer(
    setup: tuple[ipc.Connection, RawProcess, int], frame: bytes
) -> None:
    _root, raw, _echo = setup
    answer = raw.ask(frame)
    if answer is not None:
        kind = answer[0]
        assert kind in (wire.Kind.MESSAGE, wire.Kind.STATUS)


def test_after_the_fuzzing_everyone_is_still_served(
    setup: tuple[ipc.Connection, RawProcess, int], kernel: KernelProcess
) -> None:
    root, raw, echo = setup
    echo_still_serves(root, echo)
    answer = raw.kcall("getinfo", {"what": "whoami"})
    assert raw.status(answer) == 0
    assert codec.decode(answer[wire.RESPONSE.size :])["endpoint"] == raw.endpoint
    log = (kernel.run_dir / "kernel.log").read_text()
    assert "Traceback" not in log and "EGENERIC" not in log, "a kernel call raised internally"


# --------------------------------------------------------- with a machine attached
# Above, the kernel has no machine: every hardware call stops at ENODEV. Here the
# same fuzzing, and frames aimed at the hardware calls (port I/O on the IDE
# channel the fuzzer may use, its IRQ line, DMA memory), go to a kernel that
# drives a real pc machine: each must be answered, the kernel must keep serving,
# and QEMU must keep running.

IDE_PORTS = [*range(0x1F0, 0x1F8), 0x3F6]
#: Kernel calls of the fuzzing with a machine that succeeded, by name: how many.
RAN: dict[str, int] = {}


def _or_wild(plausible: st.SearchStrategy[Any], wild: st.SearchStrategy[Any]) -> Any:
    """Mostly values a driver would use (so calls reach the hardware), sometimes any."""
    return st.one_of(plausible, plausible, plausible, wild)


_port = _or_wild(st.sampled_from(IDE_PORTS), st.integers(0, 0xFFFF))
_width = _or_wild(st.sampled_from([1, 2]), st.integers(-1, 8))
_small = _or_wild(st.integers(0, 3), st.integers(-(2**31), 2**31 - 1))


def _kcall(name: str, fields: dict[str, codec.Value]) -> bytes:
    number = wire.KERNEL_CALL_NUMBERS[name]
    return wire.REQUEST.pack(wire.Op.KCALL, 0, 0, 0, number) + codec.encode(fields)


def _op(code: int, width: int, port: int, rest: bytes) -> bytes:
    return bytes([code & 0xFF, width & 0xFF]) + (port & 0xFFFF).to_bytes(2, "little") + rest


_ops = st.lists(
    st.builds(
        _op,
        _or_wild(
            st.sampled_from([abi.OP_IN, abi.OP_OUT]),
            st.sampled_from([abi.OP_WAIT, abi.OP_DELAY, abi.OP_IRQ_WAIT, abi.OP_MMIO_RD])
            | st.integers(0, 255),
        ),
        _width,
        _port,
        _or_wild(st.just(bytes(12)), st.binary(min_size=12, max_size=12)),
    ),
    min_size=1,
    max_size=4,
).map(b"".join)
_hardware = st.one_of(
    st.builds(
        lambda port, width, value: _kcall(
            "devio",
            {"port": port, "width": width, **({} if value is None else {"value": value})},
        ),
        _port,
        _width,
        st.none() | st.integers(0, 0xFFFF_FFFF),
    ),
    st.builds(
        lambda hook, ops: wire.REQUEST.pack(wire.Op.KCALL, 0, 0, hook, wire.VDEVIO) + ops,
        _or_wild(st.just(wire.NO_HOOK), _small),
        _ops,
    ),
    st.builds(
        lambda port, width, count, direction, grant, hook: _kcall(
            "sdevio",
            {
                "port": port,
                "width": width,
                "count": count,
                "dir": direction,
                "endpoint": wire.SELF,
                "grant": grant,
                **({} if hook is None else {"hook": hook, "block": 1}),
            },
        ),
        _port,
        _width,
        st.integers(0, 4096),
        st.sampled_from(["in", "out", "up"]),
        _small,
        st.none() | _small,
    ),
    st.builds(
        lambda name, irq, policy, hook: _kcall(
            name, {"irq": irq, "policy": policy, "hook": hook, "id": hook}
        ),
        st.sampled_from(["irqsetpolicy", "irqenable", "irqdisable", "irqrmpolicy"]),
        _or_wild(st.just(14), st.integers(-1, 16)),
        _or_wild(st.integers(0, 1), st.integers(-1, 2)),
        _small,
    ),
    st.builds(
        lambda name, size, ident: _kcall(
            name, {"size": size, "id": ident, "op": "read", "length": 16, "phys": size}
        ),
        st.sampled_from(["dmaalloc", "dmafree", "dmacopy", "umap", "dmamap"]),
        _or_wild(st.sampled_from([512, 4096, 65536]), st.integers(-1, 1 << 31)),
        _small,
    ),
)


@pytest.fixture(scope="module")
def machine_setup(pc: Machine) -> Iterator[tuple[ipc.Connection, RawProcess, int]]:
    kernel = KernelProcess.start(pc)
    root = kernel.root
    assert root is not None
    echo, _pid = root.spawn([sys.executable, ECHO], "echo", conf="service echo { ipc ALL; };")
    raw = RawProcess(kernel.socket_path)
    root.privctl_set(raw.endpoint, FUZZ_CONF)
    # the hardware is there: the calls reach it instead of stopping at ENODEV
    status = raw.kcall("devio", {"port": 0x1F7, "width": 1})
    assert raw.status(status) == 0, codec.decode(status[wire.RESPONSE.size :])
    yield root, raw, echo
    raw.sock.close()


#: One plausible call of each hardware family, always among the examples.
PLAUSIBLE = [
    _kcall("devio", {"port": 0x1F7, "width": 1}),
    wire.REQUEST.pack(wire.Op.KCALL, 0, 0, wire.NO_HOOK, wire.VDEVIO)
    + _op(abi.OP_OUT, 1, 0x1F6, (0xA0).to_bytes(4, "little") + bytes(8))
    + _op(abi.OP_IN, 1, 0x1F7, bytes(12)),
    _kcall("irqsetpolicy", {"irq": 14, "policy": 0, "id": 0}),
    _kcall("dmaalloc", {"size": 4096}),
]


@pytest.mark.qemu
@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(frame=st.one_of(_hardware, _hardware, _hardware, _structured, _kcalls, _copies))
@example(frame=PLAUSIBLE[0])
@example(frame=PLAUSIBLE[1])
@example(frame=PLAUSIBLE[2])
@example(frame=PLAUSIBLE[3])
def test_fuzzed_frames_with_a_machine_always_get_an_answer(
    machine_setup: tuple[ipc.Connection, RawProcess, int], frame: bytes
) -> None:
    _root, raw, _echo = machine_setup
    answer = raw.ask(frame)
    if answer is not None:
        assert answer[0] in (wire.Kind.MESSAGE, wire.Kind.STATUS)
        op, _flags, _spare, _peer, number = wire.REQUEST.unpack_from(frame)
        if op == wire.Op.KCALL and raw.status(answer) == 0:
            name = "vdevio" if number == wire.VDEVIO else wire.KERNEL_CALL_NAMES.get(number, "")
            RAN[name] = RAN.get(name, 0) + 1


@pytest.mark.qemu
def test_after_fuzzing_with_a_machine_everyone_and_the_machine_still_serve(
    machine_setup: tuple[ipc.Connection, RawProcess, int], pc: Machine
) -> None:
    root, raw, echo = machine_setup
    echo_still_serves(root, echo)
    answer = raw.kcall("getinfo", {"what": "whoami"})
    assert codec.decode(answer[wire.RESPONSE.size :])["endpoint"] == raw.endpoint
    # the link still runs port I/O: the IDE channel's status register reads
    status = raw.kcall("devio", {"port": 0x1F7, "width": 1})
    assert raw.status(status) == 0
    # and the fuzzing reached it: calls of every hardware family ran through (at
    # least the PLAUSIBLE examples; the random ones count too)
    print(f"kernel calls that ran while fuzzing with a machine: {RAN}")
    assert {"devio", "vdevio", "irqsetpolicy", "dmaalloc"} <= set(RAN), RAN
    assert pc.qmp_execute("query-status")["status"] == "running"
    log = (pc.run_dir / "kernel.log").read_text()
    assert "Traceback" not in log and "EGENERIC" not in log, "a kernel call raised internally"
