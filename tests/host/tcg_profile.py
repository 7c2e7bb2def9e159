#!/usr/bin/env python3
"""Guest instruction profile under TCG: boots a kernel with the `tcg_profile.c` plugin and sums,
per function of the kernel's symbol table, the guest instructions, memory accesses and
translation blocks it executed, optionally per operation.

    python3 tests/host/tcg_profile.py KERNEL [kernel args...] [--ops N] [--top N]
    python3 tests/host/tcg_profile.py target/x86_64-unknown-none/release/kernel bench=alloc --ops 600000

Under TCG every guest instruction and memory access is emulated, so a guest benchmark's time
follows these counts (`bench=alloc`'s ratios track the instructions its two allocators run);
this is what the allocator's guest figures were worked out with. The plugin is built with the
host's C compiler into a temporary directory; the kernel boots through `run-qemu.sh` (so
`QEMU_MEM` and the rest apply). `--ops N` divides the counts by N (operations the run did).
Counts cover the whole boot: pick a benchmark that runs only what you want to look at.
"""
import argparse
import bisect
import collections
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def symbols(kernel):
    """(address, name) of the kernel's functions, sorted (linker markers left out)."""
    out = subprocess.run(["nm", "-n", "-C", kernel], capture_output=True, text=True, check=True)
    found = []
    for line in out.stdout.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[1] in "tTwW" and not parts[2].startswith("__"):
            found.append((int(parts[0], 16), parts[2]))
    return found


def per_function(kernel, profile):
    syms = symbols(kernel)
    addresses = [address for address, _ in syms]
    totals = collections.defaultdict(lambda: [0, 0, 0])
    with open(profile) as lines:
        for line in lines:
            pc, insns, executions, accesses = line.split(" ", 4)[:4]
            pc, insns, executions = int(pc, 16), int(insns), int(executions)
            at = bisect.bisect_right(addresses, pc) - 1
            name = syms[at][1] if at >= 0 else "?"
            total = totals[name]
            total[0] += insns * executions
            total[1] += int(accesses)
            total[2] += executions
    return totals


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kernel")
    parser.add_argument("args", nargs="*", help="kernel command-line words (bench=alloc ...)")
    parser.add_argument("--ops", type=float, default=1.0, help="divide the counts by this")
    parser.add_argument("--top", type=int, default=25)
    options = parser.parse_args()
    if not os.path.isfile(options.kernel):
        sys.exit(f"no kernel at {options.kernel}: build one (cargo build --release)")
    with tempfile.TemporaryDirectory() as scratch:
        plugin = os.path.join(scratch, "tcg_profile.so")
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", os.path.join(HERE, "tcg_profile.c"),
                        "-o", plugin], check=True)
        profile = os.path.join(scratch, "profile.txt")
        env = dict(os.environ)
        env["QEMU_EXTRA"] = (env.get("QEMU_EXTRA", "") + f" -plugin {plugin},out={profile}").strip()
        run = subprocess.run([os.path.join(ROOT, "run-qemu.sh"), options.kernel, *options.args],
                             env=env, capture_output=True, text=True, cwd=ROOT)
        sys.stdout.write("".join(line + "\n" for line in run.stdout.splitlines()
                                 if line.startswith("BENCH ")))
        if not os.path.exists(profile):
            sys.exit(f"no profile written (run-qemu.sh exited {run.returncode}):\n{run.stderr}")
        totals = per_function(options.kernel, profile)
    per = options.ops
    print(f"{'instructions':>14} {'accesses':>10} {'blocks':>10}  function  (per {per:g})")
    for name, (insns, accesses, blocks) in sorted(totals.items(), key=lambda kv: -kv[1][0])[:options.top]:
        print(f"{insns / per:14.1f} {accesses / per:10.1f} {blocks / per:10.1f}  {name[:100]}")


if __name__ == "__main__":
    main()
