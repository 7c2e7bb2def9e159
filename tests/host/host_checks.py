#!/usr/bin/env python3
"""Host-observed checks, run by `cargo test` (run-qemu.sh hands the host_checks test kernel to
this driver). Each check boots the kernel with a scenario and asserts on what the host sees:
QEMU's resident memory, QMP's balloon and statistics, the exit status and the console's
messages (the boot-time problem checks boot with a bad machine or command line on purpose).

Prints `test host::NAME ... ok (T ms)` or `FAILED` with the reason, then `N passed, N failed`,
like the in-guest test kernels, and exits non-zero on any failure.

    python3 tests/host/host_checks.py KERNEL.elf [test=TEXT] [--soak-seconds N] [--soak-seed S]

The soak (`test=soak`) churns memory for 45 s with seed 1 unless `--soak-seconds`/`--soak-seed`
(or the environment's SOAK_SECONDS/SOAK_SEED) say otherwise.
"""

import os
import sys
import time
import traceback

import fragmentation_bench
import soak
from qemu_host import Guest, fragment_run, reclaim_run

GIB = 1 << 30
MIB = 1 << 20


def seconds(value):
    return "never" if value is None else f"{value:.2f} s"


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def reclaim_with_reporting_returns_freed_memory(kernel):
    run = reclaim_run(kernel, reporting=True)
    print(f"  reporting on: touched {run['touched_bytes'] / MIB:.0f} MiB, returned "
          f"{run['returned_fraction']:.1%} in 5 s, 50% after {seconds(run['t50_s'])}, "
          f"90% after {seconds(run['t90_s'])}")
    check(run["status"] == 0, f"guest exit status {run['status']}")
    check(run["touched_bytes"] >= 0.9 * GIB, "touching 1 GiB did not grow the QEMU process")
    check(run["t90_s"] is not None and run["t90_s"] <= 5.0,
          f"90% of the freed memory did not leave the QEMU process within 5 s "
          f"(returned {run['returned_fraction']:.1%})")


def reclaim_without_reporting_keeps_memory(kernel):
    # The control: the same workload with free-page-reporting=off returns nothing, so the
    # drop seen with reporting on is the mechanism's doing, not the workload's.
    run = reclaim_run(kernel, reporting=False)
    said(run["lines"], "does not offer free page reporting", "free-page-reporting=off")
    print(f"  reporting off: touched {run['touched_bytes'] / MIB:.0f} MiB, returned "
          f"{run['returned_fraction']:.1%} in 5 s")
    check(run["status"] == 0, f"guest exit status {run['status']}")
    check(run["touched_bytes"] >= 0.9 * GIB, "touching 1 GiB did not grow the QEMU process")
    check(run["returned_fraction"] < 0.2,
          f"{run['returned_fraction']:.1%} returned without reporting")


# A 6 GiB guest: QEMU's q35 puts 4 GiB of it above 4 GiB, the guest's Normal zone, which the
# allocator uses first. Half a GiB keeps the two boots short.
HIGH_MEMORY = {"QEMU_MEM": "6G"}
HIGH_MIB = 512


def high_reclaim_run(kernel, reporting):
    run = reclaim_run(kernel, reporting=reporting, mib=HIGH_MIB, watch_s=3.0,
                      guest=([], HIGH_MEMORY))
    above = run["guest_touched_above_4gib_mib"]
    print(f"  6 GiB guest, reporting {'on' if reporting else 'off'}: touched "
          f"{run['touched_bytes'] / MIB:.0f} MiB ({above} MiB above 4 GiB in the guest), "
          f"returned {run['returned_fraction']:.1%} in 3 s, 90% after {seconds(run['t90_s'])}")
    check(run["status"] == 0, f"guest exit status {run['status']}")
    check(above is not None and above >= 0.95 * HIGH_MIB,
          f"only {above} MiB of the {HIGH_MIB} MiB touched lay above 4 GiB")
    check(run["touched_bytes"] >= 0.9 * HIGH_MIB * MIB,
          f"touching {HIGH_MIB} MiB did not grow the QEMU process")
    return run


