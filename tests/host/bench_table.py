#!/usr/bin/env python3
"""Turns the kernel's `BENCH {...}` serial lines into a Markdown table.

    cargo run --release -- bench=alloc | python3 tests/host/bench_table.py
    python3 tests/host/bench_table.py serial.log

Every key of every BENCH object becomes a column (name first); lines that are not BENCH lines
are ignored, so the whole console can be piped in, except the line `bench=alloc` prints with the
native benchmark's command, which follows the table.
"""
import json
import sys


NOTE_PREFIX = "native figures of the same sequences:"


def bench_records(lines, notes=None):
    for line in lines:
        line = line.rstrip("\r\n")
        if line.startswith("BENCH "):
            yield json.loads(line[len("BENCH "):])
        elif notes is not None and line.startswith(NOTE_PREFIX):
            notes.append(line)


def table(records):
    records = list(records)
    if not records:
        return "no BENCH lines found\n"
    columns = ["name"] + sorted({key for record in records for key in record} - {"name"})
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for record in records:
        cells = []
        for column in columns:
            value = record.get(column, "")
            cells.append(f"{value:.3f}" if isinstance(value, float) else str(value))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main():
    source = open(sys.argv[1]) if len(sys.argv) > 1 else sys.stdin
    notes = []
    sys.stdout.write(table(bench_records(source, notes)))
    for note in notes:
        sys.stdout.write(f"\n{note}\n")


if __name__ == "__main__":
    main()
