"""system.conf: which services exist and what each may touch, in MINIX 3's syntax.

The file is a list of entries::

    # comments run from '#' to the end of the line
    service at_wini
    {
        io      1f0:8 3f6     # a statement is a key, its values, and ';'
                170:8 376;    # values may continue over several lines
        irq     14 15;
        pci class 1/1;
        system  DEVIO VDEVIO SDEVIO IRQCTL UMAP;
        ipc     SYSTEM rs ds pci vfs;
        memory  dma;
    };

Keys (values are words separated by white space; numbers are hex where MINIX uses
hex and decimal where it uses decimal):

- ``uid``: a decimal uid, or ``SELF``. Default 12, MINIX's ``service`` user.
- ``ipc``: ``ALL``, ``ALL_SYS`` (every process but user processes), ``NONE``, or a
  list of labels plus the pseudo-labels ``SYSTEM`` (the kernel) and ``USER`` (any
  user process). Default ``ALL_SYS``.
- ``system``: ``ALL``, ``BASIC``, ``NONE``, or kernel call names (case does not
  matter; see :data:`KERNEL_CALLS`). As in MINIX an explicit list *adds to* the
  basic calls every service has (:data:`BASIC_CALLS`); only ``NONE`` takes them
  away. ``IRQCTL`` grants all four IRQ calls (``irqsetpolicy``, ``irqenable``,
  ``irqdisable``, ``irqrmpolicy``), which can also be granted one by one.
- ``io``: ``ALL``, ``NONE`` or port ranges ``base[:len]`` in hex, ``len`` defaulting
  to 1; a range may not go past port 0xffff. ``ALL`` is stored as the one range
  ``0:10000``.
- ``irq``: ``ALL``, ``NONE`` or decimal IRQ lines 0..15. ``ALL`` is stored as 0..15.
- ``pci device``: ``vid:did`` or ``vid:did/subvid:subdid`` in hex. ``pci class``:
  ``class[/subclass[/interface]]`` in hex. Both may be written on several lines;
  the lists add up. I/O ports, IRQ lines and memory BARs of a matching device are
  not listed here: the PCI server grants them when the driver reserves the device.
- ``memory`` (hwl's addition): guest-physical ranges ``base[:len]`` in hex (``len``
  defaults to 1, as for ``io``; a range may not go past 4 GiB), and the word ``dma``
  for the right to allocate contiguous DMA buffers. ``NONE`` grants nothing; ``ALL``
  is refused because guest RAM also holds the stub's request rings.
- ``control``: labels of the services this one may control through RS (restart,
  stop, update). MINIX's manual page words this the other way round, but its RS
  checks the *caller's* list, and its stock ``filter`` entry (``control at_wini``,
  so that filter can restart the disk driver beneath it) only makes sense that way;
  hwl follows the code.
- ``scheduler`` (``KERNEL`` or a label), ``sigmgr`` (``SELF`` or a label),
  ``priority`` (decimal queue 0..15), ``quantum`` (decimal milliseconds, > 0):
  stored as given, unset by default.
- ``type`` (``net`` or ``blk``) and ``descr`` (a quoted string, ``"..."`` or
  ``'...'``, on one line, with ``\\`` escapes): stored as given.

MINIX keys with no meaning in hwl (``vm``, ``cpu``, ``domain``, ``class``) and
anything else are errors. Each key may appear once per service, except ``pci
device`` and ``pci class``. Lone ``;`` are allowed, as MINIX's grammar allows empty
statements. There is no ``include`` and no default service: MINIX has neither a
``DEFAULT`` entry nor anything but per-service defaults, which are the ones above.

A forgotten ``;`` is caught by one rule: inside a statement, a word at the start of
a line that names a key (``pci`` only when followed by ``device`` or ``class``)
starts a new statement, so the previous one lacked its ``;``. A label that is also a
key name (``memory``, say) must therefore not start a line inside a list.

Every error is a :class:`SystemConfError` whose message starts with
``file:line: service NAME: key 'KEY':`` when it is about a key, with ``file:line:
service NAME:`` when it is about the entry itself (a missing ``}``, a duplicate), and
with ``file:line:`` outside any entry.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final, Literal, NoReturn, TypeAlias, TypeVar

from hwl.errors import HwlError
from hwl.share import shared

_V = TypeVar("_V")


class SystemConfError(HwlError):
    """system.conf is malformed; the message names file, line, service and key."""


ALL: Final = "ALL"
ALL_SYS: Final = "ALL_SYS"
NONE: Final = "NONE"
BASIC: Final = "BASIC"
SELF: Final = "SELF"
KERNEL: Final = "KERNEL"
SYSTEM_TARGET: Final = "SYSTEM"  # the kernel, in an ipc list
USER_TARGET: Final = "USER"  # any user process, in an ipc list

IpcTargets: TypeAlias = frozenset[str] | Literal["ALL", "ALL_SYS"]
KernelCalls: TypeAlias = frozenset[str] | Literal["ALL"]

DEFAULT_UID: Final = 12
PORT_LIMIT: Final = 0x10000
MEMORY_LIMIT: Final = 1 << 32
NR_IRQS: Final = 16
NR_SCHED_QUEUES: Final = 16
SERVICE_TYPES: Final = frozenset({"net", "blk"})

#: Kernel call names a ``system`` line may grant, with what each does. hwl's own
#: calls come first; the rest are MINIX names kept so that MINIX entries read
#: the same (the kernel answers EBADCALL for any it does not implement).
KERNEL_CALLS: Final[dict[str, str]] = {
    "devio": "one port read or write",
    "vdevio": "a vector of port operations in one call",
    "sdevio": "string port I/O into or out of a memory grant",
    "irqctl": "all four IRQ calls below",
    "irqsetpolicy": "claim an IRQ line and choose its re-enable policy",
    "irqenable": "unmask an owned IRQ line after it fired",
    "irqdisable": "mask an owned IRQ line",
    "irqrmpolicy": "give an IRQ line back",
    "privctl": "set or extend another process's privileges",
    "statectl": "clear IPC state left over from a dead peer",
    "umap": "translate a buffer to a guest-physical address",
    "setalarm": "arm a one-shot alarm that arrives as a notify",
    "safecopyfrom": "copy from a memory grant",
    "safecopyto": "copy into a memory grant",
    "vsafecopy": "a vector of grant copies",
    "setgrant": "publish this process's grant table",
    "safememset": "fill a memory grant",
    "sumcopyto": "copy checksummed sectors into a memory grant, checking their sums (hwl)",
    "getinfo": "read kernel information (machine, endpoints, uptime)",
    "keep": "keep state in the kernel across this process's death (hwl)",
    "spawn": "start a program as a new process, with the privileges given",
    "times": "read process and system times",
    "diagctl": "write to the kernel's diagnostics log",
    "exit": "end this process through the kernel",
    "fork": "create a process slot",
    "exec": "start a new program image in a slot",
    "clear": "free a dead process's slot",
    "kill": "send a signal",
    "update": "swap two processes for a live update",
    "runctl": "stop or resume a process",
    "schedule": "set a process's scheduling parameters",
    "schedctl": "take over scheduling of a process",
    "trace": "trace a process",
    "vircopy": "copy between address spaces without a grant",
    "physcopy": "copy from or to physical addresses",
    "vumap": "translate a vector of grants to physical addresses",
    "umap_remote": "translate another process's buffer",
    "memset": "fill physical memory",
    "iopenable": "give a process direct port access",
    "abort": "stop the whole machine",
}
IRQ_CALLS: Final = frozenset({"irqsetpolicy", "irqenable", "irqdisable", "irqrmpolicy"})
#: What every service may call unless its entry says ``system NONE`` (MINIX's set).
BASIC_CALLS: Final = frozenset(
    {
        "exit",
        "safecopyfrom",
        "safecopyto",
        "vsafecopy",
        "getinfo",
        "times",
        "setalarm",
        "setgrant",
        "diagctl",
        "statectl",
        "safememset",
        "keep",
    }
)

_KEYWORDS: Final = frozenset({ALL, ALL_SYS, NONE, BASIC, SELF, KERNEL, SYSTEM_TARGET, USER_TARGET})
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_HEX = re.compile(r"(?:0[xX])?[0-9a-fA-F]{1,16}")
_DECIMAL = re.compile(r"[0-9]{1,9}")
_SPECIALS: Final = "{};#\"'"
_ESCAPES: Final = {"n": "\n", "t": "\t", "r": "\r"}


# --- the result --------------------------------------------------------------


@dataclass(frozen=True)
class _Range:
    """``length`` units from ``base``: ports or guest-physical bytes."""

    base: int
    length: int = 1

    @property
    def end(self) -> int:
        """One past the last unit."""
        return self.base + self.length

    def contains(self, start: int, size: int = 1) -> bool:
        """Whether ``size`` units at ``start`` lie wholly inside."""
        return self.base <= start and start + size <= self.end

    def __str__(self) -> str:
        return _range_text(self.base, self.length)


@dataclass(frozen=True)
class IoRange(_Range):
    """Ports ``base`` .. ``base + length - 1``."""


@dataclass(frozen=True)
class MemoryRange(_Range):
    """Guest-physical bytes ``base`` .. ``base + length - 1``."""


#: Every port, as ``io ALL`` grants; every guest-physical byte (the root's memory).
PORT_SPACE: Final = IoRange(0, PORT_LIMIT)
MEMORY_SPACE: Final = MemoryRange(0, MEMORY_LIMIT)


@dataclass(frozen=True)
class PciDevice:
    """A PCI vendor:device id, optionally narrowed to one subsystem id."""

    vendor: int
    device: int
    sub_vendor: int | None = None
    sub_device: int | None = None

    def matches(
        self, vendor: int, device: int, sub_vendor: int | None = None, sub_device: int | None = None
    ) -> bool:
        """Whether a device with these ids is one this entry names."""
        if (vendor, device) != (self.vendor, self.device):
            return False
        if self.sub_vendor is None:
            return True
        return (sub_vendor, sub_device) == (self.sub_vendor, self.sub_device)

    def __str__(self) -> str:
        text = f"{self.vendor:04x}:{self.device:04x}"
        if self.sub_vendor is not None and self.sub_device is not None:
            text += f"/{self.sub_vendor:04x}:{self.sub_device:04x}"
        return text


@dataclass(frozen=True)
class PciClass:
    """A PCI class code, optionally narrowed to a subclass and programming interface."""

    cls: int
    subclass: int | None = None
    interface: int | None = None

    def __post_init__(self) -> None:
        if self.interface is not None and self.subclass is None:
            raise ValueError("a PCI class with an interface needs a subclass")

    def matches(self, cls: int, subclass: int, interface: int) -> bool:
        """Whether a device of this class, subclass and interface is one this entry names."""
        wanted = (self.cls, self.subclass, self.interface)
        actual = (cls, subclass, interface)
        return all(w is None or w == a for w, a in zip(wanted, actual, strict=True))

    def __str__(self) -> str:
        parts = [self.cls, self.subclass, self.interface]
        return "/".join(f"{p:x}" for p in parts if p is not None)


@dataclass(frozen=True)
class ServiceConfig:
    """One ``service`` entry: what that service may touch. Defaults are MINIX's."""

    label: str
    uid: int | Literal["SELF"] = DEFAULT_UID
    ipc: IpcTargets = ALL_SYS
    calls: KernelCalls = BASIC_CALLS
    io: tuple[IoRange, ...] = ()
    irq: tuple[int, ...] = ()
    pci_devices: tuple[PciDevice, ...] = ()
    pci_classes: tuple[PciClass, ...] = ()
    memory: tuple[MemoryRange, ...] = ()
    dma: bool = False
    control: frozenset[str] = frozenset()
    scheduler: str | None = None
    priority: int | None = None
    quantum: int | None = None
    sigmgr: str | None = None
    service_type: str | None = None
    descr: str | None = None
    path: str = field(default="<string>", compare=False)
    line: int = field(default=0, compare=False)

    def allows_ipc(self, target: str) -> bool:
        """Whether this service may send to ``target``: a label, ``SYSTEM`` or ``USER``."""
        if self.ipc == ALL:
            return True
        if self.ipc == ALL_SYS:
            return target != USER_TARGET
        return target in self.ipc

    def allows_call(self, name: str) -> bool:
        """Whether this service may make kernel call ``name`` (any case)."""
        return self.calls == ALL or name.lower() in self.calls

    def allows_port(self, port: int, width: int = 1) -> bool:
        """Whether an access of ``width`` bytes at ``port`` lies inside a granted range."""
        return any(r.contains(port, width) for r in self.io)

    def allows_irq(self, irq: int) -> bool:
        """Whether this service may claim IRQ line ``irq``."""
        return irq in self.irq

    def allows_memory(self, address: int, size: int = 1) -> bool:
        """Whether ``size`` bytes at guest-physical ``address`` lie inside a granted range."""
        return any(r.contains(address, size) for r in self.memory)

    def may_control(self, label: str) -> bool:
        """Whether this service may ask RS to restart, stop or update ``label``."""
        return label in self.control

    def to_text(self) -> str:
        """This entry in system.conf syntax; :func:`parse` reads it back equal."""
        lines = [f"service {self.label}", "{"]
        lines += [f"\t{statement};" for statement in _statements(self)]
        lines.append("};")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class SystemConf:
    """Every service entry of one system.conf, by label, in file order."""

    services: dict[str, ServiceConfig] = field(default_factory=dict)
    path: str = field(default="<string>", compare=False)

    def get(self, label: str) -> ServiceConfig | None:
        """The entry for ``label``, or None if the file has none."""
        return self.services.get(label)

    def __contains__(self, label: object) -> bool:
        return label in self.services

    def __iter__(self) -> Iterator[ServiceConfig]:
        return iter(self.services.values())

    def __len__(self) -> int:
        return len(self.services)

    def to_text(self) -> str:
        """The whole file in system.conf syntax, entries separated by blank lines."""
        return "\n".join(service.to_text() for service in self)