def reclaim_above_4gib_returns_freed_memory(kernel):
    run = high_reclaim_run(kernel, reporting=True)
    check(run["t90_s"] is not None and run["t90_s"] <= 3.0,
          f"90% of the memory freed above 4 GiB did not leave the QEMU process within 3 s "
          f"(returned {run['returned_fraction']:.1%})")


def reclaim_above_4gib_without_reporting_keeps_memory(kernel):
    run = high_reclaim_run(kernel, reporting=False)
    check(run["returned_fraction"] < 0.2,
          f"{run['returned_fraction']:.1%} returned without reporting")


# scenario=fragment in a 512 MiB guest: the tasks fill most of it (about 460 MiB), so the
# score passes 90 as at full size, and the two boots take about 10 s each.
FRAGMENT_MEMORY = "512M"


def fragment_figures(run):
    events = run["events"]
    fragmented = events["fragmented"]
    compacted = events.get("compacted")
    reported = events.get("reported")
    print(f"  filled {events['filled']['mib']} MiB (the QEMU process grew "
          f"{run['filled_bytes'] / MIB:.0f} MiB), freed {fragmented['freed_mib']} MiB in 4 KiB "
          f"pieces at score {fragmented['score']}; "
          f"compacted {'after ' + str(compacted['ms']) + ' ms' if compacted else 'never'}, "
          f"reported {'after ' + str(reported['ms']) + ' ms' if reported else 'never'}; "
          f"{run['returned_fraction']:.1%} of the freed memory left the QEMU process within 5 s "
          f"(50% after {seconds(run['t50_s'])}, 90% after {seconds(run['t90_s'])})")
    check(run["status"] == 0, f"guest exit status {run['status']}")
    verified = events.get("verified")
    check(verified is not None and verified["bad"] == 0 and verified["pages"] == verified["kept"],
          f"the tasks' signatures: {verified}")
    check(fragmented["score"] >= 90, f"score {fragmented['score']} after the free, not 90")
    check(run["filled_bytes"] >= 0.8 * events["filled"]["mib"] * MIB,
          "the fill did not grow the QEMU process")


def fragment_with_reporting_returns_freed_memory(kernel):
    # The defaults (proactiveness 50): compaction makes whole 2 MiB blocks of the pieces, the
    # reporting worker gives them to the host. The target is 90% within 5 s; the
    # bound asserted is looser so that a slow, shared machine cannot fail it.
    run = fragment_run(kernel, mem=FRAGMENT_MEMORY)
    fragment_figures(run)
    check("compacted" in run["events"] and "reported" in run["events"],
          "no compacted or reported event")
    check(run["returned_fraction"] >= 0.6,
          f"only {run['returned_fraction']:.1%} of the freed memory left the QEMU process "
          f"within 5 s")


def fragment_without_proactive_compaction_keeps_memory(kernel):
    # The control: the same workload with compaction.proactiveness=0 returns (almost) nothing:
    # the freed pieces are too small for reporting. So the drop above is compaction's doing.
    run = fragment_run(kernel, proactiveness=0, mem=FRAGMENT_MEMORY)
    fragment_figures(run)
    check("compacted" not in run["events"], "compacted with proactiveness 0")
    check(run["returned_fraction"] < 0.2,
          f"{run['returned_fraction']:.1%} returned without proactive compaction")


