"""system.conf: the shipped file, every malformed case, round trips, random input."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwl.config import (
    IoRange,
    MemoryRange,
    PciClass,
    PciDevice,
    ServiceConfig,
    SystemConfError,
    load,
    parse,
)
from hwl.config.system_conf import BASIC_CALLS, IRQ_CALLS, KERNEL_CALLS, default_path

SHIPPED = Path(__file__).resolve().parents[1] / "system.conf"


@pytest.fixture(scope="module")
def shipped() -> dict[str, ServiceConfig]:
    return load(SHIPPED).services


# --- the shipped file --------------------------------------------------------


def test_shipped_file_is_the_default_and_has_every_stock_service(
    shipped: dict[str, ServiceConfig],
) -> None:
    assert default_path() == SHIPPED
    servers = ["rs", "ds", "pci", "vfs", "inet"]
    drivers = ["at_wini", "dp8390", "rtl8139", "e1000", "filter"]
    assert list(shipped) == servers + drivers


def test_shipped_at_wini_privileges(shipped: dict[str, ServiceConfig]) -> None:
    at_wini = shipped["at_wini"]
    assert at_wini.io == () and at_wini.irq == ()  # per channel, from the PCI server
    assert at_wini.pci_classes == (PciClass(1, 1),)
    assert at_wini.dma
    assert at_wini.service_type == "blk"
    for call in ("devio", "vdevio", "sdevio", "umap", "setalarm", "safecopyfrom", "safecopyto"):
        assert at_wini.allows_call(call), call
    assert all(at_wini.allows_call(call) for call in IRQ_CALLS)
    assert not at_wini.allows_call("privctl")
    assert not at_wini.allows_port(0x1F7) and not at_wini.allows_irq(14)  # until reserved
    for peer in ("SYSTEM", "rs", "ds", "pci", "vfs"):
        assert at_wini.allows_ipc(peer), peer
    assert not at_wini.allows_ipc("inet") and not at_wini.allows_ipc("USER")


def test_shipped_nics_get_io_and_irq_from_pci_reserve(shipped: dict[str, ServiceConfig]) -> None:
    dp8390 = shipped["dp8390"]
    assert dp8390.pci_devices == (PciDevice(0x10EC, 0x8029),)
    assert dp8390.io == () and dp8390.irq == ()
    # the data port's string ops ride in vdevio, on its own DMA staging buffers
    assert dp8390.allows_call("vdevio") and dp8390.allows_call("irqenable")
    assert not dp8390.allows_call("sdevio") and dp8390.dma
    assert dp8390.allows_ipc("inet") and dp8390.service_type == "net"
    assert shipped["rtl8139"].pci_devices == (PciDevice(0x10EC, 0x8139),)
    e1000 = shipped["e1000"].pci_devices
    assert PciDevice(0x8086, 0x100E) in e1000 and PciDevice(0x8086, 0x100F) in e1000
    assert all(shipped[nic].dma for nic in ("rtl8139", "e1000"))
    assert all(shipped[nic].allows_ipc("USER") for nic in ("dp8390", "rtl8139", "e1000"))


def test_shipped_servers(shipped: dict[str, ServiceConfig]) -> None:
    assert shipped["rs"].calls == "ALL" and shipped["rs"].ipc == "ALL"
    assert shipped["pci"].allows_port(0xCFC, 4) and shipped["pci"].allows_call("privctl")
    assert shipped["ds"].calls == BASIC_CALLS
    assert shipped["filter"].may_control("at_wini")
    assert not shipped["at_wini"].may_control("filter")


def test_empty_file_and_comments_only_give_no_services() -> None:
    assert len(parse("")) == 0
    assert len(parse("# nothing here\n\n  ;\n")) == 0


# --- accepted syntax ----------------------------------------------------------


def test_defaults_are_minix_defaults() -> None:
    svc = parse("service x { };").services["x"]
    assert svc.ipc == "ALL_SYS" and svc.calls == BASIC_CALLS and svc.uid == 12
    assert svc.allows_ipc("rs") and not svc.allows_ipc("USER")
    assert svc.io == () and svc.irq == () and not svc.dma and svc.line == 1


def test_keywords_and_lists() -> None:
    text = """
    service a {
        uid SELF;
        ipc NONE;
        system NONE;
        io ALL;
        irq ALL;
        memory a0000:20000 0x1000 DMA;
        pci device 1095:3512/1095:6512 10ec:8139;
        pci device 8086:100e;
        pci class 2 1/6/1;
        scheduler KERNEL; sigmgr SELF; priority 0; quantum 50;
        descr 'it\\'s "quoted"\\t';
    };
    """
    svc = parse(text).services["a"]
    assert svc.uid == "SELF" and svc.ipc == frozenset() and svc.calls == frozenset()
    assert svc.io == (IoRange(0, 0x10000),) and svc.irq == tuple(range(16))
    assert svc.memory == (MemoryRange(0xA0000, 0x20000), MemoryRange(0x1000)) and svc.dma
    assert svc.allows_memory(0xBFFFF) and not svc.allows_memory(0xBFFFF, 2)
    assert svc.pci_devices == (
        PciDevice(0x1095, 0x3512, 0x1095, 0x6512),
        PciDevice(0x10EC, 0x8139),
        PciDevice(0x8086, 0x100E),
    )
    assert svc.pci_devices[0].matches(0x1095, 0x3512, 0x1095, 0x6512)
    assert not svc.pci_devices[0].matches(0x1095, 0x3512, 0x1095, 0x1)
    assert svc.pci_classes == (PciClass(2), PciClass(1, 6, 1))
    assert svc.pci_classes[0].matches(2, 0, 0) and not svc.pci_classes[1].matches(1, 6, 0)
    assert (svc.scheduler, svc.sigmgr, svc.priority, svc.quantum) == ("KERNEL", "SELF", 0, 50)
    assert svc.descr == 'it\'s "quoted"\t'


def test_system_list_adds_to_basic_calls_and_irqctl_grants_all_four() -> None:
    svc = parse("service a { system irqenable DEVIO; };").services["a"]
    assert svc.calls == BASIC_CALLS | {"irqenable", "devio"}
    assert svc.allows_call("IRQENABLE") and not svc.allows_call("irqdisable")
    both = parse("service b { system IRQCTL; };").services["b"]
    assert both.calls == BASIC_CALLS | IRQ_CALLS | {"irqctl"}


def test_round_trip_of_a_small_example() -> None:
    text = """# a small example
