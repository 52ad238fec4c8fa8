#!/usr/bin/env python3
"""Writes a benchmark's output into docs/performance.md as a dated section for its device.

Usage: bench_section.py DOC KIND DEVICE_NAME OUTPUT [--date YYYY-MM-DD] [--command TEXT]
KIND is `GPU` or `CPU`; the heading is `## DATE, KIND: DEVICE_NAME`. A section with the same
KIND and device name (any date) is replaced where it stands; otherwise the new one goes before
the first dated section, as the newest. The section holds the command that made it and the
output of `sdhost bench` verbatim in a code block, which keeps the tables' columns aligned.
"""

from __future__ import annotations

import argparse
import datetime
import re
from pathlib import Path


def heading(date: str, kind: str, device: str) -> str:
    return f"## {date}, {kind}: {device}"


def section(date: str, kind: str, device: str, command: str, output: str) -> list[str]:
    lines = [heading(date, kind, device), ""]
    lines += [f"`{command}`:", ""] if command else []
    lines += ["```", *output.rstrip("\n").splitlines(), "```", ""]
    return lines


def headings(lines: list[str]) -> list[int]:
    """Indices of the second-level headings outside code blocks."""
    found, fenced = [], False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("## "):
            found.append(i)
    return found


def place(doc: str, kind: str, device: str, new: list[str]) -> str:
    """`doc` with `new` replacing the section for (kind, device), or added as the newest."""
    lines = doc.splitlines()
    at = headings(lines)
    same = re.compile(rf"^## \d{{4}}-\d{{2}}-\d{{2}}, {re.escape(kind)}: {re.escape(device)}\s*$")
    start = next((i for i in at if same.match(lines[i])), None)
    if start is None:
        # Newest first: before the first section (the intro stays on top), else at the end.
        first = at[0] if at else len(lines)
        if first == len(lines) and lines and lines[-1].strip():
            new = ["", *new]
        lines[first:first] = new
    else:
        # A section runs to the next heading.
        end = next((i for i in at if i > start), len(lines))
        lines[start:end] = new
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("doc", type=Path)
    parser.add_argument("kind", choices=["GPU", "CPU"])
    parser.add_argument("device")
    parser.add_argument("output", type=Path, help="the captured output of sdhost bench")
    parser.add_argument("--date", default=datetime.datetime.now(datetime.timezone.utc).date().isoformat())
    parser.add_argument("--command", default="", help="the command that made the output")
    args = parser.parse_args()
    new = section(args.date, args.kind, args.device, args.command, args.output.read_text())
    args.doc.write_text(place(args.doc.read_text(), args.kind, args.device, new))
    print(f"scripts/bench_section.py: wrote '{heading(args.date, args.kind, args.device)}' into {args.doc}")


if __name__ == "__main__":
    main()