def fragmentation_bench_runs_small_and_its_lines_parse(kernel):
    # bench=fragmentation in a 256 MiB guest, 0.3 s of score samples per setting: it must run
    # to its end (the tasks' signatures checked after every setting) and print every line the
    # host tool needs, with figures that make sense.
    status, lines = boot_until_exit(
        kernel, ["bench=fragmentation", "bench.fragmentation_watch_ms=300"],
        env={"QEMU_MEM": "256M", "QEMU_BALLOON": "on"}, timeout=240)
    check(status == 0, f"exit status {status}:\n" + "\n".join(lines[-15:]))
    result = fragmentation_bench.parse(lines)
    settings = ["unfragmented", "none", "direct_only", "proactive_20", "proactive_50",
                "proactive_100"]
    check(result["order"] == settings, f"allocation lines for {result['order']}")
    for setting in settings[1:]:
        samples = result["scores"].get(setting, [])
        check(len(samples) == 4 and [t for t, _, _ in samples] == [0, 100, 200, 300],
              f"{setting}: score samples at {[t for t, _, _ in samples]} ms")
    for setting, record in result["allocs"].items():
        latencies = [record[f"{key}_us"] for key, _ in fragmentation_bench.PERCENTILES]
        check(record["blocks"] > 0 and 0 < record["share_of_free_pct"] <= 100.5,
              f"{setting}: {record['blocks']} blocks, {record['share_of_free_pct']}% of free")
        check(latencies == sorted(latencies), f"{setting}: percentiles {latencies}")
    allocs = result["allocs"]
    # Without compaction only the blocks nothing fragmented are left; direct compaction makes
    # the rest.
    check(allocs["none"]["share_of_free_pct"] < 50 < allocs["direct_only"]["share_of_free_pct"],
          f"shares: none {allocs['none']['share_of_free_pct']}%, direct only "
          f"{allocs['direct_only']['share_of_free_pct']}%")
    check(allocs["none"]["pages_migrated"] == 0 and allocs["direct_only"]["compact_stall"] > 0,
          "compaction ran in the none setting, or none in direct_only")
    migration = result["migration"]
    check(migration is not None and migration["pages_timed"] > 0
          and migration["copy_4k_ns"] > 0, f"migration line {migration}")
    table = fragmentation_bench.tables(result)
    for line in table.splitlines()[:8]:
        print(f"  {line}")


def balloon_follows_qmp_and_statistics_match(kernel):
    guest = Guest(kernel, ["scenario=balloon"])
    try:
        ready = guest.wait_event("ready")
        ram = guest.qmp("query-balloon")["actual"]
        check(ram == 2 * GIB, f"query-balloon before: {ram}")
        # 1. Balloon to 1 GiB: query-balloon reaches it, the guest's free memory shrinks as much.
        asked = time.monotonic()
        guest.qmp("balloon", value=1 * GIB)
        while guest.qmp("query-balloon")["actual"] != 1 * GIB:
            check(time.monotonic() - asked < 60, "query-balloon never reached 1 GiB")
            time.sleep(0.05)
        inflate_s = time.monotonic() - asked
        inflated = guest.wait_event("inflated")
        pages = GIB // 4096
        check(inflated["actual_pages"] == pages, f"actual {inflated['actual_pages']} pages")
        shrink = ready["free_pages"] - inflated["free_pages"]
        print(f"  inflate to 1 GiB took {inflate_s:.2f} s; guest free memory shrank by "
              f"{shrink} pages for {pages} ballooned")
        check(abs(shrink - pages) <= 1024, f"free memory shrank by {shrink} pages, not {pages}")
        # Statistics: what QMP reads is what the guest sent.
        sent = guest.wait_event("stats")
        stats = guest.qmp("qom-get", path="/machine/peripheral/balloon0",
                          property="guest-stats")["stats"]
        for name in ("stat-total-memory", "stat-free-memory", "stat-available-memory",
                     "stat-swap-in", "stat-major-faults", "stat-minor-faults"):
            ours = sent[name.replace("-", "_")]
            theirs = stats[name]
            tolerance = 0 if name != "stat-free-memory" and name != "stat-available-memory" \
                else 0.01 * ours
            check(abs(theirs - ours) <= tolerance, f"{name}: QMP {theirs}, guest sent {ours}")
        print(f"  guest-stats: total {stats['stat-total-memory'] / MIB:.0f} MiB, free "
              f"{stats['stat-free-memory'] / MIB:.0f} MiB, as the guest sent")
        # 2. Deflate back: the free memory returns.
        guest.qmp("balloon", value=2 * GIB)
        deflated = guest.wait_event("deflated")
        check(abs(deflated["free_pages"] - ready["free_pages"]) <= 1024,
              f"free pages {deflated['free_pages']} after deflating, {ready['free_pages']} before")
        check(guest.qmp("query-balloon")["actual"] == 2 * GIB, "query-balloon after deflating")
        # 3. More than the guest can give: it keeps its reserve, and deflate-on-OOM still
        # lets it allocate past its free memory.
        guest.qmp("balloon", value=64 * MIB)
        most = guest.wait_event("inflated_max")
        logical = guest.qmp("query-balloon")["actual"]
        print(f"  asked for 64 MiB: the guest kept {logical / MIB:.0f} MiB "
              f"({most['free_pages']} pages free)")
        check(logical > 64 * MIB, "the guest gave away its reserve")
        oom = guest.wait_event("oom")
        print(f"  deflate-on-OOM: {oom['allocated']} of {oom['wanted']} pages allocated with "
              f"{oom['free_before']} free; {oom['oom_deflated_pages']} pages deflated")
        print(f"  heap growth with no page free: grew {bool(oom['heap_grew'])}, "
              f"{oom['heap_deflated_pages']} pages deflated for it")
        check(oom["heap_grew"] == 1 and oom["heap_deflated_pages"] > 0,
              "the heap could not grow through deflate-on-OOM")
        guest.wait_event("done")
        status = guest.wait_exit(timeout=120)
        check(status == 0, f"guest exit status {status}")
    finally:
        if guest.proc.poll() is None:
            guest.kill()