service at_wini
{
	io	1f0:8 3f6	# controller 0
		170:8 376;	# controller 1
	irq	14 15;
	system	DEVIO VDEVIO IRQCTL;
	pci class 1/1;
	pci device 8086:7010;
	ipc	SYSTEM rs ds pci vfs;
	memory	dma;
	control	filter;
	uid	0;
	descr	"disk\\\\driver \\"one\\"";
};

service rs { ipc ALL; system ALL; priority 4; };
"""
    first = parse(text, "example.conf")
    written = first.to_text()
    again = parse(written, "written.conf")
    assert again == first
    assert again.to_text() == written
    assert list(again.services) == ["at_wini", "rs"]
    assert again.services["at_wini"].descr == 'disk\\driver "one"'


# --- malformed input -----------------------------------------------------------

BAD_CASES = [
    pytest.param(
        "service a {\n  colour red;\n};\n",
        "t.conf:2: service a: key 'colour': unknown key (known: ",
        id="unknown-key",
    ),
    pytest.param(
        "service a {\n  vm BASIC;\n};\n",
        "t.conf:2: service a: key 'vm': MINIX's VM calls have no counterpart in hwl",
        id="minix-only-key",
    ),
    pytest.param(
        "service a {\n  io 1f0:8\n  irq 14;\n};\n",
        "t.conf:2: service a: key 'io': missing ';' before 'irq' on line 3",
        id="missing-semicolon-before-key",
    ),
    pytest.param(
        "service a {\n  irq 14 15\n};\n",
        "t.conf:2: service a: key 'irq': missing ';' before '}' on line 3",
        id="missing-semicolon-before-brace",
    ),
    pytest.param(
        "service a {\n  irq 14 15",
        "t.conf:2: service a: key 'irq': missing ';' before end of file",
        id="missing-semicolon-at-eof",
    ),
    pytest.param(
        "service a {\n  irq 14;\n",
        "t.conf:1: service a: no '}' closes this service before end of file",
        id="unterminated-service-at-eof",
    ),
    pytest.param(
        "service a {\n  irq 14;\nservice b {\n};\n",
        "t.conf:3: service a: missing '}' before the next 'service'",
        id="missing-brace-before-next-service",
    ),
    pytest.param(
        "service a {\n  irq 14;\n}\nservice b { };\n",
        "t.conf:3: service a: missing ';' after the '}' that closes the service",
        id="missing-semicolon-after-brace",
    ),
    pytest.param(
        "service a { };\n\nservice a { irq 3; };\n",
        "t.conf:3: service a: duplicate service (first defined on line 1)",
        id="duplicate-service",
    ),
    pytest.param(
        "service a {\n  irq 14;\n  uid 0;\n  irq 15;\n};\n",
        "t.conf:4: service a: key 'irq': set twice (first on line 2)",
        id="key-set-twice",
    ),
    pytest.param(
        "service at_wini {\n  io 1f0:8\n     1f0:zz;\n};\n",
        "t.conf:3: service at_wini: key 'io': '1f0:zz' is not a hex port range base[:len]",
        id="bad-hex",
    ),
    pytest.param(
        "service a {\n  io fff0:20;\n};\n",
        "t.conf:2: service a: key 'io': 'fff0:20' is not a port range inside 0..ffff",
        id="port-range-past-ffff",
    ),
    pytest.param(
        "service a {\n  io 10000;\n};\n",
        "t.conf:2: service a: key 'io': '10000' is not a port range inside 0..ffff",
        id="port-past-ffff",
    ),
    pytest.param(
        "service a {\n  irq 14 16;\n};\n",
        "t.conf:2: service a: key 'irq': '16' is not an IRQ line (decimal 0..15)",
        id="irq-out-of-range",
    ),
    pytest.param(
        "service a {\n  irq -1;\n};\n",
        "t.conf:2: service a: key 'irq': '-1' is not an IRQ line (decimal 0..15)",
        id="irq-negative",
    ),
    pytest.param(
        "service a {\n  pci device 10ec;\n};\n",
        "t.conf:2: service a: key 'pci device': '10ec' is not a PCI device id "
        "vid:did[/subvid:subdid] in hex",
        id="bad-pci-device",
    ),
    pytest.param(
        "service a {\n  pci device 10ec:18139;\n};\n",
        "t.conf:2: service a: key 'pci device': '10ec:18139' is not a PCI device id "
        "vid:did[/subvid:subdid] in hex",
        id="pci-device-too-wide",
    ),
    pytest.param(
        "service a {\n  pci class 1/1/1/1;\n};\n",
        "t.conf:2: service a: key 'pci class': '1/1/1/1' is not a PCI class "
        "class[/subclass[/interface]] in hex",
        id="bad-pci-class",
    ),
    pytest.param(
        "service a {\n  pci vendor 10ec;\n};\n",
        "t.conf:2: service a: key 'pci': expected 'device' or 'class'",
        id="bad-pci-kind",
    ),
    pytest.param(
        "service a {\n  system DEVIO FROBNICATE;\n};\n",
        "t.conf:2: service a: key 'system': 'FROBNICATE' is not a kernel call (see KERNEL_CALLS)",
        id="unknown-kernel-call",
    ),
    pytest.param(
        "service a {\n  system ALL DEVIO;\n};\n",
        "t.conf:2: service a: key 'system': 'ALL' cannot be combined with other values",
        id="keyword-in-list",
    ),
    pytest.param(
        "service a {\n  ipc rs $bad;\n};\n",
        "t.conf:2: service a: key 'ipc': '$bad' is not a process label",
        id="bad-ipc-label",
    ),
    pytest.param(
        "service a {\n  uid;\n};\n",
        "t.conf:2: service a: key 'uid': needs at least one value",
        id="empty-value",
    ),
    pytest.param(
        "service a {\n  priority 4 5;\n};\n",
        "t.conf:2: service a: key 'priority': takes one value, found 2",
        id="too-many-values",
    ),
    pytest.param(
        "service a {\n  quantum 0;\n};\n",
        "t.conf:2: service a: key 'quantum': '0' is not a quantum in ms (decimal 1..999999999)",
        id="bad-number",
    ),
    pytest.param(
        "service a {\n  memory ALL;\n};\n",
        "t.conf:2: service a: key 'memory': 'ALL' is refused",
        id="memory-all",
    ),
    pytest.param(
        "service a {\n  memory ffffffff:2;\n};\n",
        "t.conf:2: service a: key 'memory': 'ffffffff:2' is not a range inside 4 GiB",
        id="memory-past-4g",
    ),
    pytest.param(
        'service a {\n  descr "open;\n};\n',
        "t.conf:2: service a: key 'descr': unterminated string",
        id="unterminated-string",
    ),
    pytest.param(
        "service a {\n  descr plain;\n};\n",
        "t.conf:2: service a: key 'descr': takes one quoted string",
        id="descr-not-a-string",
    ),
    pytest.param(
        'service a {\n  irq "14";\n};\n',
        "t.conf:2: service a: key 'irq': expected a word, found the string \"14\"",
        id="string-where-word-expected",
    ),
    pytest.param(
        "service a {\n  irq { 14 };\n};\n",
        "t.conf:2: service a: key 'irq': unexpected '{' in a value list",
        id="nested-brace",
    ),
    pytest.param(
        "service a {\n  type char;\n};\n",
        "t.conf:2: service a: key 'type': 'char' is not a service type (net or blk)",
        id="bad-type",
    ),
    pytest.param(
        "service a irq 14;\n",
        "t.conf:1: service a: expected '{', found 'irq'",
        id="missing-opening-brace",
    ),
    pytest.param(
        "service ALL { };\n",
        "t.conf:1: service name 'ALL' is not a label",
        id="keyword-as-service-name",
    ),
    pytest.param(
        "\n\nservers a { };\n",
        "t.conf:3: expected 'service', found 'servers'",
        id="not-a-service",
    ),
    pytest.param(
        "service",
        "t.conf:1: expected a service name after 'service', found the end of the file",
        id="service-at-eof",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD_CASES)
def test_malformed_input_names_file_line_service_and_key(text: str, message: str) -> None:
    with pytest.raises(SystemConfError) as caught:
        parse(text, "t.conf")
    assert str(caught.value).startswith(message), str(caught.value)


def test_load_names_the_file(tmp_path: Path) -> None:
    conf = tmp_path / "system.conf"
    conf.write_text("service a {\n  irq 99;\n};\n")
    with pytest.raises(SystemConfError, match=rf"^{conf}:2: service a: key 'irq': '99'"):
        load(conf)
    with pytest.raises(SystemConfError, match="cannot read"):
        load(tmp_path / "missing.conf")


def test_a_label_named_like_a_key_may_follow_on_the_same_line() -> None:
    """The missing-';' rule only looks at line starts, and at 'pci device|class'."""
    svc = parse("service a {\n ipc rs memory\n   pci ds;\n};").services["a"]
    assert svc.ipc == frozenset({"rs", "memory", "pci", "ds"})


# --- random input ---------------------------------------------------------------

_PIECES = st.sampled_from(
    [
        "service",
        "a",
        "at_wini",
        "{",
        "}",
        ";",
        "\n",
        " ",
        "#",
        '"',
        "'",
        "\\",
        "io",
        "irq",
        "pci",
        "device",
        "class",
        "system",
        "ipc",
        "memory",
        "dma",
        "ALL",
        "NONE",
        "BASIC",
        "1f0:8",
        "ffff:2",
        "10ec:8139/1:2",
        "1/1/1",
        "14",
        "99999999999",
        "9" * 5000,
        "DEVIO",
        "descr",
        "uid",
        "priority",
        "quantum",
        "type",
        "net",
    ]
)


def _refused_or_round_trips(text: str) -> None:
    """``text`` raises only SystemConfError, or parses and reads back equal."""
    try:
        conf = parse(text)
    except SystemConfError:
        return
    assert parse(conf.to_text()) == conf


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_random_text_only_ever_raises_system_conf_error(text: str) -> None:
    _refused_or_round_trips(text)


@settings(max_examples=500, deadline=None)
@given(st.lists(_PIECES, max_size=40).map(" ".join))
def test_random_token_soup_only_ever_raises_system_conf_error(text: str) -> None:
    _refused_or_round_trips(text)


def _hex_range(limit: int) -> st.SearchStrategy[str]:
    """``base[:len]`` inside ``limit``, written either way."""
    return (
        st.integers(0, limit - 1)
        .flatmap(lambda base: st.tuples(st.just(base), st.integers(1, limit - base)))
        .map(lambda r: f"{r[0]:x}" if r[1] == 1 else f"0x{r[0]:X}:{r[1]:x}")
    )


def _some(values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.lists(values, min_size=1, max_size=4).map(" ".join)


_LABELS = st.sampled_from(["rs", "ds", "pci", "vfs", "at_wini", "readclock.drv", "ntfs-3g"])
_U16 = st.integers(0, 0xFFFF).map(lambda n: f"{n:x}")
_U8 = st.integers(0, 0xFF).map(lambda n: f"{n:x}")
_VALID_VALUES: dict[str, st.SearchStrategy[str]] = {
    "uid": st.sampled_from(["0", "12", "SELF"]),
    "ipc": st.one_of(
        st.sampled_from(["ALL", "ALL_SYS", "NONE"]),
        _some(st.one_of(_LABELS, st.sampled_from(["SYSTEM", "USER"]))),
    ),
    "system": st.one_of(
        st.sampled_from(["ALL", "BASIC", "NONE"]),
        _some(st.sampled_from(sorted(KERNEL_CALLS)).map(str.upper)),
    ),
    "io": st.one_of(st.sampled_from(["ALL", "NONE"]), _some(_hex_range(0x10000))),
    "irq": st.one_of(st.sampled_from(["ALL", "NONE"]), _some(st.integers(0, 15).map(str))),
    "memory": _some(st.one_of(_hex_range(1 << 32), st.just("dma"))),
    "pci device": _some(
        st.tuples(_U16, _U16, st.none() | st.tuples(_U16, _U16)).map(
            lambda d: f"{d[0]}:{d[1]}" + (f"/{d[2][0]}:{d[2][1]}" if d[2] else "")
        )
    ),
    "pci class": _some(st.lists(_U8, min_size=1, max_size=3).map("/".join)),
    "control": st.one_of(st.just("NONE"), _some(_LABELS)),
    "scheduler": st.one_of(st.just("KERNEL"), _LABELS),
    "sigmgr": st.one_of(st.just("SELF"), _LABELS),
    "priority": st.integers(0, 15).map(str),
    "quantum": st.integers(1, 10_000).map(str),
    "type": st.sampled_from(["net", "blk"]),
    "descr": st.text(st.characters(blacklist_characters="\n"), max_size=20).map(
        lambda t: '"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"'
    ),
}


def _statement(key: str) -> st.SearchStrategy[str]:
    """``key value...;`` with values valid for that key."""
    return _VALID_VALUES[key].map(lambda values: f"{key} {values};")


_ENTRIES = st.lists(st.sampled_from(sorted(_VALID_VALUES)), unique=True, max_size=6).flatmap(
    lambda keys: st.tuples(*(_statement(key) for key in keys))
)
_FILES = st.dictionaries(_LABELS, _ENTRIES, max_size=3).map(
    lambda services: "\n".join(
        f"service {label}\n{{\n\t" + "\n\t".join(body) + "\n};" for label, body in services.items()
    )
)


@settings(max_examples=300, deadline=None)
@given(_FILES)
def test_valid_random_entries_parse_and_round_trip(text: str) -> None:
    conf = parse(text)
    assert parse(conf.to_text()) == conf
    assert conf.to_text() == parse(conf.to_text()).to_text()
