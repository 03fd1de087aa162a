"""The invariants checked after each trial, and the trial's outcome.

Invariants (each ``{"ok": bool, "detail": str}`` in the record):

- ``bytes``: every read returned the model's bytes, and after the machine
  closed the image holds the model (every write the client was told succeeded);
- ``isolation``: QEMU, the kernel and RS lived (RS restarted by the kernel
  counts as a death), and every service but the fault's target kept its
  process and its restart count;
- ``recovery``: every crash (or exit) in the event log was followed by a restart, and a
  fault that crashes its target by a restart and a good reply within the spec's
  bound (``recovery_bound_ms``, from the inject);
- ``client_errors``: the client saw an error only where the fault makes one the
  right answer (a read touching a sector with a persistent read error, while it
  is in place: EIO);
- ``no_leftovers``: no process of the system (QEMU, the kernel, RS, any
  incarnation of any service) outlived its close.

The tcp workload (:mod:`hwl.campaign.tcp`) reads ``bytes`` as the stream's SHA-256
both ways (all of it, or the prefix before an error the fault makes right), has
``connection`` in place of ``client_errors`` (no error on the client or Linux's
end, no reset in Linux's counters, unless a link down as long as INET's R2 aborted
the connection), and for a fault that heals asks ``recovery`` for bytes moving
again within the bound of the heal.

The outcome says what happened, worst first: ``infrastructure error`` (the
harness failed: a boot, an inject), ``isolation breach`` (isolation or
leftovers), ``silent corruption`` (wrong bytes and no error), ``hang`` (the
client stuck, or no recovery within the bound), ``degraded`` (client errors),
``recovered``. ``ok`` is whether every invariant held: a ``degraded`` trial
whose errors were all right answers is ok.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hwl.campaign.inject import RESTART_EVENTS
from hwl.campaign.spec import Spec

if TYPE_CHECKING:
    from hwl.campaign.trial import Observed

OUTCOMES = (
    "recovered",
    "degraded",
    "silent corruption",
    "isolation breach",
    "hang",
    "infrastructure error",
)
SECTOR = 512


def _check(ok: bool, detail: str = "") -> dict[str, Any]:
    return {"ok": ok, "detail": detail}


def marks(obs: Observed) -> dict[str, float | None]:
    """The trial's moments in ms from the workload's start: inject, crash,
    restart, driver-up (RS's restart event: the new incarnation answered its
    init, where a driver announces itself through DS), first good reply, heal."""
    fault_id = obs.fault.get("id")
    m: dict[str, float | None] = dict.fromkeys(
        ("inject", "crash", "restart", "driver_up", "first_good", "heal")
    )
    inject_mono = None
    for e in obs.events:
        f = e.get("fault")
        if isinstance(f, dict) and f.get("id") == fault_id and fault_id is not None:
            if e["event"] == "fault-inject" and inject_mono is None:
                inject_mono = e["mono"]
                m["inject"] = obs.ms(e["mono"])
            elif e["event"] == "fault-heal":
                m["heal"] = obs.ms(e["mono"])
    if inject_mono is None:
        return m
    target = obs.plan.target
    for e in obs.events:
        if e.get("label") != target or e["mono"] < inject_mono:
            continue
        if e["event"] in ("crash", "exit") and m["crash"] is None:
            m["crash"] = obs.ms(e["mono"])
        elif e["event"] in RESTART_EVENTS and m["restart"] is None:
            m["restart"] = m["driver_up"] = obs.ms(e["mono"])
    after = (
        m["restart"] if obs.expect_restart else m["heal"] if m["heal"] is not None else m["inject"]
    )
    if after is not None:
        m["first_good"] = next((t for t, _, ok in obs.timeline if ok and t >= after), None)
    return m


def _stream_bytes(obs: Observed, tcp: dict[str, Any]) -> dict[str, Any]:
    """The tcp workload: every byte echoed back as sent, and Linux read the stream's
    prefix (SHA-256 both ways); all of it, unless the connection ended in an error."""
    if obs.corrupt_reads:
        first = obs.corrupt_reads[0]
        return _check(False, f"{len(obs.corrupt_reads)} reads came back wrong, the first "
                             f"differs at byte {first['first']}")  # fmt: skip
    if not tcp["to_linux_equal"]:
        return _check(False, f"Linux's {tcp['linux_read']} bytes differ from what was sent")
    if not tcp["from_linux_equal"]:
        return _check(False, f"the {tcp['received']} bytes back differ from what was sent")
    ended = obs.errors or obs.timed_out
    if not ended and not tcp["complete"]:
        return _check(False, f"lost: sent {tcp['sent']}, Linux read {tcp['linux_read']}, "
                             f"{tcp['received']} came back, stream closed "
                             f"{'cleanly' if tcp['complete'] else 'uncleanly'}")  # fmt: skip
    what = "a prefix" if ended else "all"
    return _check(True, f"{obs.ops} rounds, {what} of the stream each way: "
                        f"{tcp['linux_read']} bytes to Linux, {tcp['received']} back, "
                        f"SHA-256 equal both ways")  # fmt: skip


def _bytes(obs: Observed) -> dict[str, Any]:
    if obs.tcp is not None:
        return _stream_bytes(obs, obs.tcp)
    if obs.corrupt_reads:
        first = obs.corrupt_reads[0]
        return _check(False, f"{len(obs.corrupt_reads)} reads wrong, the first at "
                             f"{first['position']} (sectors at {first['sectors']})")  # fmt: skip
    if obs.image_mismatches:
        return _check(False, f"the image differs from the model at {obs.image_mismatches}")
    if obs.model is None:
        return _check(False, "no workload ran")
    return _check(True, f"{obs.ops} operations, {obs.moved} bytes")


def _isolation(obs: Observed) -> dict[str, Any]:
    if obs.core_death:
        return _check(False, obs.core_death)
    if obs.core_restarts and obs.plan.target != "rs":
        return _check(False, "; ".join(obs.core_restarts))
    if not obs.after:
        return _check(False, "RS's table could not be read after the trial")
    moved = [
        f"{label} {obs.before[label]} -> {row}"
        for label, row in obs.after.items()
        if label in obs.before and label != obs.plan.target and row != obs.before[label]
    ]
    gone = sorted(set(obs.before) - set(obs.after))
    if moved or gone:
        return _check(False, "; ".join(moved + [f"{label} gone" for label in gone]))
    return _check(True)


def _recovery(obs: Observed, spec: Spec, m: dict[str, float | None]) -> dict[str, Any]:
    crashes: dict[str, int] = {}
    for e in obs.events:
        label = e.get("label")
        if e["event"] in ("crash", "exit") and label:
            crashes[label] = crashes.get(label, 0) + 1
        elif e["event"] == "restart" and label and crashes.get(label):
            crashes[label] -= 1
    unrestarted = sorted(label for label, n in crashes.items() if n > 0)
    if unrestarted:
        return _check(False, f"died and not restarted: {', '.join(unrestarted)}")
    if obs.tcp is not None and not obs.expect_restart and m["heal"] is not None:
        return _flowed_again(obs, spec, m)
    if not obs.expect_restart or m["inject"] is None:
        return _check(True)
    if m["restart"] is None:
        return _check(False, f"{obs.plan.target} was not restarted after the fault")
    if m["first_good"] is None:
        return _check(False, "no good reply after the restart")
    took = m["first_good"] - m["inject"]
    if took > spec.recovery_bound_ms:
        return _check(False, f"recovered in {took:.0f} ms, bound {spec.recovery_bound_ms:.0f}")
    return _check(True, f"{took:.1f} ms")


def _flowed_again(obs: Observed, spec: Spec, m: dict[str, float | None]) -> dict[str, Any]:
    """The tcp workload, a fault that heals (a link down, a pause): bytes moved again
    within the bound of the heal, unless an error ended the connection (whether
    rightly is the ``connection`` invariant's verdict)."""
    assert m["heal"] is not None
    if obs.errors:
        return _check(True, "the connection ended in an error: no flow to wait for")
    if m["first_good"] is None:
        return _check(False, "no byte moved after the heal")
    took = m["first_good"] - m["heal"]
    if took > spec.recovery_bound_ms:
        return _check(False, f"bytes moved {took:.0f} ms after the heal, "
                             f"bound {spec.recovery_bound_ms:.0f}")  # fmt: skip
    return _check(True, f"bytes moved {took:.1f} ms after the heal")


def error_allowed(obs: Observed, error: dict[str, Any], m: dict[str, float | None]) -> bool:
    """A persistent read error on a sector makes EIO the answer to a read that
    touches it, while the fault is in place; a link down for at least INET's R2
    makes ETIMEDOUT (the connection aborted) the answer to the TCP client."""
    p = obs.plan
    if obs.tcp is not None:
        return _abort_allowed(obs, obs.tcp, error, m)
    if p.kind != "disk-error" or p.settings.get("once", True) or error["errno"] != "EIO":
        return False
    op = str(p.settings.get("op", "read"))
    if op != "any" and not error["op"].endswith(op):
        return False
    start, size = int(error["position"]), int(error["size"])
    if not start <= int(p.settings["sector"]) * SECTOR < start + size:
        return False
    inject, heal = m["inject"], m["heal"]
    return (
        inject is not None
        and error["t_ms"] >= inject
        and (heal is None or error["start_ms"] <= heal)
    )


def _abort_allowed(
    obs: Observed, tcp: dict[str, Any], error: dict[str, Any], m: dict[str, float | None]
) -> bool:
    """RFC 1122's R2: a connection that made no progress for R2 is aborted. A link
    held down at least that long leaves none possible, so the abort (ETIMEDOUT)
    after the inject is right; a shorter one must be ridden out."""
    p = obs.plan
    if p.kind != "link-down" or error["errno"] != "ETIMEDOUT" or m["inject"] is None:
        return False
    held_s = (p.heal_after_ms or 0) / 1000
    return held_s >= float(tcp["r2_s"]) and error["t_ms"] >= m["inject"]


def _connection(obs: Observed, tcp: dict[str, Any], m: dict[str, float | None]) -> dict[str, Any]:
    """The tcp workload: the connection stayed up (no error on the client, none on
    Linux's end, no reset or abort in Linux's counters) unless the fault ended it
    rightly (:func:`_abort_allowed`), which then explains Linux's side too."""
    errors = _client_errors(obs, m)
    if not errors["ok"]:
        return errors
    if obs.errors:  # each the right answer: Linux may have seen the abort as well
        return errors
    if tcp["linux_error"]:
        return _check(False, f"Linux's end: {tcp['linux_error']}")
    resets = {k: v for k, v in tcp["linux_resets"].items() if v}
    if resets:
        return _check(False, f"Linux counted resets or aborts: {resets}")
    return _check(True, "no error on either end, no reset")


def _client_errors(obs: Observed, m: dict[str, float | None]) -> dict[str, Any]:
    wrong = [e for e in obs.errors if not error_allowed(obs, e, m)]
    if wrong:
        e = wrong[0]
        return _check(False, f"{len(wrong)} errors no fault explains, the first: "
                             f"{e['op']} at {e['position']}: {e['errno']}")  # fmt: skip
    return _check(True, f"{len(obs.errors)} errors, each the right answer" if obs.errors else "")


def _leftovers(obs: Observed) -> dict[str, Any]:
    if obs.leftovers:
        return _check(False, f"still running after close: pids {obs.leftovers}")
    return _check(True, f"{len(obs.pids)} processes, all gone")


def outcome(inv: dict[str, dict[str, Any]], obs: Observed) -> str:
    if obs.infra or obs.fault_error or not obs.fault:
        return "infrastructure error"
    if not (inv["isolation"]["ok"] and inv["no_leftovers"]["ok"]):
        return "isolation breach"
    if not inv["bytes"]["ok"]:
        return "silent corruption"
    if obs.timed_out or not inv["recovery"]["ok"]:
        return "hang"
    if obs.errors or not inv.get("connection", {"ok": True})["ok"]:
        return "degraded"
    return "recovered"


def judge(spec: Spec, obs: Observed) -> dict[str, Any]:
    """The record's body: invariants, outcome, timings, marks, the client's view."""
    m = marks(obs)
    inv = {
        "bytes": _bytes(obs),
        "isolation": _isolation(obs),
        "recovery": _recovery(obs, spec, m),
        "client_errors": _client_errors(obs, m),
        "no_leftovers": _leftovers(obs),
    }
    if obs.tcp is not None:  # the client's errors are the connection's
        del inv["client_errors"]
        inv["connection"] = _connection(obs, obs.tcp, m)
    if obs.timed_out:
        inv["recovery"] = _check(False, obs.timed_out)
    result = outcome(inv, obs)
    recovery = None
    if obs.expect_restart and m["inject"] is not None and m["first_good"] is not None:
        recovery = round(m["first_good"] - m["inject"], 3)
    return {
        "plan": obs.plan.to_dict(),
        "fault": obs.fault,
        "outcome": result,
        "ok": result != "infrastructure error" and all(c["ok"] for c in inv.values()),
        "invariants": inv,
        "timings": {
            "boot_ms": round(obs.boot_ms, 1),
            "workload_ms": round(obs.workload_ms, 1),
            "recovery_ms": recovery,
        },
        "marks": m,
        "during_request": obs.during_request,
        "client": {
            "ops": obs.ops,
            "bytes": obs.moved,
            "errors": obs.errors[:20],
            "corrupt_reads": obs.corrupt_reads[:20],
        },
        "infra": obs.infra or obs.fault_error,
        "timeline": obs.timeline,
        **({"tcp": obs.tcp} if obs.tcp is not None else {}),
    }