def balloon_target_changes_race_deflate_on_oom(kernel):
    # The guest allocates past its free memory for 5 s (deflate-on-OOM fires) while QMP moves
    # the target every 30 ms, from more than the guest can spare to one page; the balloon's
    # size must always be sane, and in the end meet the last target with its count right.
    guest = Guest(kernel, ["scenario=balloon_race"])
    try:
        guest.wait_event("ready")
        targets = [64 * MIB, 1 * GIB, 2 * GIB - 4096, 256 * MIB, 2 * GIB, 1536 * MIB + 4096]
        start = time.monotonic()
        changes = 0
        while time.monotonic() - start < 3:
            guest.qmp("balloon", value=targets[changes % len(targets)])
            changes += 1
            logical = guest.qmp("query-balloon")["actual"]
            check(0 < logical <= 2 * GIB, f"query-balloon: {logical}")
            time.sleep(0.03)
        stressed = guest.wait_event("stressed", timeout=60)
        guest.qmp("balloon", value=1 * GIB)
        done = guest.wait_event("done", timeout=120)
        status = guest.wait_exit(timeout=60)
        print(f"  {changes} target changes in 3 s; the guest ran {stressed['rounds']} rounds past "
              f"its free memory, {stressed['oom_deflated_pages']} pages deflated on OOM, "
              f"{stressed['inflated_pages']} inflated, {stressed['deflated_pages']} deflated")
        check(status == 0, f"guest exit status {status}")
        check(stressed["oom_deflated_pages"] > 0, "deflate-on-OOM never fired")
        check(done["actual_pages"] == done["target_pages"], f"done: {done}")
    finally:
        if guest.proc.poll() is None:
            guest.kill()


def boot_without_balloon_device_runs(kernel):
    guest = Guest(kernel, ["scenario=no_device"], env={"QEMU_BALLOON": "off"})
    try:
        guest.wait_event("no_device_ok")
        status = guest.wait_exit(timeout=120)
    finally:
        if guest.proc.poll() is None:
            guest.kill()
    check(status == 0, f"guest exit status {status}")
    said = sum("no virtio-balloon device" in line for line in guest.lines)
    check(said == 1, f"the kernel said {said} times that there is no device")


def boot_until_exit(kernel, cmdline=(), env=None, timeout=60):
    """Boots once and waits for the end: (exit status, console and run-qemu.sh lines)."""
    guest = Guest(kernel, cmdline, env={"QEMU_BALLOON": "off", **(env or {})}, echo=False)
    try:
        status = guest.wait_exit(timeout=timeout)
    finally:
        if guest.proc.poll() is None:
            guest.kill()
    return status, guest.lines


def said(lines, *texts):
    """The first line that contains every one of `texts` (printed), or a failed check."""
    for line in lines:
        if all(text in line for text in texts):
            print(f"  {line.strip()[:300]}")
            return line
    raise AssertionError(f"no line says {' ... '.join(texts)!r}; the run printed:\n"
                         + "\n".join(lines[-15:]))


def cpu_without_apic_or_nx_stops_with_a_message(kernel):
    # Without an APIC it used to hang in the timer calibration; without NX (or long mode) it
    # triple-faulted in the 32-bit entry, in silence.
    for cpu, text in [("qemu64,-apic", "no APIC"), ("qemu64,-nx", "no NX"),
                      ("qemu32", "no 64-bit long mode")]:
        status, lines = boot_until_exit(kernel, ["scenario=no_device"],
                                        env={"QEMU_EXTRA": f"-cpu {cpu}"})
        said(lines, "cannot boot", text)
        check(status == 1, f"-cpu {cpu}: exit status {status}, not 1")


