#!/usr/bin/env python3
"""The fragmentation benchmark's table and plots, from the kernel's `BENCH` lines.

    cargo build --release
    python3 tests/host/fragmentation_bench.py [--kernel KERNEL.elf] [--out DIR] [WORD ...]
    python3 tests/host/fragmentation_bench.py --log serial.log [--out DIR]
    python3 tests/host/fragmentation_bench.py --scenario [--mem 2G] [WORD ...]

Boots `bench=fragmentation` (extra WORDs go on the kernel command line, e.g.
`scenario.fragment_mib=512`), or reads a saved console (`--log FILE`, `-` for stdin), and
prints Markdown tables: per compaction setting, the score when the tasks freed their pages and
at the end of the watch, the time until the score was at most 10, how many 2 MiB blocks could
be allocated afterwards and what share of free memory that was, the allocation latency
percentiles (beside the unfragmented baseline of the same boot), pages migrated and direct
compaction stalls; then page migration against a plain 4 KiB copy. Writes DIR/fragmentation.csv
(every BENCH figure), DIR/fragmentation_score.svg (the score every 100 ms after the free, one
line per setting) and DIR/fragmentation_latency.svg (latency at each percentile, log scale, one
line per setting). Default kernel: target/x86_64-unknown-none/release/kernel. Figures, not a
test (host_checks.py runs a small version to keep it working).

With --scenario it boots `scenario=fragment` instead (a `--mem` guest, reporting on), once at
the defaults and once with compaction.proactiveness=0 (the control), samples the QEMU process's
resident memory every 20 ms and prints how much of the memory the tasks freed in 4 KiB pieces
left it within 5 s of the free, and when 50% and 90% had.
"""

import argparse
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

COLOURS = {
    "unfragmented": "#7f7f7f",
    "none": "#d62728",
    "direct_only": "#ff7f0e",
    "proactive_20": "#2ca02c",
    "proactive_50": "#1f77b4",
    "proactive_100": "#9467bd",
}
PERCENTILES = [("p5", 5), ("p50", 50), ("p90", 90), ("p95", 95), ("p99", 99), ("max", 100)]


def colour(setting):
    return COLOURS.get(setting, "#8c564b")


def bench_records(lines):
    for line in lines:
        line = line.rstrip("\r\n")
        if line.startswith("BENCH "):
            yield json.loads(line[len("BENCH "):])


def parse(lines):
    """{"scores": {setting: [(t_ms, score_pct, stranded_mib)]}, "allocs": {setting: record},
    "migration": record or None, "order": [settings in the order they ran]}."""
    result = {"scores": {}, "allocs": {}, "migration": None, "order": []}
    for record in bench_records(lines):
        name = record.get("name")
        setting = record.get("setting")
        if name == "fragmentation_score":
            result["scores"].setdefault(setting, []).append(
                (record["t_ms"], record["score_pct"], record["stranded_mib"]))
        elif name == "fragmentation_alloc":
            result["allocs"][setting] = record
            result["order"].append(setting)
        elif name == "fragmentation_migration":
            result["migration"] = record
    return result


def time_to_score(samples, at_most):
    for t_ms, score, _ in samples:
        if score <= at_most:
            return t_ms
    return None


def tables(result):
    allocs, scores = result["allocs"], result["scores"]
    out = ["| setting | score at free | score after watch | ms to score <= 10 | 2 MiB blocks | "
           "share of free memory | p5 us | p50 us | p90 us | p95 us | p99 us | p50 x base | "
           "p95 x base | pages migrated | direct stalls |",
           "|" + "---|" * 15]
    for setting in result["order"]:
        record = allocs[setting]
        samples = scores.get(setting, [])
        reached = time_to_score(samples, 10)
        cells = [
            setting,
            f"{record['score_at_free_pct']:.0f}" if "score_at_free_pct" in record else "-",
            f"{samples[-1][1]:.0f}" if samples else "-",
            ("-" if not samples else "never" if reached is None else f"{reached:.0f}"),
            f"{record['blocks']:.0f}",
            f"{record['share_of_free_pct']:.1f}%",
            *(f"{record[key + '_us']:.1f}" for key, _ in PERCENTILES[:5]),
            f"{record['p50_vs_unfragmented']:.1f}" if "p50_vs_unfragmented" in record else "1",
            f"{record['p95_vs_unfragmented']:.1f}" if "p95_vs_unfragmented" in record else "1",
            f"{record['pages_migrated']:.0f}" if "pages_migrated" in record else "-",
            f"{record['compact_stall']:.0f}" if "compact_stall" in record else "-",
        ]
        out.append("| " + " | ".join(cells) + " |")
    migration = result["migration"]
    if migration:
        out += ["",
                "| migrate one page (median) | its throughput | plain 4 KiB copy (median) | "
                "ratio | full compaction pass per page | its throughput |",
                "|---|---|---|---|---|---|",
                f"| {migration['migrate_ns_per_page']:.0f} ns | "
                f"{migration['migrate_mib_per_s']:.0f} MiB/s | {migration['copy_4k_ns']:.0f} ns | "
                f"{migration['migrate_vs_copy_ratio']:.2f} | "
                f"{migration['compact_pass_ns_per_page']:.0f} ns | "
                f"{migration['compact_pass_mib_per_s']:.0f} MiB/s |"]
    return "\n".join(out) + "\n"