def default_path() -> Path:
    """Where the stock system.conf lives: $HWL_SYSTEM_CONF, the checkout's root, or
    the installed copy (hwl/share.py)."""
    return shared("system.conf", "HWL_SYSTEM_CONF")


def load(path: str | Path | None = None) -> SystemConf:
    """Read and parse a system.conf file (the stock one when ``path`` is None)."""
    where = Path(path) if path is not None else default_path()
    try:
        text = where.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemConfError(f"{where}: cannot read system.conf: {exc}") from exc
    return parse(text, str(where))


def parse(text: str, path: str = "<string>") -> SystemConf:
    """Parse system.conf text; ``path`` only names the file in error messages."""
    return _Parser(_tokenize(text), path).parse_file()


# --- writing -----------------------------------------------------------------


def _range_text(base: int, length: int) -> str:
    """``base`` alone for one unit, else ``base:len``, both in hex."""
    return f"{base:x}" if length == 1 else f"{base:x}:{length:x}"


def _quote(text: str) -> str:
    """A double-quoted string the tokenizer reads back as ``text``."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    for letter, char in _ESCAPES.items():
        escaped = escaped.replace(char, "\\" + letter)
    return f'"{escaped}"'


def _labels_text(labels: frozenset[str]) -> str:
    """Labels sorted, with the upper-case pseudo-labels first as MINIX writes them."""
    return " ".join(sorted(labels, key=lambda label: (label not in _KEYWORDS, label)))


def _calls_text(calls: KernelCalls) -> str | None:
    """The ``system`` values that parse back to ``calls``; None for the default."""
    if calls == ALL:
        return ALL
    if not calls:
        return NONE
    if not calls >= BASIC_CALLS:
        raise ValueError("a call set must be empty or include BASIC_CALLS to be written")
    extra = calls - BASIC_CALLS
    if "irqctl" in extra:
        extra -= IRQ_CALLS  # IRQCTL reads back as all four
    return " ".join(sorted(c.upper() for c in extra)) if extra else None


def _statements(svc: ServiceConfig) -> Iterator[str]:
    """The statements of an entry that differ from the defaults, in a fixed order."""
    if svc.uid != DEFAULT_UID:
        yield f"uid {svc.uid}"
    if svc.ipc != ALL_SYS:
        yield f"ipc {svc.ipc if isinstance(svc.ipc, str) else _labels_text(svc.ipc) or NONE}"
    calls = _calls_text(svc.calls)
    if calls is not None:
        yield f"system {calls}"
    if svc.io:
        yield "io " + " ".join(str(r) for r in svc.io)
    if svc.irq:
        yield "irq " + " ".join(str(i) for i in svc.irq)
    yield from (f"pci device {d}" for d in svc.pci_devices)
    yield from (f"pci class {c}" for c in svc.pci_classes)
    if svc.memory or svc.dma:
        yield "memory " + " ".join([*(str(r) for r in svc.memory), *(["dma"] if svc.dma else [])])
    if svc.control:
        yield f"control {_labels_text(svc.control)}"
    for key, value in (
        ("scheduler", svc.scheduler),
        ("priority", svc.priority),
        ("quantum", svc.quantum),
        ("sigmgr", svc.sigmgr),
        ("type", svc.service_type),
    ):
        if value is not None:
            yield f"{key} {value}"
    if svc.descr is not None:
        yield f"descr {_quote(svc.descr)}"


# --- reading: tokens ---------------------------------------------------------

TokenKind: TypeAlias = Literal["word", "string", "{", "}", ";", "bad"]


_PUNCTUATION: Final[dict[str, TokenKind]] = {"{": "{", "}": "}", ";": ";"}


@dataclass(frozen=True)
class _Token:
    """One lexical token; ``bad`` tokens carry an error the parser reports in context."""

    kind: TokenKind
    text: str
    line: int
    starts_line: bool

    def describe(self) -> str:
        """How an error message refers to this token."""
        if self.kind == "word":
            return f"'{self.text}'"
        if self.kind == "string":
            return f"the string {_quote(self.text)}"
        return f"'{self.kind}'"


def _tokenize(text: str) -> list[_Token]:
    """Split text into words, strings and ``{ } ;``, dropping white space and comments.

    Only ``\\n`` counts as a line break, so line numbers match what editors show.
    A string left open at the end of its line becomes one ``bad`` token, so that the
    parser can say which service and key it was in.
    """
    tokens: list[_Token] = []
    pos, line, starts_line = 0, 1, True
    while pos < len(text):
        char = text[pos]
        if char == "\n":
            pos, line, starts_line = pos + 1, line + 1, True
            continue
        if char.isspace():
            pos += 1
            continue
        if char == "#":
            end = text.find("\n", pos)
            pos = len(text) if end < 0 else end
            continue
        if char in "{};":
            token, pos = _Token(_PUNCTUATION[char], char, line, starts_line), pos + 1
        elif char in "\"'":
            token, pos = _read_string(text, pos, line, starts_line)
        else:
            token, pos = _read_word(text, pos, line, starts_line)
        tokens.append(token)
        starts_line = False
    return tokens


def _read_word(text: str, pos: int, line: int, starts_line: bool) -> tuple[_Token, int]:
    """A word runs until white space, a comment or one of ``{ } ; " '``."""
    end = pos
    while end < len(text) and not text[end].isspace() and text[end] not in _SPECIALS:
        end += 1
    return _Token("word", text[pos:end], line, starts_line), end