def too_small_guest_is_told_how_much_memory_it_needs(kernel):
    # It used to panic about the frame database.
    status, lines = boot_until_exit(kernel, ["scenario=no_device"], env={"QEMU_MEM": "8M"})
    line = said(lines, "guest memory too small", "needs at least")
    check(status == 1, f"exit status {status}, not 1")
    needed = int(line.split("needs at least ")[1].split()[0])
    status, lines = boot_until_exit(kernel, ["scenario=no_device"],
                                    env={"QEMU_MEM": f"{needed}M"})
    check(status == 0, f"a guest of the {needed} MiB it asked for did not run (status {status})")
    print(f"  and with {needed} MiB it runs")


def long_command_line_is_refused_and_a_corrupt_memory_map_named(kernel):
    words = ["scenario=no_device", "x=" + "a" * 5000]
    status, lines = boot_until_exit(kernel, words)
    said(lines, "run-qemu.sh", "the kernel command line is 5021 bytes", "at most 4095")
    check(status == 2, f"run-qemu.sh exit status {status}, not 2")
    # Past run-qemu.sh (QEMU's own -append), QEMU's PVH loader overwrites the start_info.
    status, lines = boot_until_exit(kernel, env={"QEMU_EXTRA": "-append " + "a" * 5000})
    said(lines, "cannot boot", "start_info", "command line longer than 4095 bytes")
    check(status == 1, f"exit status {status}, not 1")


def legacy_only_balloon_is_named_and_the_kernel_runs_on(kernel):
    status, lines = boot_until_exit(
        kernel, ["scenario=no_device"],
        env={"QEMU_EXTRA": "-device virtio-balloon-pci,disable-modern=on"})
    said(lines, "legacy-only", "disable-modern=on", "not support")
    check(status == 0, f"exit status {status}")
    check(not any("no virtio-balloon device" in line for line in lines),
          "a legacy-only device was reported as no device")


def bad_command_line_words_are_reported_and_the_others_kept(kernel):
    # A word that is not UTF-8 used to drop every word after it (here: the scenario).
    words = [b"caf\xff=1", "console=yes", "log=verbose", "scenario=no_device"]
    status, lines = boot_until_exit(kernel, words)
    said(lines, "command line", "caf\\xff=1", "not valid UTF-8")
    said(lines, "console=yes refused", "valid: on")
    said(lines, "log=verbose refused", "valid: off, error, warn, info, debug, trace")
    check(status == 0, f"exit status {status}: the scenario after the bad words did not run")


# ---- KSM (scenario=ksm): the host sees the merged duplicates leave the QEMU process ----------

KSM_MIB = 64


def ksm_run(kernel, run, interleave=0):
    """Boots scenario=ksm (four spaces x KSM_MIB of the same pages) with ksm.run=`run` and
    returns the QEMU process's resident memory at `filled` and its lowest value while the
    guest idles after `reported`, with the events."""
    words = ["scenario=ksm", f"scenario.ksm_mib={KSM_MIB}", f"ksm.run={run}",
             "scenario.idle_ms=3000", f"scenario.ksm_interleave={interleave}"]
    guest = Guest(kernel, words, echo=False)
    try:
        filled = guest.wait_event("filled", timeout=120)
        rss_filled = guest.rss_bytes()
        merged = guest.wait_event("merged", timeout=240)
        reported = guest.wait_event("reported", timeout=60)
        lowest = guest.rss_bytes()
        end = time.monotonic() + 2.5
        while time.monotonic() < end:
            lowest = min(lowest, guest.rss_bytes())
            time.sleep(0.1)
        status = guest.wait_exit(timeout=240)
    finally:
        guest.kill()
    return {"status": status, "rss_filled": rss_filled, "rss_lowest": lowest,
            "filled": filled, "merged": merged, "reported": reported, "lines": guest.lines}


