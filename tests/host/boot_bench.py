#!/usr/bin/env python3
"""Boot time against memory size: boots the release kernel with `bench=boot` several times per
memory size (the sizes in turn, so that a busy host slows them alike), reads its `BENCH` line
and prints the medians side by side, with the ratio of each size's boot to the smallest's.

    python3 tests/host/boot_bench.py                      # 2G 6G 16G, 5 boots each, deferred init
    python3 tests/host/boot_bench.py --boots 7 --sizes 2G 16G --modes 1 0

`--modes 1 0` also boots with `mm.deferred_init=0` (every frame record written before the main
thread: the old way) for comparison. `--baseline DIR` also boots the release kernel of another
checkout (built there with `cargo build --release`, e.g. from `git archive COMMIT`), which may
predate `bench=boot`: both it and this tree are then booted with an unknown benchmark name and
timed by the log line main prints first ("unknown benchmark", stamped since the PVH entry). Figures are the guest's own (TCG unless QEMU_ACCEL says
otherwise): `main_thread_ms` from the PVH entry to the binary's main function,
`deferred_done_ms` from the PVH entry to the last frame record written by pgdatinit.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys

FIELDS = ["main_thread_ms", "boot_init_ms", "deferred_done_ms", "boot_init_us_per_gib",
          "deferred_us_per_gib", "on_demand_mib"]


def boot(size, mode, cargo_args):
    env = dict(os.environ, QEMU_MEM=size)
    command = ["cargo", "run", "--release", "-q", *cargo_args, "--", "bench=boot", "log=warn",
               f"mm.deferred_init={mode}"]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH "):
            record = json.loads(line[len("BENCH "):])
            if record.get("name") == "boot":
                return record
    sys.stderr.write(out.stdout[-2000:] + out.stderr[-2000:])
    raise SystemExit(f"no BENCH boot line from a {size} boot (exit {out.returncode})")


def first_main_line_ms(tree, size):
    """Boots TREE's release kernel with an unknown benchmark: main's first act is to log that,
    stamped with the seconds since the PVH entry."""
    kernel = os.path.join(tree, "target/x86_64-unknown-none/release/kernel")
    env = dict(os.environ, QEMU_MEM=size)
    out = subprocess.run([os.path.join(tree, "run-qemu.sh"), kernel, "bench=none"], env=env,
                         capture_output=True, text=True, timeout=600)
    for line in out.stdout.splitlines():
        found = re.match(r"\[\s*(\d+\.\d+)\] ERROR .*unknown benchmark", line)
        if found:
            return float(found.group(1)) * 1000
    raise SystemExit(f"no 'unknown benchmark' line from {kernel} with {size}")


def compare(baseline, sizes, boots):
    here = os.getcwd()
    subprocess.run(["cargo", "build", "--release", "-q"], check=True)
    trees = [("baseline " + baseline, baseline), ("this tree", here)]
    runs = {(name, size): [] for name, _ in trees for size in sizes}
    for index in range(boots):
        for name, tree in trees:
            for size in sizes:
                runs[(name, size)].append(first_main_line_ms(tree, size))
                print(f"boot {index + 1}/{boots} {name} {size}: main at "
                      f"{runs[(name, size)][-1]:.1f} ms", file=sys.stderr)
    print(f"Main thread reached (ms after the PVH entry, median of {boots} boots):\n")
    print("| tree | " + " | ".join(sizes) + " | largest vs smallest |")
    print("|---" * (len(sizes) + 2) + "|")
    for name, _ in trees:
        medians = [statistics.median(runs[(name, size)]) for size in sizes]
        print(f"| {name} | " + " | ".join(f"{m:.1f}" for m in medians)
              + f" | {medians[-1] / medians[0]:.2f}x |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--boots", type=int, default=5)
    parser.add_argument("--sizes", nargs="+", default=["2G", "6G", "16G"])
    parser.add_argument("--modes", nargs="+", default=["1"], help="mm.deferred_init values")
    parser.add_argument("--json", help="also write every record here")
    parser.add_argument("--baseline", help="a built checkout to compare with (see above)")
    args = parser.parse_args()
    if args.baseline:
        return compare(args.baseline, args.sizes, args.boots)
    subprocess.run(["cargo", "build", "--release", "-q"], check=True)
    runs = {(size, mode): [] for mode in args.modes for size in args.sizes}
    for index in range(args.boots):
        for mode in args.modes:
            for size in args.sizes:
                record = boot(size, mode, [])
                runs[(size, mode)].append(record)
                print(f"boot {index + 1}/{args.boots} {size} mm.deferred_init={mode}: "
                      f"main thread at {record['main_thread_ms']:.1f} ms, "
                      f"deferred init done at {record['deferred_done_ms']:.1f} ms", file=sys.stderr)
    print(f"Medians of {args.boots} boots (release build, "
          f"QEMU_ACCEL={os.environ.get('QEMU_ACCEL', 'tcg')}):\n")
    print("| memory | mm.deferred_init | managed MiB | " + " | ".join(FIELDS)
          + " | main thread vs smallest |")
    print("|---" * (len(FIELDS) + 4) + "|")
    for mode in args.modes:
        base = None
        for size in args.sizes:
            records = runs[(size, mode)]
            medians = {field: statistics.median(r[field] for r in records) for field in FIELDS}
            base = base or medians["main_thread_ms"]
            cells = [size, mode, f"{records[0]['managed_mib']:.0f}"]
            cells += [f"{medians[field]:.1f}" for field in FIELDS]
            cells.append(f"{medians['main_thread_ms'] / base:.2f}x")
            print("| " + " | ".join(cells) + " |")
        spread = {size: sorted(r["main_thread_ms"] for r in runs[(size, mode)])
                  for size in args.sizes}
        print(f"\nmain_thread_ms of every boot, mm.deferred_init={mode}: "
              + "; ".join(f"{size}: " + ", ".join(f"{v:.1f}" for v in values)
                          for size, values in spread.items()))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({f"{size} {mode}": records for (size, mode), records in runs.items()},
                      out, indent=1)


if __name__ == "__main__":
    main()