def _read_string(text: str, pos: int, line: int, starts_line: bool) -> tuple[_Token, int]:
    """A string ends at the same quote it began with, on the same line; ``\\`` escapes."""
    quote, pos = text[pos], pos + 1
    out: list[str] = []
    while pos < len(text) and text[pos] != "\n":
        char = text[pos]
        if char == quote:
            return _Token("string", "".join(out), line, starts_line), pos + 1
        if char == "\\" and pos + 1 < len(text) and text[pos + 1] != "\n":
            pos += 1
            char = _ESCAPES.get(text[pos], text[pos])
        out.append(char)
        pos += 1
    return _Token("bad", "unterminated string (a string must end on its line)", line, False), pos


# --- reading: structure ------------------------------------------------------


@dataclass(frozen=True)
class _Statement:
    """``key value ... ;`` as written: the key (``pci device`` is one key) and its values."""

    key: str
    line: int
    values: tuple[_Token, ...]


class _Parser:
    """Turns tokens into service entries, checking the ``service NAME { ... };`` frame."""

    def __init__(self, tokens: list[_Token], path: str) -> None:
        self.tokens = tokens
        self.pos = 0
        self.path = path

    def peek(self) -> _Token | None:
        """The next token, left in place."""
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> _Token | None:
        """The next token, consumed; None at the end of the file."""
        token = self.peek()
        if token is not None:
            self.pos += 1
        return token

    def fail(self, line: int, detail: str, service: str | None = None) -> NoReturn:
        """Raise an error outside any key: in the file, or in one service's frame."""
        where = f"service {service}: " if service is not None else ""
        raise SystemConfError(f"{self.path}:{line}: {where}{detail}")

    def parse_file(self) -> SystemConf:
        """Every entry in order; empty statements between entries are skipped."""
        services: dict[str, ServiceConfig] = {}
        while (token := self.take()) is not None:
            if token.kind == ";":
                continue
            if token.kind == "bad":
                self.fail(token.line, token.text)
            if token.kind != "word" or token.text != "service":
                self.fail(token.line, f"expected 'service', found {token.describe()}")
            entry = self.parse_service(token)
            if entry.label in services:
                first = services[entry.label].line
                self.fail(
                    entry.line, f"duplicate service (first defined on line {first})", entry.label
                )
            services[entry.label] = entry
        return SystemConf(services, self.path)

    def parse_service(self, keyword: _Token) -> ServiceConfig:
        """``service NAME { statements };`` after the word ``service``."""
        label = self.parse_label(keyword)
        opening = self.take()
        if opening is None or opening.kind != "{":
            found = opening.describe() if opening else "the end of the file"
            self.fail((opening or keyword).line, f"expected '{{', found {found}", label)
        builder = _ServiceBuilder(label, self.path, keyword.line)
        while True:
            token = self.take()
            if token is None:
                self.fail(keyword.line, "no '}' closes this service before end of file", label)
            if token.kind == "}":
                break
            if token.kind != ";":
                builder.apply(self.parse_statement(label, token))
        closing = self.take()
        if closing is None or closing.kind != ";":
            self.fail(token.line, "missing ';' after the '}' that closes the service", label)
        return builder.build()

    def parse_label(self, keyword: _Token) -> str:
        """The service name after ``service``: a label, not a keyword."""
        name = self.take()
        if name is None or name.kind != "word":
            found = name.describe() if name else "the end of the file"
            self.fail(keyword.line, f"expected a service name after 'service', found {found}")
        if not _is_label(name.text):
            self.fail(name.line, f"service name '{name.text}' is not a label {_LABEL_RULE}")
        return name.text

    def parse_statement(self, service: str, first: _Token) -> _Statement:
        """``key values... ;``, where ``first`` is the key."""
        if first.kind == "bad":
            self.fail(first.line, first.text, service)
        if first.kind != "word":
            self.fail(first.line, f"expected a key, found {first.describe()}", service)
        if first.text == "service":
            self.fail(first.line, "missing '}' before the next 'service'", service)
        key = self.parse_key(service, first)
        values: list[_Token] = []
        while True:
            token = self.take()
            if token is None:
                _key_error(self.path, first.line, service, key, "missing ';' before end of file")
            if token.kind == ";":
                return _Statement(key, first.line, tuple(values))
            self.check_value(service, key, first.line, token)
            values.append(token)

    def parse_key(self, service: str, first: _Token) -> str:
        """The key name; ``pci`` takes the next word (``device`` or ``class``) with it."""
        key = first.text
        if key == "pci":
            kind = self.peek()
            if kind is None or kind.kind != "word" or kind.text not in ("device", "class"):
                _key_error(self.path, first.line, service, key, "expected 'device' or 'class'")
            self.take()
            key = f"pci {kind.text}"
        if key in _NOT_IN_HWL:
            _key_error(self.path, first.line, service, key, _NOT_IN_HWL[key])
        if key not in _HANDLERS:
            known = ", ".join(sorted(_HANDLERS))
            _key_error(self.path, first.line, service, key, f"unknown key (known: {known})")
        return key

    def check_value(self, service: str, key: str, line: int, token: _Token) -> None:
        """Refuse what cannot be a value: braces, a broken string, the next key."""
        if token.kind == "}":
            _key_error(
                self.path, line, service, key, f"missing ';' before '}}' on line {token.line}"
            )
        if token.kind == "{":
            _key_error(self.path, token.line, service, key, "unexpected '{' in a value list")
        if token.kind == "bad":
            _key_error(self.path, token.line, service, key, token.text)
        if self.starts_statement(token):
            _key_error(
                self.path,
                line,
                service,
                key,
                f"missing ';' before '{token.text}' on line {token.line}",
            )

    def starts_statement(self, token: _Token) -> bool:
        """Whether a word at the start of a line looks like the next key (see module doc)."""
        if token.kind != "word" or not token.starts_line or token.text not in _STATEMENT_WORDS:
            return False
        if token.text != "pci":
            return True
        following = self.peek()
        return following is not None and following.text in ("device", "class")