def ksm_merge_gives_the_duplicates_back_to_the_host(kernel):
    run = ksm_run(kernel, 1)
    duplicates = 3 * KSM_MIB * MIB
    dropped = run["rss_filled"] - run["rss_lowest"]
    merged = run["merged"]
    print(f"  ksm.run=1: merged in {merged['ms_since_filled']} ms, {merged['full_scans']} full "
          f"scans, scanner {merged['scanner_cpu_pct']}% CPU; QEMU resident memory fell by "
          f"{dropped / MIB:.0f} MiB of {duplicates / MIB:.0f} MiB duplicated "
          f"({dropped / duplicates:.0%})")
    check(run["status"] == 0, f"guest exit status {run['status']}")
    check(merged["full_scans"] <= 2, f"took {merged['full_scans']} full scans")
    check(dropped >= 0.85 * duplicates,
          f"only {dropped / MIB:.0f} MiB of {duplicates / MIB:.0f} MiB left the QEMU process")


def ksm_interleaved_duplicates_reach_the_host_through_compaction(kernel):
    # The duplicates freed lie between the KSM pages that stay: only compaction moving KSM
    # pages makes whole 2 MiB blocks of them.
    run = ksm_run(kernel, 1, interleave=1)
    duplicates = 3 * KSM_MIB * MIB
    dropped = run["rss_filled"] - run["rss_lowest"]
    since_merged = run["reported"]["ms_since_merged"]
    print(f"  interleaved: QEMU resident memory fell by {dropped / MIB:.0f} MiB of "
          f"{duplicates / MIB:.0f} MiB duplicated ({dropped / duplicates:.0%}) by "
          f"{since_merged / 1000 + 2.5:.1f} s after the merge")
    check(run["status"] == 0, f"guest exit status {run['status']}")
    # The window ends 2.5 s after `reported`: within the target's 5 s of the merge.
    check(since_merged <= 2500, f"compaction and reporting took {since_merged} ms")
    # The target: 90% within 5 s of the merge (this window ends ~3 s after it). Measured 94-96%
    # once KSM asks compaction to consolidate at the end of its pass and kcompactd leaves the
    # frees alone while KSM merges (77% before: it compacted halfway through the merge and
    # then stopped below compaction.stranded_high_mib).
    check(dropped >= 0.9 * duplicates,
          f"only {dropped / MIB:.0f} MiB of {duplicates / MIB:.0f} MiB left the QEMU process")


def ksm_off_keeps_the_duplicates(kernel):
    run = ksm_run(kernel, 0)
    duplicates = 3 * KSM_MIB * MIB
    dropped = run["rss_filled"] - run["rss_lowest"]
    print(f"  ksm.run=0: QEMU resident memory fell by {dropped / MIB:.0f} MiB")
    check(run["status"] == 0, f"guest exit status {run['status']}")
    check(run["merged"]["pages_sharing"] == 0, "pages merged with ksm.run=0")
    check(dropped < 0.2 * duplicates, f"{dropped / MIB:.0f} MiB left without KSM")


SOAK = {"seconds": int(os.environ.get("SOAK_SECONDS", "45")),
        "seed": int(os.environ.get("SOAK_SEED", "1"))}


def soak_keeps_every_page_under_churn_and_a_moving_balloon(kernel):
    # Ring-3 tasks map, touch, clone, unmap and exit (several at once, seeded) while the host
    # moves the balloon at random (targets the guest can meet, zero, beyond its reserve, fast
    # bursts) and free page reporting runs; checkers after every phase; at the end every page
    # is where it was. See tests/host/soak.py and kernel/src/scenarios/soak.rs.
    print(f"  soak: {SOAK['seconds']} s, seed {SOAK['seed']} (--soak-seconds N --soak-seed S)")
    run = soak.soak_run(kernel, SOAK["seconds"], SOAK["seed"])
    for line in soak.describe(run):
        print(f"  {line}")
    soak.check_soak(run)
# ---- The footprint benchmark, small (tests/host/footprint_bench.py; issue 12) ----

PHASED_MIB = 128
PHASED_UNIT_MS = 100


