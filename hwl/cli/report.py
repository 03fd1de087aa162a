"""``hwl report DIR [--html FILE]``: a recorded campaign's outcome table per fault
type (95 % Wilson intervals) and recovery-time percentiles; ``--html`` also writes
one self-contained page with the figures (needs hwl's ``report`` extra)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hwl.campaign import record, report


def cmd_report(args: argparse.Namespace) -> int:
    out = Path(args.dir)
    header = record.read_header(out)
    lines = record.read_trials(out)
    if args.json:
        print(json.dumps({"summary": report.summary(lines), "table": report.table(lines)}))
    else:
        name, seed, commit = (
            header["spec"].get("name"),
            header.get("seed"),
            header.get("hwl_commit"),
        )
        print(f"campaign {name}: seed {seed}, {len(lines)} of {header.get('trials')} trials "
              f"recorded, hwl {commit}")  # fmt: skip
        print(report.text(lines))
    if args.html:
        path = Path(args.html)
        path.write_text(report.page(header, lines), encoding="utf-8")
        if not args.json:
            print(f"\nwrote {path}")
    return 0


def add_parser(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = top.add_parser("report", help="a recorded campaign's tables and figures")
    p.add_argument("dir", help="the campaign's directory (hwl campaign run --out)")
    p.add_argument("--html", metavar="FILE", help="write one self-contained HTML page")
    p.add_argument("--json", action="store_true", help="the summary and table as JSON")
    p.set_defaults(func=cmd_report)