def _key_error(path: str, line: int, service: str, key: str, detail: str) -> NoReturn:
    """Raise the one error form for problems with a key: file, line, service, key."""
    raise SystemConfError(f"{path}:{line}: service {service}: key '{key}': {detail}")


# --- reading: values ---------------------------------------------------------

_LABEL_RULE: Final = "(letters, digits, '_', '.', '-'; not an upper-case keyword)"


def _is_label(text: str) -> bool:
    """Whether ``text`` can name a service: a label, and not one of MINIX's keywords."""
    return _LABEL.fullmatch(text) is not None and text not in _KEYWORDS


def _hex(text: str) -> int | None:
    """A hex number, with or without ``0x``; None if it is not one."""
    return int(text, 16) if _HEX.fullmatch(text) else None


def _decimal(text: str) -> int | None:
    """A decimal number of at most nine digits; None if it is not one."""
    return int(text) if _DECIMAL.fullmatch(text) else None


def _base_len(text: str) -> tuple[int, int] | None:
    """``base[:len]`` in hex, ``len`` defaulting to 1; None if malformed."""
    base_text, colon, len_text = text.partition(":")
    base = _hex(base_text)
    length = _hex(len_text) if colon else 1
    return None if base is None or length is None else (base, length)


def _pci_device(text: str) -> PciDevice | None:
    """``vid:did[/subvid:subdid]`` in hex, 16 bits each; None if malformed."""
    main, slash, sub = text.partition("/")
    ids = _id_pair(main)
    if ids is None:
        return None
    if not slash:
        return PciDevice(*ids)
    subs = _id_pair(sub)
    return None if subs is None else PciDevice(*ids, *subs)