def phased_scenario_runs_and_memory_goes_back(kernel):
    from footprint_bench import PHASES, analyse, phased_run
    run = phased_run(kernel, PHASED_MIB, PHASED_UNIT_MS, mem="512M")
    check(run["status"] == 0, f"guest exit status {run['status']}")
    marks = run["marks"]
    order = [marks.get(name) for name in [*PHASES, "done"]]
    check(None not in order and order == sorted(order), f"phase marks out of order: {marks}")
    figures = analyse(run)
    by_phase = {p["phase"]: p for p in figures["phases"]}
    baseline = figures["baseline"]
    grow = PHASED_MIB * MIB
    print(f"  grow {PHASED_MIB} MiB: baseline {baseline / MIB:.0f} MiB, RSS at the end of "
          + ", ".join(f"{p['phase']} {p['rss_end'] / MIB:.0f}" for p in figures["phases"])
          + f" MiB; footprint/held {figures['total']['ratio']:.2f}")
    # What the task held: all of it, a quarter after the fragmenting shrink, 3/4 after the
    # regrow, nothing after the full shrink (its stack at most).
    for phase, share in (("grow", 1), ("fragment", 0.25), ("regrow", 0.75), ("shrink", 0)):
        held = by_phase[phase]["held_end"]
        check(abs(held - share * grow) <= 0.02 * grow + 64 * 1024,
              f"held at the end of {phase}: {held / MIB:.1f} MiB, expected {share * PHASED_MIB}")
    check(by_phase["grow"]["rss_end"] - baseline >= 0.9 * grow,
          f"the grow did not reach the host: RSS {by_phase['grow']['rss_end'] / MIB:.0f} MiB")
    check(by_phase["shrink"]["rss_end"] - baseline <= 0.25 * grow,
          f"RSS did not fall after the full shrink: {by_phase['shrink']['rss_end'] / MIB:.0f} "
          f"MiB against a baseline of {baseline / MIB:.0f} MiB")


def footprint_bench_computations_are_exact(_kernel):
    # A made-up run whose integrals are known: RSS 100 MiB idle, then baseline + held plus
    # 50 MiB of excess in `fragment` only; held 200 MiB in grow, 40 in fragment, 0 elsewhere.
    from footprint_bench import PHASES, analyse
    marks = {name: 10.0 * index for index, name in enumerate(PHASES)}
    marks["done"] = 10.0 * len(PHASES)
    held_of = {"grow": 200 * MIB, "fragment": 40 * MIB}
    extra_of = {"fragment": 50 * MIB}

    def phase_at(t):
        names = [name for name in PHASES if marks[name] <= t]
        return names[-1] if names else None

    samples, held = [], []
    times = [round(-5 + 0.1 * i, 6) for i in range(int((marks["done"] + 6) * 10))]
    # A step at each mark: the RSS changes within a microsecond of it.
    times = sorted(times + [t - 1e-6 for t in marks.values()])
    for t in times:
        phase = phase_at(t)
        h = held_of.get(phase, 0)
        samples.append((t, 100 * MIB + h + extra_of.get(phase, 0)))
        held.append((t, h))
    # QEMU's memory by mapping every 0.5 s: its own memory (code + other) 40 MiB, 50 MiB from
    # the churn on (10 MiB of growth over 20 s); guest RAM 60 MiB at the start and the end;
    # 30 MiB in split huge pages during the idle phase (10 s).
    parts = []
    for i in range(int((marks["done"] + 6) * 2)):
        t = -5 + 0.5 * i
        own = 50 * MIB if t >= marks["churn"] else 40 * MIB
        parts.append((t, {"ram": 60 * MIB, "ram_thp": 60 * MIB, "code": 10 * MIB,
                          "other": own - 10 * MIB,
                          "split": 30 * MIB if t >= marks["idle"] else 0}))
    figures = analyse({"samples": samples, "held": held, "marks": marks, "unit_s": 1.0,
                       "qemu_parts": parts, "ram": [(t, p["ram"]) for t, p in parts]})
    by_phase = {p["phase"]: p for p in figures["phases"]}
    def near(a, b, what):
        check(abs(a - b) <= 0.02 * abs(b) + 0.5 * MIB, f"{what}: {a / MIB:.1f} MiB, not {b / MIB:.1f}")
    near(figures["baseline"], 100 * MIB, "baseline")
    near(by_phase["grow"]["footprint"], 10 * 300 * MIB, "grow footprint")
    near(by_phase["grow"]["held"], 10 * 200 * MIB, "grow held")
    near(by_phase["grow"]["excess"], 0, "grow excess")
    near(by_phase["fragment"]["excess"], 10 * 50 * MIB, "fragment excess")
    near(by_phase["fragment"]["rss_end"], 190 * MIB, "fragment RSS at the end")
    check(by_phase["shrink"]["ratio"] is None, "a ratio for a phase that holds nothing")
    near(figures["total"]["footprint"], 60 * 100 * MIB + 10 * 200 * MIB + 10 * 90 * MIB,
         "total footprint")
    ratio = figures["total"]["ratio"]
    check(abs(ratio - (6000 + 2000 + 900) / 2400) < 0.02, f"footprint/held {ratio:.3f}")
    targets = figures["targets"]
    check(abs(targets["idle_after_churn_over_baseline"] - 1) < 0.01, f"targets {targets}")
    check(abs(targets["fragment_end_over_held_plus_baseline"] - 190 / 140) < 0.01,
          f"targets {targets}")
    # QEMU's own growth (10 MiB over churn and idle, 20 s) comes off the guest's figure; the
    # split huge pages (30 MiB over the idle phase's 10 s) are added to the host's.
    near(figures["total"]["own_growth"], 20 * 10 * MIB, "QEMU's own growth")
    footprint = 60 * 100 * MIB + 10 * 200 * MIB + 10 * 90 * MIB
    check(abs(targets["guest_footprint_over_held"] - (footprint - 200 * MIB) / (2400 * MIB))
          < 0.02, f"guest footprint/held {targets['guest_footprint_over_held']:.3f}")
    check(abs(targets["footprint_with_split_over_held"] - (footprint + 300 * MIB) / (2400 * MIB))
          < 0.02, f"footprint with split/held {targets['footprint_with_split_over_held']:.3f}")
    check(abs(targets["idle_guest_ram_over_baseline"] - 1) < 0.01, f"targets {targets}")


