#!/usr/bin/env python3
"""The footprint benchmark (issue 12): what the host pays over a workload whose needs rise and
fall, against what the guest's tasks hold.

    cargo build --release
    python3 tests/host/footprint_bench.py [KERNEL.elf] [--linux DIR] [--out DIR]
        [--mib 1200] [--unit-ms 1000] [--mem 2G] [--word KEY=VALUE ...]
    python3 tests/host/footprint_bench.py --again DIR/footprint.json --out DIR

Boots `scenario=phased` (kernel/src/footprint.rs: grow, fragmenting shrink, regrow, full shrink,
churn, idle, each marked by an EVENT line, the tasks' resident memory printed as a HELD line
every 200 ms) with free page reporting on, and samples the QEMU process's resident memory
(VmRSS) every 100 ms, its memory by mapping (guest RAM, TCG's translated code, the rest) every
500 ms, and the host memory hidden in split huge pages every 2 s. With --linux DIR (built by `python3 tests/host/linux_guest.py DIR`), a
Debian Linux 6.1 guest runs the same phases (tests/host/phased.c) on the same QEMU line.

Per phase and over phases 1-6: the footprint (integral of RSS, GiB*s), the held integral, their
ratio, the excess (integral of RSS - idle baseline - held), the RSS and held memory at the end of
the phase's hold; the idle baseline is the mean RSS of the idle guest over the last 2 units
before phase 1. Then the three targets: footprint/held over phases 1-6 at most 1.5; the RSS at
the end of the idle phase (after the churn) within 10% of the baseline; the RSS at the end of
the fragmenting shrink's hold within 15% of held + baseline; and the first two again on what
the guest controls (QEMU's own memory held at its level before the grow; the guest RAM's
share). Writes DIR/footprint.json (the raw samples: --again redoes the rest from it),
DIR/footprint.csv and DIR/footprint.svg (RSS solid, held dashed, per guest, time from the grow mark). Figures, not a
test (tests/host/host_checks.py runs a small version and checks the computations).
"""

import argparse
import json
import os
import struct
import sys
import threading
import time

from qemu_host import ROOT, Guest, RssSampler

MIB = 1 << 20
GIB = 1 << 30
PHASES = ["grow", "fragment", "regrow", "shrink", "churn", "idle"]
#: Phases that hold nothing (a task's stack at most): no footprint/held ratio.
NOTHING_HELD = ("shrink", "idle")
#: Units of quiet before `grow` the baseline is averaged over.
BASELINE_UNITS = 2
#: Integration step (s): RSS interpolated linearly between samples, held a step function.
STEP = 0.01


class PhasedGuest(Guest):
    """A Guest that also keeps the HELD lines and every EVENT with the host time it arrived."""

    def __init__(self, *args, **kwargs):
        self.held = []  # (host time, bytes)
        self.guest_figures = []  # (host time, the whole HELD line: free, reported, stranded)
        self.marks = {}  # event name -> host time of its first line
        super().__init__(*args, **kwargs)

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.rstrip("\r\n")
            now = time.monotonic()
            self.lines.append(line)
            if self.echo:
                print(line, flush=True)
            word, _, rest = line.partition(" ")
            if word not in ("EVENT", "HELD"):
                continue
            try:
                payload = json.loads(rest)
            except json.JSONDecodeError:
                continue
            if word == "HELD":
                self.held.append((now, payload["held_kib"] * 1024))
                self.guest_figures.append((now, payload))
                continue
            payload["host_t"] = now
            self.marks.setdefault(payload["name"], now)
            self.events.put(payload)
        self.events.put({"name": "<exit>", "host_t": time.monotonic()})


