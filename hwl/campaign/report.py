"""A campaign's report: the outcome table per fault type with 95 % Wilson
intervals, recovery-time percentiles, and (``--html``) one self-contained page
with the figures as inline SVG (matplotlib, hwl's ``report`` extra).

The arithmetic here needs nothing beyond the standard library, so the summary a
campaign prints and ``hwl report``'s text need no plotting library.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Iterable, Sequence
from typing import Any

from hwl.campaign.invariants import OUTCOMES
from hwl.errors import HwlError

Z95 = 1.959963984540054  # the normal quantile of 0.975


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (Wilson 1927): sound at 0 and n,
    where the normal approximation gives an interval of width 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile with linear interpolation between ranks (numpy's default)."""
    if not values:
        return None
    s = sorted(values)
    at = (len(s) - 1) * q / 100
    low = math.floor(at)
    high = min(low + 1, len(s) - 1)
    return s[low] + (s[high] - s[low]) * (at - low)


def fault_type(line: dict[str, Any]) -> str:
    """The row a trial counts in: the kind, with fi's type and a disk error's
    persistence (they fail differently)."""
    plan = line.get("plan") or {}
    kind = str(plan.get("kind", "?"))
    settings = plan.get("settings") or {}
    if kind == "fi":
        return f"fi {settings.get('type', 'crash')}"
    if kind == "disk-error":
        return "disk-error once" if settings.get("once", True) else "disk-error persistent"
    return kind