CHECKS = [
    reclaim_with_reporting_returns_freed_memory,
    reclaim_without_reporting_keeps_memory,
    reclaim_above_4gib_returns_freed_memory,
    reclaim_above_4gib_without_reporting_keeps_memory,
    fragment_with_reporting_returns_freed_memory,
    fragment_without_proactive_compaction_keeps_memory,
    fragmentation_bench_runs_small_and_its_lines_parse,
    balloon_follows_qmp_and_statistics_match,
    balloon_target_changes_race_deflate_on_oom,
    boot_without_balloon_device_runs,
    cpu_without_apic_or_nx_stops_with_a_message,
    too_small_guest_is_told_how_much_memory_it_needs,
    long_command_line_is_refused_and_a_corrupt_memory_map_named,
    legacy_only_balloon_is_named_and_the_kernel_runs_on,
    bad_command_line_words_are_reported_and_the_others_kept,
    ksm_merge_gives_the_duplicates_back_to_the_host,
    ksm_interleaved_duplicates_reach_the_host_through_compaction,
    ksm_off_keeps_the_duplicates,
    soak_keeps_every_page_under_churn_and_a_moving_balloon,
    phased_scenario_runs_and_memory_goes_back,
    footprint_bench_computations_are_exact,
]


def main():
    kernel = sys.argv[1]
    args = sys.argv[2:]
    for flag, key in (("--soak-seconds", "seconds"), ("--soak-seed", "seed")):
        while flag in args:
            at = args.index(flag)
            if at + 1 >= len(args):
                sys.exit(f"{flag} needs a number")
            SOAK[key] = int(args[at + 1])
            del args[at:at + 2]
    wanted = [arg.split("=", 1)[1] for arg in args if arg.startswith("test=")]
    passed = failed = 0
    for check_fn in CHECKS:
        name = check_fn.__name__
        if wanted and not any(text in name for text in wanted):
            continue
        start = time.monotonic()
        try:
            check_fn(kernel)
        except Exception as error:  # a failed check, a timeout, a QMP error
            failed += 1
            print(f"test host::{name} ... FAILED ({(time.monotonic() - start) * 1000:.0f} ms)")
            print(f"    {error}")
            traceback.print_exc(limit=3)
        else:
            passed += 1
            print(f"test host::{name} ... ok ({(time.monotonic() - start) * 1000:.0f} ms)")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
