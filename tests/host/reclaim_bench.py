#!/usr/bin/env python3
"""The reclaim benchmark: how fast and how completely the guest gives freed memory back.

    cargo build --release
    python3 tests/host/reclaim_bench.py [KERNEL.elf] [--out DIR]

Boots `scenario=reclaim` (touch 1 GiB of a 2 GiB guest, free it, idle) twice, with free page
reporting on and off, sampling the QEMU process's resident memory every 20 ms; then times a
1 GiB balloon inflation over QMP. Writes DIR/reclaim.csv (mode, t_s, rss_mib, with the guest's
event marks) and DIR/reclaim.svg (resident MiB over time, one line per mode, a dashed mark
where the guest finished touching and where it freed), and prints a Markdown table:
fraction of the freed memory returned within 10 s, time to 50%/90%/95% returned, and the
inflate time. With --linux DIR (built by `python3 tests/host/linux_guest.py DIR` from Debian's
packages), a Linux 6.1 guest runs the same reclaim and inflation on the same QEMU, side by side.
Default kernel: target/x86_64-unknown-none/release/kernel. Figures, not a test.
"""

import argparse
import os
import sys
import time

from qemu_host import ROOT, Guest, reclaim_run

MIB = 1 << 20
GIB = 1 << 30
#: How long after `freed` the resident memory is watched.
WATCH_S = 10.0


def inflate_time(kernel, guest=None):
    """Seconds from the QMP `balloon` command to query-balloon reaching 1 GiB."""
    words, env = guest or ([], {})
    guest = Guest(kernel, [*words, "scenario=balloon", "idle_s=120"], env=env, echo=False)
    try:
        guest.wait_event("ready", timeout=300)
        time.sleep(1)
        asked = time.monotonic()
        guest.qmp("balloon", value=1 * GIB)
        while guest.qmp("query-balloon")["actual"] != 1 * GIB:
            if time.monotonic() - asked > 120:
                return None
            time.sleep(0.01)
        return time.monotonic() - asked
    finally:
        guest.kill()


def write_csv(path, series):
    with open(path, "w") as f:
        f.write("mode,t_s,rss_mib,event\n")
        for mode, _, _, run in series:
            for name, t in run["events"].items():
                f.write(f"{mode},{t:.3f},,{name}\n")
            for t, rss in run["samples"]:
                f.write(f"{mode},{t:.3f},{rss / MIB:.1f},\n")


def write_svg(path, series):
    runs = [run for _, _, _, run in series]
    width, height, left, bottom, top, right = 800, 420, 70, 50, 30, 190
    t_max = max(t for run in runs for t, _ in run["samples"])
    rss_max = max(rss for run in runs for _, rss in run["samples"]) / MIB * 1.1

    def x(t):
        return left + (width - left - right) * t / t_max

    def y(mib):
        return height - bottom - (height - bottom - top) * mib / rss_max

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="18" font-size="14">QEMU resident memory: touch 1 GiB, '
           f'free it (guest of 2 GiB)</text>']
    for tick in range(0, int(rss_max) + 1, 256):
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(tick):.1f}" '
                   f'y2="{y(tick):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 8}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick}</text>')
    for second in range(0, int(t_max) + 1):
        out.append(f'<text x="{x(second):.1f}" y="{height - bottom + 18}" '
                   f'text-anchor="middle">{second}</text>')
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 12}" '
               f'text-anchor="middle">seconds since the scenario started</text>')
    out.append(f'<text x="16" y="{(top + height - bottom) / 2}" transform="rotate(-90 16 '
               f'{(top + height - bottom) / 2})" text-anchor="middle">resident MiB</text>')
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{height - bottom}" stroke="black"/>')
    out.append(f'<line x1="{left}" x2="{width - right}" y1="{height - bottom}" '
               f'y2="{height - bottom}" stroke="black"/>')
    for index, (_, label, colour, run) in enumerate(series):
        points = " ".join(f"{x(t):.1f},{y(rss / MIB):.1f}" for t, rss in run["samples"])
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>')
        for mark, (name, t) in enumerate(run["events"].items()):
            out.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top}" y2="{height - bottom}" '
                       f'stroke="{colour}" stroke-dasharray="4 3"/>')
            out.append(f'<text x="{x(t) + 3:.1f}" y="{top + 12 + 14 * (2 * index + mark)}" '
                       f'fill="{colour}">{name}</text>')
        out.append(f'<text x="{width - right + 10}" y="{top + 20 + 18 * index}" '
                   f'fill="{colour}">{label}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def seconds(value):
    return "never" if value is None else f"{value:.2f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kernel", nargs="?",
                        default=os.path.join(ROOT, "target/x86_64-unknown-none/release/kernel"))
    parser.add_argument("--out", default=".")
    parser.add_argument("--linux", metavar="DIR",
                        help="also measure a Linux guest built by linux_guest.py into DIR")
    args = parser.parse_args()
    if not os.path.exists(args.kernel):
        sys.exit(f"no kernel at {args.kernel}: run `cargo build --release` first")
    runs = [reclaim_run(args.kernel, reporting=True, period=0.02, watch_s=WATCH_S),
            reclaim_run(args.kernel, reporting=False, period=0.02, watch_s=WATCH_S)]
    inflate = inflate_time(args.kernel)
    linux = None
    if args.linux:
        from linux_guest import guest_files
        linux_kernel, words, env = guest_files(args.linux)
        linux = (reclaim_run(linux_kernel, reporting=True, period=0.02, watch_s=WATCH_S,
                             guest=(words, env)),
                 inflate_time(linux_kernel, guest=(words, env)))
    os.makedirs(args.out, exist_ok=True)
    series = [("reporting_on", "reporting on", "#1f77b4", runs[0]),
              ("reporting_off", "reporting off (control)", "#d62728", runs[1])]
    if linux:
        series.append(("linux_reporting_on", "Linux 6.1, reporting on", "#2ca02c", linux[0]))
    write_csv(os.path.join(args.out, "reclaim.csv"), series)
    write_svg(os.path.join(args.out, "reclaim.svg"), series)
    print(f"| mode | touched MiB | returned in {WATCH_S:.0f} s | t50 s | t90 s | t95 s |")
    print("|---|---|---|---|---|---|")
    for run in runs:
        mode = "reporting on" if run["reporting"] else "reporting off"
        print(f"| {mode} | {run['touched_bytes'] / MIB:.0f} | {run['returned_fraction']:.1%} | "
              f"{seconds(run['t50_s'])} | {seconds(run['t90_s'])} | {seconds(run['t95_s'])} |")
    if linux:
        run = linux[0]
        print(f"| Linux 6.1, reporting on | {run['touched_bytes'] / MIB:.0f} | "
              f"{run['returned_fraction']:.1%} | {seconds(run['t50_s'])} | "
              f"{seconds(run['t90_s'])} | {seconds(run['t95_s'])} |")
    print(f"\ninflate 1 GiB (QMP balloon to query-balloon at target): {seconds(inflate)} s")
    if linux:
        print(f"inflate 1 GiB, Linux guest on the same QEMU: {seconds(linux[1])} s")
    print(f"wrote {args.out}/reclaim.csv and {args.out}/reclaim.svg")


if __name__ == "__main__":
    main()