def _id_pair(text: str) -> tuple[int, int] | None:
    """``vid:did`` in hex, 16 bits each; None if malformed."""
    first, colon, second = text.partition(":")
    a, b = _hex(first), _hex(second)
    if not colon or a is None or b is None or a > 0xFFFF or b > 0xFFFF:
        return None
    return a, b


def _pci_class(text: str) -> PciClass | None:
    """``class[/subclass[/interface]]`` in hex, 8 bits each; None if malformed."""
    parts = [_hex(part) for part in text.split("/")]
    if len(parts) > 3 or any(p is None or p > 0xFF for p in parts):
        return None
    cls, subclass, interface = [*parts, None, None][:3]
    assert cls is not None
    return PciClass(cls, subclass, interface)


class _ServiceBuilder:
    """Collects one entry's statements, one handler per key, into a ServiceConfig."""

    def __init__(self, label: str, path: str, line: int) -> None:
        self.label, self.path = label, path
        self.seen: dict[str, int] = {}
        # The entry so far: ServiceConfig's defaults, each handler replacing its
        # key's field(s). Lists keep file order with repeats dropped.
        self.conf = ServiceConfig(label, path=path, line=line)

    def build(self) -> ServiceConfig:
        """The finished entry."""
        return self.conf

    def apply(self, st: _Statement) -> None:
        """Hand a statement to its key's handler, refusing a key set twice."""
        if st.key in self.seen and st.key not in _REPEATABLE:
            self.fail(st, st.line, f"set twice (first on line {self.seen[st.key]})")
        self.seen.setdefault(st.key, st.line)
        _HANDLERS[st.key](self, st)

    def fail(self, st: _Statement, line: int, detail: str) -> NoReturn:
        """Raise an error about this statement's key."""
        _key_error(self.path, line, self.label, st.key, detail)

    # -- shared value shapes --

    def each(self, st: _Statement, parse: Callable[[str], _V | None], what: str) -> list[_V]:
        """Every value word parsed by ``parse``; a word it refuses is not ``what``."""
        values = []
        for token in self.words(st):
            value = parse(token.text)
            if value is None:
                self.fail(st, token.line, f"'{token.text}' is not {what}")
            values.append(value)
        return values

    def words(self, st: _Statement) -> list[_Token]:
        """The values, which must be one or more words (not strings)."""
        if not st.values:
            self.fail(st, st.line, "needs at least one value")
        for token in st.values:
            if token.kind != "word":
                self.fail(st, token.line, f"expected a word, found {token.describe()}")
        return list(st.values)

    def single(self, st: _Statement) -> _Token:
        """The one value of a key that takes exactly one word."""
        words = self.words(st)
        if len(words) > 1:
            self.fail(st, words[1].line, f"takes one value, found {len(words)}")
        return words[0]

    def lone(self, st: _Statement, words: list[_Token], keywords: Sequence[str]) -> str | None:
        """A keyword such as ALL or NONE, which must then be the only value."""
        for token in words:
            if token.text in keywords:
                if len(words) > 1:
                    self.fail(
                        st, token.line, f"'{token.text}' cannot be combined with other values"
                    )
                return token.text
        return None

    def labels(self, st: _Statement, words: list[_Token], extra: Sequence[str] = ()) -> set[str]:
        """Process labels (and the given pseudo-labels), each checked."""
        for token in words:
            if token.text not in extra and not _is_label(token.text):
                self.fail(st, token.line, f"'{token.text}' is not a process label {_LABEL_RULE}")
        return {token.text for token in words}

    def number(self, st: _Statement, what: str, low: int, high: int) -> int:
        """The one decimal value of a key, within ``low..high``."""
        token = self.single(st)
        value = _decimal(token.text)
        if value is None or not low <= value <= high:
            self.fail(st, token.line, f"'{token.text}' is not {what} (decimal {low}..{high})")
        return value

    def label_or(self, st: _Statement, keyword: str) -> str:
        """The one value of a key that names a service, or is ``keyword``."""
        token = self.single(st)
        if token.text != keyword and not _is_label(token.text):
            self.fail(st, token.line, f"'{token.text}' is neither {keyword} nor a label")
        return token.text

    # -- one handler per key --

    def key_uid(self, st: _Statement) -> None:
        """uid: a decimal uid or SELF."""
        token = self.single(st)
        uid = _decimal(token.text)
        if token.text != SELF and uid is None:
            self.fail(st, token.line, f"'{token.text}' is neither a decimal uid nor SELF")
        self.conf = replace(self.conf, uid=SELF if uid is None else uid)

    def key_ipc(self, st: _Statement) -> None:
        """ipc: ALL, ALL_SYS, NONE or labels with SYSTEM and USER."""
        words = self.words(st)
        keyword = self.lone(st, words, (ALL, ALL_SYS, NONE))
        ipc: IpcTargets
        if keyword == ALL:
            ipc = ALL
        elif keyword == ALL_SYS:
            ipc = ALL_SYS
        elif keyword == NONE:
            ipc = frozenset()
        else:
            ipc = frozenset(self.labels(st, words, (SYSTEM_TARGET, USER_TARGET)))
        self.conf = replace(self.conf, ipc=ipc)

    def key_system(self, st: _Statement) -> None:
        """system: ALL, BASIC, NONE, or call names added to the basic calls."""
        words = self.words(st)
        keyword = self.lone(st, words, (ALL, BASIC, NONE))
        if keyword == ALL:
            self.conf = replace(self.conf, calls=ALL)
            return
        calls: set[str] = set() if keyword == NONE else set(BASIC_CALLS)
        for token in words if keyword is None else []:
            name = token.text.lower()
            if name not in KERNEL_CALLS:
                self.fail(st, token.line, f"'{token.text}' is not a kernel call (see KERNEL_CALLS)")
            calls.add(name)
            if name == "irqctl":
                calls |= IRQ_CALLS
        self.conf = replace(self.conf, calls=frozenset(calls))

    def key_io(self, st: _Statement) -> None:
        """io: ALL, NONE or hex port ranges inside 0..0xffff."""
        words = self.words(st)
        keyword = self.lone(st, words, (ALL, NONE))
        io = [PORT_SPACE] if keyword == ALL else []
        for token in words if keyword is None else []:
            parsed = _base_len(token.text)
            if parsed is None:
                self.fail(st, token.line, f"'{token.text}' is not a hex port range base[:len]")
            base, length = parsed
            if length == 0 or base + length > PORT_LIMIT:
                self.fail(st, token.line, f"'{token.text}' is not a port range inside 0..ffff")
            io.append(IoRange(base, length))
        self.conf = replace(self.conf, io=tuple(dict.fromkeys(io)))

    def key_irq(self, st: _Statement) -> None:
        """irq: ALL, NONE or decimal IRQ lines 0..15."""
        words = self.words(st)
        keyword = self.lone(st, words, (ALL, NONE))
        irqs = list(range(NR_IRQS)) if keyword == ALL else []
        for token in words if keyword is None else []:
            irq = _decimal(token.text)
            if irq is None or irq >= NR_IRQS:
                self.fail(st, token.line, f"'{token.text}' is not an IRQ line (decimal 0..15)")
            irqs.append(irq)
        self.conf = replace(self.conf, irq=tuple(dict.fromkeys(irqs)))

    def key_pci_device(self, st: _Statement) -> None:
        """pci device: hex ids ``vid:did[/subvid:subdid]``; may be repeated."""
        devices = self.each(st, _pci_device, "a PCI device id vid:did[/subvid:subdid] in hex")
        added = dict.fromkeys([*self.conf.pci_devices, *devices])
        self.conf = replace(self.conf, pci_devices=tuple(added))

    def key_pci_class(self, st: _Statement) -> None:
        """pci class: hex ``class[/subclass[/interface]]``; may be repeated."""
        classes = self.each(st, _pci_class, "a PCI class class[/subclass[/interface]] in hex")
        added = dict.fromkeys([*self.conf.pci_classes, *classes])
        self.conf = replace(self.conf, pci_classes=tuple(added))

    def key_memory(self, st: _Statement) -> None:
        """memory: NONE, or hex guest-physical ranges and ``dma``."""
        words = self.words(st)
        if self.lone(st, words, (NONE, ALL)) == ALL:
            self.fail(st, st.line, "'ALL' is refused: name the ranges (guest RAM holds the rings)")
        dma, memory = False, []
        for token in words:
            if token.text.lower() == "dma":
                dma = True
                continue
            if token.text == NONE:
                continue
            parsed = _base_len(token.text)
            if parsed is None:
                self.fail(
                    st, token.line, f"'{token.text}' is neither dma nor a hex range base[:len]"
                )
            base, length = parsed
            if length == 0 or base + length > MEMORY_LIMIT:
                self.fail(st, token.line, f"'{token.text}' is not a range inside 4 GiB")
            memory.append(MemoryRange(base, length))
        self.conf = replace(self.conf, memory=tuple(dict.fromkeys(memory)), dma=dma)

    def key_control(self, st: _Statement) -> None:
        """control: NONE or labels of services this one may control."""
        words = self.words(st)
        if self.lone(st, words, (NONE,)) is None:
            self.conf = replace(self.conf, control=frozenset(self.labels(st, words)))

    def key_scheduler(self, st: _Statement) -> None:
        """scheduler: KERNEL or a label."""
        self.conf = replace(self.conf, scheduler=self.label_or(st, KERNEL))

    def key_sigmgr(self, st: _Statement) -> None:
        """sigmgr: SELF or a label."""
        self.conf = replace(self.conf, sigmgr=self.label_or(st, SELF))

    def key_priority(self, st: _Statement) -> None:
        """priority: a scheduling queue."""
        priority = self.number(st, "a priority queue", 0, NR_SCHED_QUEUES - 1)
        self.conf = replace(self.conf, priority=priority)

    def key_quantum(self, st: _Statement) -> None:
        """quantum: milliseconds."""
        self.conf = replace(self.conf, quantum=self.number(st, "a quantum in ms", 1, 999_999_999))

    def key_type(self, st: _Statement) -> None:
        """type: net or blk, which tells RS which DS key announces the driver."""
        token = self.single(st)
        if token.text not in SERVICE_TYPES:
            self.fail(st, token.line, f"'{token.text}' is not a service type (net or blk)")
        self.conf = replace(self.conf, service_type=token.text)

    def key_descr(self, st: _Statement) -> None:
        """descr: one quoted string."""
        if len(st.values) != 1 or st.values[0].kind != "string":
            self.fail(st, st.line, 'takes one quoted string, as in descr "NE2000 PCI";')
        self.conf = replace(self.conf, descr=st.values[0].text)