def recovery_times(lines: Iterable[dict[str, Any]]) -> list[float]:
    return [
        float(t["timings"]["recovery_ms"])
        for t in lines
        if (t.get("timings") or {}).get("recovery_ms") is not None
    ]


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def summary(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """The benchmark's keys and the counts behind them."""
    counts = {o: sum(1 for t in lines if t["outcome"] == o) for o in OUTCOMES}
    rec = recovery_times(lines)
    ok = sum(1 for t in lines if t["ok"])
    return {
        "trials": len(lines),
        "ok": ok,
        "outcomes": counts,
        "isolation_breaches": counts["isolation breach"],
        "silent_corruptions": counts["silent corruption"],
        "hangs": counts["hang"],
        "infrastructure_errors": counts["infrastructure error"],
        "recovered_ratio": round(ok / len(lines), 4) if lines else 0.0,
        "recovery_p50_ms": _r(percentile(rec, 50)),
        "recovery_p95_ms": _r(percentile(rec, 95)),
        "recovery_p99_ms": _r(percentile(rec, 99)),
        "recovery_max_ms": _r(max(rec) if rec else None),
        "failing": [int(t["trial"]) for t in lines if not t["ok"]],
    }


def table(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per fault type (and ``all``): injected, each outcome's count with its
    share's 95 % interval, and the recovery-time percentiles."""
    types = sorted({fault_type(t) for t in lines})
    rows = []
    for name in [*types, "all"]:
        mine = [t for t in lines if name == "all" or fault_type(t) == name]
        n = len(mine)
        rec = recovery_times(mine)
        rows.append(
            {
                "fault": name,
                "trials": n,
                "injected": sum(1 for t in mine if t.get("fault")),
                "outcomes": {
                    o: {"n": (k := sum(1 for t in mine if t["outcome"] == o)), "ci95": wilson(k, n)}
                    for o in OUTCOMES
                },
                "recovery_ms": {
                    "n": len(rec),
                    "p50": _r(percentile(rec, 50)),
                    "p95": _r(percentile(rec, 95)),
                    "p99": _r(percentile(rec, 99)),
                    "max": _r(max(rec) if rec else None),
                },
            }
        )
    return rows


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _outcome_counts(row: dict[str, Any]) -> list[tuple[int, float, float]]:
    """A table row's count of each outcome with its 95 % interval in per cent."""
    return [
        (c["n"], c["ci95"][0] * 100, c["ci95"][1] * 100)
        for c in (row["outcomes"][o] for o in OUTCOMES)
    ]


def text(lines: list[dict[str, Any]]) -> str:
    """The tables as plain text: outcomes (count and 95 % interval in %), then
    recovery times."""
    rows = table(lines)
    short = {"infrastructure error": "infra error", "silent corruption": "silent corr."}
    head = ["fault", "trials", "injected", *(short.get(o, o) for o in OUTCOMES)]
    body = []
    for r in rows:
        cells = [r["fault"], str(r["trials"]), str(r["injected"])]
        cells += [f"{n} [{lo:.0f}-{hi:.0f}%]" for n, lo, hi in _outcome_counts(r)]
        body.append(cells)
    out = [
        _grid(head, body),
        "",
        "recovery time (ms, inject to the first good reply after the restart)",
    ]
    rec_head = ["fault", "n", "p50", "p95", "p99", "max"]
    rec_body = [
        [
            r["fault"],
            str(r["recovery_ms"]["n"]),
            *(_ms(r["recovery_ms"][k]) for k in ("p50", "p95", "p99", "max")),
        ]
        for r in rows
        if r["recovery_ms"]["n"]
    ]
    out.append(_grid(rec_head, rec_body) if rec_body else "(no trial restarted its target)")
    failing = [t for t in lines if not t["ok"]]
    if failing:
        out += ["", "failing trials (hwl campaign replay DIR TRIAL):"]
        for t in failing:
            bad = [k for k, v in (t.get("invariants") or {}).items() if not v["ok"]]
            why = t.get("infra") or "; ".join(f"{k}: {t['invariants'][k]['detail']}" for k in bad)
            out.append(f"  {t['trial']}: {t['outcome']} ({fault_type(t)}): {why}")
    return "\n".join(out)


def _grid(head: list[str], body: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*row) for row in [head, *body])


# ------------------------------------------------------------------ figures


def pick_trials(lines: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The worst trial (a failing one, else the slowest recovery) and a typical one
    (the recovery closest to the median), among those with a timeline."""
    with_tl = [t for t in lines if t.get("timeline")]
    if not with_tl:
        return None, None
    failing = [t for t in with_tl if not t["ok"]]
    timed = [t for t in with_tl if (t.get("timings") or {}).get("recovery_ms") is not None]
    if failing:
        worst = failing[0]
    elif timed:
        worst = max(timed, key=lambda t: t["timings"]["recovery_ms"])
    else:
        worst = with_tl[0]
    pool = timed or with_tl
    med = percentile(recovery_times(pool), 50) if timed else None
    typical = (
        min(pool, key=lambda t: abs(t["timings"]["recovery_ms"] - med))
        if med is not None
        else pool[len(pool) // 2]
    )
    return worst, typical


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]


def _figure(width: float = 7.5, height: float = 3.0) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise HwlError("hwl report --html needs matplotlib: install hwl's report extra") from exc
    return Figure(figsize=(width, height))


def recovery_figure(lines: list[dict[str, Any]]) -> str:
    fig = _figure()
    ax = fig.add_subplot()
    by_type: dict[str, list[float]] = {}
    for t in lines:
        ms = (t.get("timings") or {}).get("recovery_ms")
        if ms is not None:
            by_type.setdefault(fault_type(t), []).append(float(ms))
    if by_type:
        ax.hist(list(by_type.values()), bins=30, stacked=True, label=list(by_type))
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no trial restarted its target", ha="center", transform=ax.transAxes)
    ax.set_xlabel("recovery time (ms): inject to the first good reply")
    ax.set_ylabel("trials")
    return _svg(fig)


MARK_STYLE = {
    "inject": "tab:red",
    "crash": "black",
    "restart": "tab:orange",
    "driver_up": "tab:purple",
    "first_good": "tab:green",
    "heal": "tab:blue",
}


def timeline_figure(line: dict[str, Any], title: str, bin_ms: float = 10.0) -> str:
    """The client's throughput in ``bin_ms`` bins, with the trial's marks."""
    fig = _figure()
    ax = fig.add_subplot()
    points = line.get("timeline") or []
    end = max((p[0] for p in points), default=0.0)
    bins = [0.0] * (int(end // bin_ms) + 1)
    for t_ms, size, _ok in points:
        bins[int(t_ms // bin_ms)] += size
    mbps = [b / (1 << 20) / (bin_ms / 1000) for b in bins]
    ax.step([i * bin_ms for i in range(len(bins))], mbps, where="post", color="tab:gray")
    bad = [p[0] for p in points if not p[2]]
    if bad:
        ax.plot(bad, [0] * len(bad), "x", color="tab:red", label="failed or wrong")
    offset = 0
    for name, colour in MARK_STYLE.items():
        at = (line.get("marks") or {}).get(name)
        if at is None:
            continue
        ax.axvline(at, color=colour, linestyle="--", linewidth=1)
        ax.annotate(name.replace("_", "-"), (at, 1), xycoords=("data", "axes fraction"),
                    xytext=(2, -10 - 10 * offset), textcoords="offset points",
                    color=colour, fontsize=8)  # fmt: skip
        offset = (offset + 1) % 4
    ax.set_xlabel("ms since the workload began")
    ax.set_ylabel(f"client MiB/s ({bin_ms:.0f} ms bins)")
    ax.set_title(title, fontsize=10)
    return _svg(fig)


def page(header: dict[str, Any], lines: list[dict[str, Any]]) -> str:
    """One self-contained HTML page: the tables and the figures inline."""
    s = summary(lines)
    worst, typical = pick_trials(lines)
    figures = [("Recovery time", recovery_figure(lines))]
    for which, t in (("Worst trial", worst), ("Typical trial", typical)):
        if t is not None:
            title = f"{which}: trial {t['trial']}, {fault_type(t)}, {t['outcome']}"
            figures.append((title, timeline_figure(t, title)))
    rows = table(lines)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["fault", "trials", "injected", *OUTCOMES])
    body = []
    for r in rows:
        cells = [r["fault"], str(r["trials"]), str(r["injected"])]
        cells += [f"{n} <small>[{lo:.0f}-{hi:.0f} %]</small>" for n, lo, hi in _outcome_counts(r)]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    rec_rows = "".join(
        f"<tr><td>{html.escape(r['fault'])}</td><td>{r['recovery_ms']['n']}</td>"
        + "".join(f"<td>{_ms(r['recovery_ms'][k])}</td>" for k in ("p50", "p95", "p99", "max"))
        + "</tr>"
        for r in rows
        if r["recovery_ms"]["n"]
    )
    name = html.escape(str(header.get("spec", {}).get("name", "")))
    commit = html.escape(str(header.get("hwl_commit")))
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>hwl campaign {name}</title>
<style>body{{font-family:sans-serif;max-width:64em;margin:1em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}
td:first-child{{text-align:left}}</style></head><body>
<h1>Campaign {name}</h1>
<p>seed {header.get("seed")}, {s["trials"]} trials, hwl {commit},
started {html.escape(str(header.get("started")))}; recovered ratio {s["recovered_ratio"]},
{s["isolation_breaches"]} isolation breaches, {s["silent_corruptions"]} silent corruptions.</p>
<h2>Outcomes per fault type (count, 95 % Wilson interval)</h2>
<table><tr>{head}</tr>{"".join(body)}</table>
<h2>Recovery time (ms)</h2>
<table><tr><th>fault</th><th>n</th><th>p50</th><th>p95</th><th>p99</th><th>max</th></tr>{rec_rows}</table>
{"".join(f"<h2>{html.escape(t)}</h2>{svg}" for t, svg in figures)}
</body></html>
"""