def write_csv(path, lines):
    records = list(bench_records(lines))
    columns = ["name", "setting"] + sorted({key for record in records for key in record}
                                           - {"name", "setting"})
    with open(path, "w") as f:
        f.write(",".join(columns) + "\n")
        for record in records:
            f.write(",".join(str(record.get(column, "")) for column in columns) + "\n")


def svg_frame(title, width, height, left, right, top, bottom):
    return [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'font-family="sans-serif" font-size="12">',
            f'<rect width="{width}" height="{height}" fill="white"/>',
            f'<text x="{left}" y="18" font-size="14">{title}</text>',
            f'<line x1="{left}" x2="{left}" y1="{top}" y2="{height - bottom}" stroke="black"/>',
            f'<line x1="{left}" x2="{width - right}" y1="{height - bottom}" '
            f'y2="{height - bottom}" stroke="black"/>']


def write_score_svg(path, result):
    width, height, left, bottom, top, right = 800, 420, 60, 50, 30, 170
    series = [(setting, samples) for setting, samples in result["scores"].items() if samples]
    t_max = max([t for _, samples in series for t, _, _ in samples] + [100]) / 1000

    def x(t_s):
        return left + (width - left - right) * t_s / t_max

    def y(score):
        return height - bottom - (height - bottom - top) * score / 100

    out = svg_frame("Fragmentation score after the free (every 100 ms), per compaction setting",
                    width, height, left, right, top, bottom)
    for tick in range(0, 101, 20):
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(tick):.1f}" '
                   f'y2="{y(tick):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 8}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick}</text>')
    step = max(1, math.ceil(t_max / 10))
    for second in range(0, int(t_max) + 1, step):
        out.append(f'<text x="{x(second):.1f}" y="{height - bottom + 18}" '
                   f'text-anchor="middle">{second}</text>')
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 12}" '
               f'text-anchor="middle">seconds since the tasks freed 3 of every 4 pages</text>')
    out.append(f'<text x="16" y="{(top + height - bottom) / 2}" transform="rotate(-90 16 '
               f'{(top + height - bottom) / 2})" text-anchor="middle">score (0-100)</text>')
    for index, (setting, samples) in enumerate(series):
        points = " ".join(f"{x(t / 1000):.1f},{y(score):.1f}" for t, score, _ in samples)
        out.append(f'<polyline fill="none" stroke="{colour(setting)}" stroke-width="2" '
                   f'points="{points}"/>')
        out.append(f'<text x="{width - right + 10}" y="{top + 20 + 18 * index}" '
                   f'fill="{colour(setting)}">{setting}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def write_latency_svg(path, result):
    width, height, left, bottom, top, right = 800, 420, 70, 50, 30, 170
    series = [(setting, result["allocs"][setting]) for setting in result["order"]]
    values = [record[f"{key}_us"] for _, record in series for key, _ in PERCENTILES]
    low = 10 ** math.floor(math.log10(max(min(v for v in values if v > 0), 0.01)))
    high = 10 ** math.ceil(math.log10(max(values + [low * 10])))

    def x(index):
        return left + (width - left - right) * (index + 0.5) / len(PERCENTILES)

    def y(us):
        us = max(us, low)
        return height - bottom - (height - bottom - top) * (math.log10(us) - math.log10(low)) \
            / (math.log10(high) - math.log10(low))

    out = svg_frame("2 MiB allocation latency until failure, per compaction setting",
                    width, height, left, right, top, bottom)
    decade = low
    while decade <= high:
        label = f"{decade:g}"
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(decade):.1f}" '
                   f'y2="{y(decade):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 8}" y="{y(decade) + 4:.1f}" text-anchor="end">'
                   f'{label}</text>')
        decade *= 10
    for index, (key, _) in enumerate(PERCENTILES):
        out.append(f'<text x="{x(index):.1f}" y="{height - bottom + 18}" '
                   f'text-anchor="middle">{key}</text>')
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 12}" '
               f'text-anchor="middle">percentile of the successful allocations</text>')
    out.append(f'<text x="16" y="{(top + height - bottom) / 2}" transform="rotate(-90 16 '
               f'{(top + height - bottom) / 2})" text-anchor="middle">microseconds (log)</text>')
    for index, (setting, record) in enumerate(series):
        points = " ".join(f"{x(i):.1f},{y(record[key + '_us']):.1f}"
                          for i, (key, _) in enumerate(PERCENTILES))
        dash = ' stroke-dasharray="5 3"' if setting == "unfragmented" else ""
        out.append(f'<polyline fill="none" stroke="{colour(setting)}" stroke-width="2"{dash} '
                   f'points="{points}"/>')
        for i, (key, _) in enumerate(PERCENTILES):
            out.append(f'<circle cx="{x(i):.1f}" cy="{y(record[key + "_us"]):.1f}" r="3" '
                       f'fill="{colour(setting)}"/>')
        out.append(f'<text x="{width - right + 10}" y="{top + 20 + 18 * index}" '
                   f'fill="{colour(setting)}">{setting} '
                   f'({record["share_of_free_pct"]:.0f}%)</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def boot(kernel, words):
    """Runs bench=fragmentation once; returns the console's lines (or exits on failure)."""
    from qemu_host import Guest
    guest = Guest(kernel, ["bench=fragmentation", *words], echo=False)
    status = guest.wait_exit(timeout=3600)
    if status != 0:
        sys.stdout.write("\n".join(guest.lines[-30:]) + "\n")
        sys.exit(f"bench=fragmentation failed (exit status {status})")
    return guest.lines


def scenario(kernel, mem, words):
    from qemu_host import MIB, fragment_run
    print("| proactiveness | filled MiB | freed MiB | score at free | compacted after | "
          "reported after | returned in 5 s | t50 s | t90 s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for proactiveness, label in [(None, "default"), (0, "0 (control)")]:
        extra = list(words)
        if proactiveness is not None:
            extra.append(f"compaction.proactiveness={proactiveness}")
        run = fragment_run(kernel, mem=mem, period=0.02, words=extra)
        if run["status"] != 0:
            sys.exit(f"scenario=fragment failed (exit status {run['status']})")
        events = run["events"]

        def ms(name):
            return f"{events[name]['ms']} ms" if name in events else "never"

        def sec(value):
            return "never" if value is None else f"{value:.2f}"
        print(f"| {label} | {run['filled_bytes'] / MIB:.0f} | {run['freed_bytes'] / MIB:.0f} | "
              f"{events['fragmented']['score']} | {ms('compacted')} | {ms('reported')} | "
              f"{run['returned_fraction']:.1%} | {sec(run['t50_s'])} | {sec(run['t90_s'])} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel",
                        default=os.path.join(ROOT, "target/x86_64-unknown-none/release/kernel"))
    parser.add_argument("words", nargs="*", help="more kernel command-line words")
    parser.add_argument("--out", default=".")
    parser.add_argument("--log", help="read a saved console instead of booting ('-': stdin)")
    parser.add_argument("--scenario", action="store_true",
                        help="measure what the host gets back after scenario=fragment instead")
    parser.add_argument("--mem", default="2G", help="guest memory for --scenario")
    args = parser.parse_args()
    if args.scenario:
        scenario(args.kernel, args.mem, args.words)
        return
    if args.log:
        source = sys.stdin if args.log == "-" else open(args.log)
        lines = [line.rstrip("\r\n") for line in source]
    else:
        if not os.path.exists(args.kernel):
            sys.exit(f"no kernel at {args.kernel}: run `cargo build --release` first")
        lines = boot(args.kernel, args.words)
    result = parse(lines)
    if not result["order"]:
        sys.exit("no fragmentation BENCH lines found")
    os.makedirs(args.out, exist_ok=True)
    write_csv(os.path.join(args.out, "fragmentation.csv"), lines)
    write_score_svg(os.path.join(args.out, "fragmentation_score.svg"), result)
    write_latency_svg(os.path.join(args.out, "fragmentation_latency.svg"), result)
    sys.stdout.write(tables(result))
    print(f"\nwrote {args.out}/fragmentation.csv, {args.out}/fragmentation_score.svg and "
          f"{args.out}/fragmentation_latency.svg")


if __name__ == "__main__":
    main()