_HANDLERS: Final[dict[str, Callable[[_ServiceBuilder, _Statement], None]]] = {
    "uid": _ServiceBuilder.key_uid,
    "ipc": _ServiceBuilder.key_ipc,
    "system": _ServiceBuilder.key_system,
    "io": _ServiceBuilder.key_io,
    "irq": _ServiceBuilder.key_irq,
    "pci device": _ServiceBuilder.key_pci_device,
    "pci class": _ServiceBuilder.key_pci_class,
    "memory": _ServiceBuilder.key_memory,
    "control": _ServiceBuilder.key_control,
    "scheduler": _ServiceBuilder.key_scheduler,
    "sigmgr": _ServiceBuilder.key_sigmgr,
    "priority": _ServiceBuilder.key_priority,
    "quantum": _ServiceBuilder.key_quantum,
    "type": _ServiceBuilder.key_type,
    "descr": _ServiceBuilder.key_descr,
}
_REPEATABLE: Final = frozenset({"pci device", "pci class"})
_NOT_IN_HWL: Final[dict[str, str]] = {
    "vm": "MINIX's VM calls have no counterpart in hwl (there is no VM server)",
    "cpu": "hwl does not pin services to CPUs",
    "domain": "socket domains are not configured in system.conf in hwl",
    "class": "hwl does not support MINIX's service classes; write the keys out",
}
_STATEMENT_WORDS: Final = frozenset(
    {key.split()[0] for key in _HANDLERS} | set(_NOT_IN_HWL) | {"service"}
)