def qemu_memory(pid):
    """QEMU's resident memory split by mapping, from /proc/PID/smaps (bytes): `ram`, the guest's
    RAM (the largest mapping that is not executable) and `ram_thp`, the part of it the host
    backs with 2 MiB transparent huge pages; `code`, TCG's translation buffer (the largest
    executable anonymous mapping: the guest code QEMU has translated, which only grows); `other`,
    the rest (QEMU's heap, its libraries, device state)."""
    maps = []  # [name, size, rss, anon huge, executable]
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split(None, 5)
            if "-" in first[0] and len(first) > 1 and len(first[1]) == 4:
                path = first[5].strip() if len(first) > 5 else ""
                maps.append([path, 0, 0, 0, "x" in first[1]])
            elif not maps:
                continue
            elif line.startswith("Size:"):
                maps[-1][1] = int(line.split()[1]) * 1024
            elif line.startswith("Rss:"):
                maps[-1][2] = int(line.split()[1]) * 1024
            elif line.startswith("AnonHugePages:"):
                maps[-1][3] = int(line.split()[1]) * 1024
    total = sum(m[2] for m in maps)
    ram = max((m for m in maps if not m[4]), key=lambda m: m[1], default=["", 0, 0, 0, False])
    code = max((m for m in maps if m[4] and not m[0]), key=lambda m: m[1],
               default=["", 0, 0, 0, True])
    return {"ram": ram[2], "ram_thp": ram[3], "code": code[2],
            "other": total - ram[2] - code[2]}


def guest_ram_range(pid):
    """(start, end) of the guest RAM's mapping in QEMU (the largest not executable)."""
    best = (0, 0)
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if "x" not in fields[1] and end - start > best[1] - best[0]:
                best = (start, end)
    return best


def split_huge_pages(pid, span=None):
    """Host memory the RSS does not show (bytes): a discard smaller than 2 MiB inside a
    transparent huge page unmaps those 4 KiB pages (RSS falls) but frees nothing: the huge page
    is split only under memory pressure (Linux's deferred split), and stays allocated whole. For
    each 2 MiB of the guest's RAM partly mapped by a page of a huge page (/proc/PID/pagemap and
    /proc/kpageflags, root only), the pages not mapped are counted. None without root."""
    start, end = span or guest_ram_range(pid)
    start = (start + (2 * MIB - 1)) // (2 * MIB) * (2 * MIB)
    if end <= start:
        return 0
    try:
        with open(f"/proc/{pid}/pagemap", "rb") as pagemap, \
                open("/proc/kpageflags", "rb") as kpageflags:
            pagemap.seek(start // 4096 * 8)
            data = pagemap.read((end - start) // 4096 * 8)
            entries = struct.unpack(f"{len(data) // 8}Q", data)
            hidden = 0
            for first in range(0, len(entries) - 511, 512):
                present = [e for e in entries[first:first + 512] if e >> 63 & 1]
                if not 0 < len(present) < 512:
                    continue
                pfn = present[0] & ((1 << 55) - 1)
                if pfn == 0:
                    return None  # PFNs hidden: not root
                kpageflags.seek(pfn * 8)
                (flags,) = struct.unpack("Q", kpageflags.read(8))
                if flags >> 22 & 1:  # KPF_THP
                    hidden += (512 - len(present)) * 4096
            return hidden
    except (OSError, struct.error):
        return None


class RamSampler(threading.Thread):
    """Reads QEMU's memory by mapping (`qemu_memory`) every `period` s (smaps is slower than
    VmRSS)."""

    def __init__(self, guest, period=0.5):
        super().__init__(daemon=True)
        self.guest, self.period, self.samples = guest, period, []
        self.stopped = threading.Event()
        self.start()

    def run(self):
        count = 0
        while not self.stopped.is_set():
            try:
                parts = qemu_memory(self.guest.pid())
                # The split huge pages every 2 s (reading 4 MiB of page map takes ~0.1 s).
                if count % 4 == 0:
                    parts["split"] = split_huge_pages(self.guest.pid())
                count += 1
                self.samples.append((time.monotonic(), parts))
            except (OSError, TimeoutError, ValueError):
                if self.guest.proc.poll() is not None:
                    return
            self.stopped.wait(self.period)

    def stop(self):
        self.stopped.set()
        self.join(timeout=5)
        return self.samples


def phased_run(kernel, mib, unit_ms, guest=None, mem="2G", period=0.1, echo=False):
    """Boots scenario=phased; returns the samples, the HELD series and the marks (host times,
    seconds from the grow mark), the exit status and the console's lines."""
    words, env = guest or ([], {})
    cmdline = [*words, "scenario=phased", f"scenario.phased_mib={mib}",
               f"scenario.phased_unit_ms={unit_ms}"]
    # Generous: TCG on a busy host touches about 100-300 MiB/s.
    limit = 400 + 0.2 * mib + 0.15 * unit_ms
    env = {"QEMU_TIMEOUT": str(int(2 * limit)), **env, "QEMU_REPORTING": "on", "QEMU_MEM": mem}
    guest = PhasedGuest(kernel, cmdline, env=env, echo=echo)
    sampler = RssSampler(guest, period)
    ram = RamSampler(guest)
    try:
        guest.wait_event("ready", timeout=300)
        for name in [*PHASES, "done"]:
            guest.wait_event(name, timeout=limit)
        status = guest.wait_exit(timeout=120)
    finally:
        samples = sampler.stop()
        ram_samples = ram.stop()
        if guest.proc.poll() is None:
            guest.kill()
    t0 = guest.marks["grow"]
    return {
        "status": status,
        "unit_s": unit_ms / 1000,
        "samples": [(t - t0, rss) for t, rss in samples],
        "held": [(t - t0, held) for t, held in guest.held],
        "ram": [(t - t0, parts["ram"]) for t, parts in ram_samples],
        "qemu_parts": [(t - t0, parts) for t, parts in ram_samples],
        "guest_figures": [(t - t0, figures) for t, figures in guest.guest_figures],
        "marks": {name: t - t0 for name, t in guest.marks.items()},
        "lines": guest.lines,
    }


def rss_at(samples, t):
    """The RSS at `t`, interpolated linearly between samples."""
    if t <= samples[0][0]:
        return samples[0][1]
    for (t1, v1), (t2, v2) in zip(samples, samples[1:]):
        if t1 <= t <= t2:
            return v1 if t2 == t1 else v1 + (v2 - v1) * (t - t1) / (t2 - t1)
    return samples[-1][1]


def held_at(held, t):
    """The last HELD value at or before `t` (0 before the first)."""
    value = 0
    for t1, v1 in held:
        if t1 > t:
            break
        value = v1
    return value


def integrate(values_at, start, end):
    """Integral of values_at(t) dt over [start, end] in byte-seconds (midpoint rule)."""
    total, t = 0.0, start
    while t < end:
        dt = min(STEP, end - t)
        total += values_at(t + dt / 2) * dt
        t += dt
    return total


def analyse(run):
    """Per-phase figures and the targets, from a run's samples, HELD series and marks."""
    samples, held, marks, unit = run["samples"], run["held"], run["marks"], run["unit_s"]
    # Uniform grids make the integrals cheap: resample both series once.
    t_first, t_last = samples[0][0], samples[-1][0]
    grid = [t_first + i * STEP for i in range(int((t_last - t_first) / STEP) + 1)]
    rss_grid, held_grid = [], []
    j = k = 0
    held_value = 0
    for t in grid:
        while j + 1 < len(samples) and samples[j + 1][0] < t:
            j += 1
        t1, v1 = samples[j]
        t2, v2 = samples[min(j + 1, len(samples) - 1)]
        rss_grid.append(v1 if t2 <= t1 or t <= t1 else v1 + (v2 - v1) * min(1, (t - t1) / (t2 - t1)))
        while k < len(held) and held[k][0] <= t:
            held_value = held[k][1]
            k += 1
        held_grid.append(held_value)

    def span(start, end):
        lo = max(0, int((start - t_first) / STEP))
        hi = min(len(grid), int((end - t_first) / STEP))
        return range(lo, hi)

    base_span = span(-BASELINE_UNITS * unit, 0)
    baseline = sum(rss_grid[i] for i in base_span) / max(1, len(base_span))
    # QEMU's own memory (RSS but the guest's RAM: TCG's translated code, its heap), a step
    # function of the smaps samples; its growth over its mean before the grow is QEMU's, not
    # the guest's: `own_growth_grid` is that growth at each grid point (0 without samples).
    parts = run.get("qemu_parts", [])
    own = [(t, p["code"] + p["other"]) for t, p in parts]
    before = [v for t, v in own if -BASELINE_UNITS * unit <= t <= 0]
    own_base = sum(before) / len(before) if before else None
    own_growth_grid = []
    k, value = 0, own_base
    for t in grid:
        while k < len(own) and own[k][0] <= t:
            value = own[k][1]
            k += 1
        own_growth_grid.append(0 if own_base is None or value is None
                               else max(0.0, value - own_base))
    # Host memory in split huge pages that RSS does not show (see `split_huge_pages`).
    split = [(t, p["split"]) for t, p in parts if p.get("split") is not None]
    split_grid = []
    k, value = 0, 0
    for t in grid:
        while k < len(split) and split[k][0] <= t:
            value = split[k][1]
            k += 1
        split_grid.append(value)
    phases = []
    bounds = [marks[name] for name in PHASES] + [marks["done"]]
    for index, name in enumerate(PHASES):
        start, end = bounds[index], bounds[index + 1]
        cells = span(start, end)
        footprint = sum(rss_grid[i] for i in cells) * STEP
        own_growth = sum(own_growth_grid[i] for i in cells) * STEP
        split_integral = sum(split_grid[i] for i in cells) * STEP
        held_int = sum(held_grid[i] for i in cells) * STEP
        excess = sum(rss_grid[i] - baseline - held_grid[i] for i in cells) * STEP
        last = cells[-1] if len(cells) else 0
        # The guest's view at the end of the hold (our kernel's HELD lines carry it): free
        # memory not reported to the host, and stranded in pieces below 2 MiB.
        view = [f for t, f in run.get("guest_figures", []) if t <= end]
        view = view[-1] if view else {}
        unreported = (view["free_kib"] - view["reported_kib"]) * 1024 \
            if "reported_kib" in view else None
        stranded = view["stranded_kib"] * 1024 if "stranded_kib" in view else None
        ram = [v for t, v in run.get("ram", []) if t <= end]
        at_end = [p for t, p in parts if t <= end]
        at_start = [f for t, f in run.get("guest_figures", []) if t <= start]
        mechanisms = None
        if view and at_start and "reports" in view:
            first = at_start[-1]
            mechanisms = {key: view[key] - first.get(key, 0)
                          for key in ("reports", "reported_total_kib", "migrated",
                                      "compact_wakes", "kcompactd_cpu_us")
                          if key in view}
        phases.append({
            "ram_end": ram[-1] if ram else None,
            "code_end": at_end[-1]["code"] if at_end else None,
            "other_end": at_end[-1]["other"] if at_end else None,
            "own_growth": own_growth, "mechanisms": mechanisms,
            "split_integral": split_integral,
            "split_end": split_grid[last] if split and len(cells) else None,
            "unreported_end": unreported, "stranded_end": stranded,
            "phase": name, "seconds": end - start,
            "footprint": footprint, "held": held_int,
            # Phases 4 and 6 hold nothing (a task's stack at most): no ratio.
            "ratio": None if name in NOTHING_HELD or held_int <= 0 else footprint / held_int,
            "excess": excess,
            "rss_end": rss_grid[last], "held_end": held_grid[last],
        })
    total = {
        "phase": "1-6", "seconds": bounds[-1] - bounds[0],
        "unreported_end": phases[-1]["unreported_end"],
        "ram_end": phases[-1]["ram_end"],
        "code_end": phases[-1]["code_end"], "other_end": phases[-1]["other_end"],
        "own_growth": sum(p["own_growth"] for p in phases),
        "split_integral": sum(p["split_integral"] for p in phases),
        "stranded_end": phases[-1]["stranded_end"],
        "footprint": sum(p["footprint"] for p in phases),
        "held": sum(p["held"] for p in phases),
        "excess": sum(p["excess"] for p in phases),
        "rss_end": phases[-1]["rss_end"], "held_end": phases[-1]["held_end"],
    }
    total["ratio"] = total["footprint"] / total["held"] if total["held"] > 0 else None
    # The same with QEMU's own memory held at its level before the grow: what the guest's
    # mechanisms control (QEMU's translated code grows with the guest code it has run).
    total["guest_ratio"] = ((total["footprint"] - total["own_growth"]) / total["held"]
                            if total["held"] > 0 else None)
    by_name = {p["phase"]: p for p in phases}
    fragment = by_name["fragment"]
    targets = {
        "footprint_over_held": total["ratio"],
        "idle_after_churn_over_baseline": by_name["idle"]["rss_end"] / baseline,
        "fragment_end_over_held_plus_baseline":
            fragment["rss_end"] / (fragment["held_end"] + baseline),
    }
    before = [f for t, f in run.get("guest_figures", []) if t <= 0]
    unreported_before = ((before[-1]["free_kib"] - before[-1]["reported_kib"]) * 1024
                         if before and "reported_kib" in before[-1] else None)
    # Samples of the guest RAM's share before the grow; one taken before QEMU had touched any
    # of it (a short run samples the start) says nothing about the baseline.
    ram_before = [v for t, v in run.get("ram", []) if t <= 0 and v > 0]
    parts_before = [p for t, p in parts if t <= 0]
    ram_idle_end = by_name["idle"]["ram_end"]
    if ram_before and ram_idle_end is not None:
        targets["idle_guest_ram_over_baseline"] = ram_idle_end / ram_before[-1]
    targets["guest_footprint_over_held"] = total["guest_ratio"]
    if split and total["held"] > 0:
        # What the host really keeps: RSS plus the split huge pages' unmapped rest.
        targets["footprint_with_split_over_held"] = (
            (total["footprint"] + total["split_integral"]) / total["held"])
    return {"baseline": baseline, "phases": phases, "total": total, "targets": targets,
            "unreported_before": unreported_before,
            "ram_before": ram_before[-1] if ram_before else None,
            "parts_before": parts_before[-1] if parts_before else None}


def table(label, figures):
    before = figures.get("unreported_before")
    out = [f"**{label}**: idle baseline {figures['baseline'] / MIB:.0f} MiB"
           + ("" if before is None else
              f"; free memory not reported before the grow {before / MIB:.0f} MiB "
              "(never touched: it costs the host nothing)")
           + ("" if figures.get("ram_before") is None else
              f"; of the baseline, guest RAM {figures['ram_before'] / MIB:.0f} MiB "
              f"(the rest is QEMU's own)"), "",
           "| phase | s | footprint GiB·s | held GiB·s | footprint/held | excess GiB·s | "
           "RSS at end MiB | of it guest RAM MiB | held at end MiB | "
           "free unreported at end MiB | stranded at end MiB |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    def mib(value):
        return "-" if value is None else f"{value / MIB:.0f}"
    for p in [*figures["phases"], figures["total"]]:
        ratio = "-" if p["ratio"] is None else f"{p['ratio']:.2f}"
        out.append(f"| {p['phase']} | {p['seconds']:.1f} | {p['footprint'] / GIB:.1f} | "
                   f"{p['held'] / GIB:.1f} | {ratio} | {p['excess'] / GIB:.1f} | "
                   f"{p['rss_end'] / MIB:.0f} | {mib(p['ram_end'])} | {p['held_end'] / MIB:.0f} | "
                   f"{mib(p['unreported_end'])} | {mib(p['stranded_end'])} |")
    parts = figures.get("parts_before")
    last = figures["phases"][-1]
    if parts is not None and last["code_end"] is not None:
        out += ["", "QEMU's memory by mapping (smaps), MiB: before the grow / at the end of the "
                f"idle phase: guest RAM {parts['ram'] / MIB:.0f} / {last['ram_end'] / MIB:.0f}, "
                f"TCG's translated code {parts['code'] / MIB:.0f} / {last['code_end'] / MIB:.0f}, "
                f"the rest of QEMU {parts['other'] / MIB:.0f} / {last['other_end'] / MIB:.0f}; "
                f"guest RAM in 2 MiB huge pages on the host before the grow "
                f"{parts['ram_thp'] / MIB:.0f} MiB. QEMU's own memory above its level before "
                f"the grow, integrated over phases 1-6: "
                f"{figures['total']['own_growth'] / GIB:.2f} GiB·s."]
    t = figures["targets"]
    if "footprint_with_split_over_held" in t:
        out += ["", "Host memory in split huge pages, which RSS does not show (MiB at the end of "
                "each phase): " + ", ".join(
                    f"{p['phase']} {p['split_end'] / MIB:.0f}" for p in figures["phases"]
                    if p["split_end"] is not None)
                + f"; integrated over phases 1-6: {figures['total']['split_integral'] / GIB:.2f} "
                f"GiB·s; footprint/held counting it: {t['footprint_with_split_over_held']:.3f}."]
    if all(p["mechanisms"] is not None for p in figures["phases"]):
        out += ["", "| phase | reports | MiB reported | MiB migrated | kcompactd wakes | "
                "kcompactd CPU ms |", "|---|---|---|---|---|---|"]
        for p in figures["phases"]:
            m = p["mechanisms"]
            cpu = m.get("kcompactd_cpu_us")
            out.append(f"| {p['phase']} | {m['reports']} | {m['reported_total_kib'] / 1024:.0f} | "
                       f"{m['migrated'] * 4096 / MIB:.0f} | {m['compact_wakes']} | "
                       f"{'-' if cpu is None else f'{cpu / 1000:.0f}'} |")
    t = figures["targets"]
    def verdict(value, bar):
        return "met" if value is not None and value <= bar else "missed"
    ratio = t["footprint_over_held"]
    out += ["",
            f"- footprint/held over phases 1-6: {ratio:.3f} (target at most 1.5: "
            f"{verdict(ratio, 1.5)})",
            f"- RSS at the end of the idle phase / idle baseline: "
            f"{t['idle_after_churn_over_baseline']:.3f} (target at most 1.10: "
            f"{verdict(t['idle_after_churn_over_baseline'], 1.10)})",
            f"- RSS at the end of the fragmenting shrink / (held + baseline): "
            f"{t['fragment_end_over_held_plus_baseline']:.3f} (target at most 1.15: "
            f"{verdict(t['fragment_end_over_held_plus_baseline'], 1.15)})"]
    if t.get("guest_footprint_over_held") is not None and "idle_guest_ram_over_baseline" in t:
        out += [f"- on what the guest controls (QEMU's own memory held at its level before the "
                f"grow): footprint/held {t['guest_footprint_over_held']:.3f} "
                f"({verdict(t['guest_footprint_over_held'], 1.5)}); guest RAM at the end of the "
                f"idle phase / before the grow {t['idle_guest_ram_over_baseline']:.3f} "
                f"({verdict(t['idle_guest_ram_over_baseline'], 1.10)})"]
    return "\n".join(out)


def write_csv(path, series):
    with open(path, "w") as f:
        f.write("guest,t_s,rss_mib,held_mib,event\n")
        for key, _, _, run in series:
            for name, t in sorted(run["marks"].items(), key=lambda item: item[1]):
                f.write(f"{key},{t:.3f},,,{name}\n")
            for t, rss in run["samples"]:
                f.write(f"{key},{t:.3f},{rss / MIB:.1f},,\n")
            for t, held in run["held"]:
                f.write(f"{key},{t:.3f},,{held / MIB:.1f},\n")


def write_svg(path, series, title):
    width, height, left, bottom, top, right = 900, 460, 70, 50, 40, 230
    runs = [run for _, _, _, run in series]
    t_min = min(run["samples"][0][0] for run in runs)
    t_max = max(run["marks"].get("done", run["samples"][-1][0]) + 1 for run in runs)
    v_max = max(max(rss for _, rss in run["samples"]) for run in runs) / MIB * 1.1

    def x(t):
        return left + (width - left - right) * (t - t_min) / (t_max - t_min)

    def y(mib):
        return height - bottom - (height - bottom - top) * mib / v_max

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="18" font-size="14">{title}</text>']
    tick = 256 if v_max > 1024 else 64
    for mib in range(0, int(v_max) + 1, tick):
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(mib):.1f}" y2="{y(mib):.1f}" '
                   f'stroke="#eee"/>')
        out.append(f'<text x="{left - 8}" y="{y(mib) + 4:.1f}" text-anchor="end">{mib}</text>')
    step = 10 if t_max - t_min > 40 else 2
    for second in range(int(t_min) // step * step, int(t_max) + 1, step):
        if second >= t_min:
            out.append(f'<text x="{x(second):.1f}" y="{height - bottom + 18}" '
                       f'text-anchor="middle">{second}</text>')
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 12}" text-anchor="middle">'
               f'seconds from the grow mark</text>')
    out.append(f'<text x="16" y="{(top + height - bottom) / 2}" transform="rotate(-90 16 '
               f'{(top + height - bottom) / 2})" text-anchor="middle">MiB</text>')
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{height - bottom}" stroke="black"/>')
    out.append(f'<line x1="{left}" x2="{width - right}" y1="{height - bottom}" '
               f'y2="{height - bottom}" stroke="black"/>')
    for index, (_, label, colour, run) in enumerate(series):
        points = " ".join(f"{x(t):.1f},{y(v / MIB):.1f}" for t, v in run["samples"])
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>')
        steps = []
        previous = 0
        for t, v in run["held"]:
            steps.append(f"{x(t):.1f},{y(previous / MIB):.1f}")
            steps.append(f"{x(t):.1f},{y(v / MIB):.1f}")
            previous = v
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
                   f'stroke-dasharray="5 3" points="{" ".join(steps)}"/>')
        for name in PHASES + ["done"]:
            t = run["marks"].get(name)
            if t is None:
                continue
            out.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top}" y2="{height - bottom}" '
                       f'stroke="{colour}" stroke-opacity="0.4" stroke-dasharray="2 4"/>')
            out.append(f'<text x="{x(t) + 2:.1f}" y="{top - 4 + 12 * (index + 1)}" '
                       f'fill="{colour}" font-size="10">{name}</text>')
        ly = top + 30 + 40 * index
        out.append(f'<text x="{width - right + 10}" y="{ly}" fill="{colour}">{label}</text>')
        out.append(f'<line x1="{width - right + 10}" x2="{width - right + 40}" y1="{ly + 10}" '
                   f'y2="{ly + 10}" stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{width - right + 45}" y="{ly + 14}">QEMU RSS</text>')
        out.append(f'<line x1="{width - right + 110}" x2="{width - right + 140}" y1="{ly + 10}" '
                   f'y2="{ly + 10}" stroke="{colour}" stroke-dasharray="5 3"/>')
        out.append(f'<text x="{width - right + 145}" y="{ly + 14}">held</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kernel", nargs="?",
                        default=os.path.join(ROOT, "target/x86_64-unknown-none/release/kernel"))
    parser.add_argument("--out", default=".")
    parser.add_argument("--linux", metavar="DIR",
                        help="also run a Linux guest built by linux_guest.py into DIR")
    parser.add_argument("--mib", type=int, default=1200, help="the grow (scenario.phased_mib)")
    parser.add_argument("--unit-ms", type=int, default=1000,
                        help="the time unit (scenario.phased_unit_ms)")
    parser.add_argument("--mem", default="2G", help="guest memory (QEMU -m)")
    parser.add_argument("--echo", action="store_true", help="show the guests' consoles")
    parser.add_argument("--again", metavar="JSON",
                        help="no run: analyse and plot the runs a previous footprint.json holds")
    parser.add_argument("--word", action="append", default=[],
                        help="an extra kernel command-line word for our guest (repeatable)")
    args = parser.parse_args()
    if args.again:
        with open(args.again) as f:
            series = [tuple(entry) for entry in json.load(f)]
    else:
        if not os.path.exists(args.kernel):
            sys.exit(f"no kernel at {args.kernel}: run `cargo build --release` first")
        series = []
        ours = phased_run(args.kernel, args.mib, args.unit_ms, guest=(args.word, {}),
                          mem=args.mem, echo=args.echo)
        if ours["status"] != 0:
            sys.exit(f"our guest ended with status {ours['status']}")
        series.append(("ours", "this kernel", "#1f77b4", ours))
        if args.linux:
            from linux_guest import guest_files
            kernel, words, env = guest_files(args.linux)
            linux = phased_run(kernel, args.mib, args.unit_ms, guest=(words, env), mem=args.mem,
                               echo=args.echo)
            series.append(("linux", "Linux 6.1", "#2ca02c", linux))
    os.makedirs(args.out, exist_ok=True)
    if not args.again:
        with open(os.path.join(args.out, "footprint.json"), "w") as f:
            json.dump(series, f)
    write_csv(os.path.join(args.out, "footprint.csv"), series)
    write_svg(os.path.join(args.out, "footprint.svg"), series,
              f"QEMU resident memory and held memory: scenario=phased, grow {args.mib} MiB, "
              f"guest of {args.mem}, free page reporting on")
    for _, label, _, run in series:
        print(table(label, analyse(run)))
        print()
    print(f"wrote {args.out}/footprint.json, footprint.csv and footprint.svg")


if __name__ == "__main__":
    main()
