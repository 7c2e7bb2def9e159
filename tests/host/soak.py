"""The host's half of the soak (`scenario=soak`, see kernel/src/scenarios/soak.rs): while the
guest's ring-3 tasks churn memory, a thread here moves the balloon through QMP at random
(seeded): targets the guest can meet (it must reach each within a time limit), zero, targets
above what it can spare (it must keep its reserve) and bursts of fast changes. When the guest
says `churn_done`, the balloon is emptied and the guest takes its final accounting.

Checked here: the guest reached its accounting within the time limit and it was exact, QEMU
exited with success, `query-balloon`'s `actual` followed every target the guest could meet and
stopped at its reserve for the others, and heartbeats kept coming. Used by host_checks.py.
"""

import random
import threading
import time

from qemu_host import Guest

MIB = 1 << 20
PAGE = 4096
# A target the guest can meet is reached within this many seconds (TCG, shared cores).
REACH_LIMIT_S = 30.0
# Longest allowed silence between two heartbeats (the guest sends one every 250 ms).
HEARTBEAT_GAP_S = 5.0
# The most of its memory a target the guest must meet takes (tasks hold some of the rest).
MEETABLE_FRACTION = 0.4


class BalloonMover(threading.Thread):
    """Moves the balloon at random until stopped; records every move and what went wrong."""

    def __init__(self, guest, ram, reserve_bytes, seed):
        super().__init__(daemon=True)
        self.guest = guest
        self.ram = ram
        self.reserve = reserve_bytes
        self.rng = random.Random(seed)
        # Asked to stop; the moves in progress are cut short only once every kind has been
        # done (`cut`), so that a short soak still tries them all.
        self.stopping = threading.Event()
        self.cut = threading.Event()
        self.kinds = ["meet", "zero", "over", "burst"]
        # Every kind once first (in a seeded order), then at random.
        self.first = self.kinds[:]
        self.rng.shuffle(self.first)
        self.first_left = len(self.first)
        self.moves = []  # dicts: kind, value, reach_s or kept
        self.problems = []
        self.changes = 0

    def set_target(self, value):
        self.guest.qmp("balloon", value=value)
        self.changes += 1

    def actual(self):
        return self.guest.qmp("query-balloon")["actual"]

    def meetable_value(self):
        taken = self.rng.randint(0, int(self.ram * MEETABLE_FRACTION) // MIB) * MIB
        return self.ram - taken

    def over_value(self):
        return self.rng.randint(1, max(2, self.reserve // (2 * MIB))) * MIB

    def wait_reached(self, kind, value):
        asked = time.monotonic()
        while True:
            actual = self.actual()
            if actual == value:
                self.moves.append({"kind": kind, "value": value,
                                   "reach_s": time.monotonic() - asked})
                return
            if self.cut.is_set():
                return
            if time.monotonic() - asked > REACH_LIMIT_S:
                self.problems.append(
                    f"{kind}: target {value / MIB:.0f} MiB not reached within {REACH_LIMIT_S:.0f} s "
                    f"(actual {actual / MIB:.1f} MiB)")
                self.moves.append({"kind": kind, "value": value, "reach_s": None})
                return
            time.sleep(0.05)

    def hold(self, low, high):
        self.cut.wait(self.rng.uniform(low, high))

    def over(self):
        # More than the guest can spare: it stops at its reserve (and says so).
        value = self.over_value()
        self.set_target(value)
        self.hold(1.0, 3.0)
        kept = self.actual()
        self.moves.append({"kind": "over", "value": value, "kept": kept})
        if kept < self.reserve:
            self.problems.append(
                f"over: asked for {value / MIB:.0f} MiB, the guest kept only {kept / MIB:.1f} MiB, "
                f"below its reserve of {self.reserve / MIB:.1f} MiB")

    def burst(self):
        # Fast changes: every kind of target, 0-30 ms apart, then one it can meet.
        for _ in range(self.rng.randint(5, 15)):
            value = self.rng.choice([self.meetable_value(), self.over_value(), self.ram])
            self.set_target(value)
            time.sleep(self.rng.uniform(0, 0.03))
        value = self.meetable_value()
        self.set_target(value)
        self.wait_reached("burst", value)

    def run(self):
        try:
            while self.first or not self.stopping.is_set():
                if self.first:
                    kind = self.first.pop(0)
                else:
                    kind = self.rng.choices(self.kinds, weights=[40, 15, 20, 25])[0]
                if kind == "over":
                    self.over()
                elif kind == "burst":
                    self.burst()
                else:
                    value = self.ram if kind == "zero" else self.meetable_value()
                    self.set_target(value)
                    self.wait_reached(kind, value)
                if self.first_left > 0:
                    self.first_left -= 1
                if kind != "over":
                    self.hold(0.2, 1.5)
        except Exception as error:  # QMP gone: the guest died; the main thread says why
            if not self.cut.is_set():
                self.problems.append(f"balloon mover stopped: {error!r}")

    def stop(self, abort=False):
        self.stopping.set()
        if abort:
            self.cut.set()
        deadline = time.monotonic() + 4 * (REACH_LIMIT_S + 5)
        while self.is_alive() and time.monotonic() < deadline:
            if self.first_left == 0:
                self.cut.set()
            self.join(timeout=0.05)


def failed(guest, message):
    errors = [line for line in guest.lines if "ERROR" in line or "panic" in line]
    tail = "\n".join((errors or guest.lines)[-10:])
    return AssertionError(f"{message}\n{tail}\n(the whole console: {save_console(guest)})")


def soak_run(kernel, seconds, seed, env=None):
    """Boots `scenario=soak` for `seconds` with `seed`, moves the balloon meanwhile, and returns
    the guest's summary, its accounting and the host's figures; raises AssertionError on any
    problem."""
    cmdline = ["scenario=soak", f"soak.seconds={seconds}", f"soak.seed={seed}",
               # An eager reporting worker: it runs all along, not only after big frees.
               "reporting.high_water_mib=4", "reporting.delay_ms=20"]
    # The guest's own limits (a phase 120 s, the final deflation 120 s) come first.
    limit = seconds + 300
    env = {"QEMU_TIMEOUT": str(limit + 120), **(env or {})}
    guest = Guest(kernel, cmdline, env=env, echo=False)
    mover = None
    started = time.monotonic()
    try:
        try:
            begin = guest.wait_event("soak_start", timeout=300)
        except (TimeoutError, RuntimeError) as error:
            raise failed(guest, f"no soak_start: {error}")
        ram = guest.qmp("query-balloon")["actual"]
        reserve = begin["reserve_pages"] * PAGE
        mover = BalloonMover(guest, ram, reserve, seed)
        mover.start()
        try:
            churned = guest.wait_event("churn_done", timeout=limit)
        except (TimeoutError, RuntimeError) as error:
            raise failed(guest, f"no churn_done within {limit} s (hang or crash?): {error}")
        mover.stop()
        guest.qmp("balloon", value=ram)
        try:
            accounting = guest.wait_event("accounting", timeout=240)
            summary = guest.wait_event("soak_summary", timeout=30)
        except (TimeoutError, RuntimeError) as error:
            raise failed(guest, f"no final accounting: {error}")
        done = any(event["name"] == "soak_done" for event in guest.event_log) or \
            _wait_done(guest)
        status = guest.wait_exit(timeout=120)
    finally:
        if mover is not None and mover.is_alive():
            mover.stop(abort=True)
        if guest.proc.poll() is None:
            guest.kill()
    elapsed = time.monotonic() - started
    beats = [event["host_t"] for event in guest.event_log
             if event["name"] == "heartbeat"
             and begin["host_t"] <= event["host_t"] <= churned["host_t"]]
    gaps = [later - earlier for earlier, later in zip(beats, beats[1:])]
    edges = [beats[0] - begin["host_t"], churned["host_t"] - beats[-1]] if beats else []
    result = {
        "status": status,
        "elapsed_s": elapsed,
        "summary": summary,
        "accounting": accounting,
        "heartbeats": len(beats),
        "max_heartbeat_gap_s": max(gaps + edges) if beats else None,
        "moves": mover.moves,
        "target_changes": mover.changes,
        "problems": mover.problems,
        "done": done,
        "lines": guest.lines,
        "console": save_console(guest),
        "phases": [event for event in guest.event_log if event["name"] == "phase"],
    }
    return result


def save_console(guest):
    """Writes the guest's whole console to a file (the check prints its path)."""
    path = f"{guest.dir}/console.log"
    with open(path, "w") as f:
        f.write("\n".join(guest.lines) + "\n")
    return path


def _wait_done(guest):
    try:
        guest.wait_event("soak_done", timeout=30)
        return True
    except (TimeoutError, RuntimeError):
        return False


def describe(run):
    """The summary lines printed by the check."""
    summary, accounting = run["summary"], run["accounting"]
    moves = run["moves"]
    reached = [move["reach_s"] for move in moves if move.get("reach_s") is not None]
    kinds = {}
    for move in moves:
        kinds[move["kind"]] = kinds.get(move["kind"], 0) + 1
    lines = [
        f"seed {summary['seed']}: {summary['churn_ns'] / 1e9:.0f} s of churn, "
        f"{summary['phases']} phases, {summary['tasks']} tasks ({summary['root_tasks']} started "
        f"by the soak, {summary['clones']} clones, {summary['clones_refused']} clones refused, "
        f"{summary['spawns_refused']} starts refused), {summary['pages_churned']} pages churned "
        f"({summary['pages_churned'] * 4 / 1024:.0f} MiB)",
        f"kills: {summary['soak_kills']} by the soak, {summary['oom_kills']} by the OOM killer, "
        f"{summary['killed']} tasks killed in all",
        f"checkers: {summary['checker_runs']} frame-state runs, {summary['rmap_runs']} "
        f"reverse-map runs after phases ({summary['rmap_skipped']} deferred for a teardown); "
        f"{summary['checker_transient']} transient findings (a page in transit inside "
        f"page_alloc::alloc, gone when looked at again)",
        f"balloon: {run['target_changes']} target changes from the host "
        f"({', '.join(f'{n} {kind}' for kind, n in sorted(kinds.items()))}), "
        f"{summary['balloon_target_changes']} seen by the guest, "
        f"{summary['balloon_targets_refused']} refused as beyond its reserve; "
        f"{summary['balloon_inflated_pages'] * 4 // 1024} MiB inflated, "
        f"{summary['balloon_deflated_pages'] * 4 // 1024} MiB deflated, "
        f"{summary['balloon_oom_deflated_pages'] * 4 // 1024} MiB deflated on OOM; targets "
        f"reached in {max(reached) if reached else 0:.2f} s at most",
        f"reporting: {summary['reports']} reports, {summary['pages_reported'] * 4 // 1024} MiB",
        f"heartbeats: {run['heartbeats']}, longest gap {run['max_heartbeat_gap_s'] or 0:.2f} s; "
        f"at most {summary['peak_threads']} kernel threads and "
        f"{summary['peak_heap_grown_bytes'] // 1024} KiB of grown heap at once (sampled)",
        f"accounting: free {accounting['start_free']} -> {accounting['end_free']} pages, "
        f"balloon {accounting['start_balloon']} -> {accounting['end_balloon']}, page tables "
        f"{accounting['start_page_tables']} -> {accounting['end_page_tables']}, heap "
        f"{accounting['start_heap']} -> {accounting['end_heap']}, stacks "
        f"{accounting['start_stacks']} -> {accounting['end_stacks']}, user "
        f"{accounting['end_user']}, heap bytes in use {accounting['start_heap_used_bytes']} -> "
        f"{accounting['end_heap_used_bytes']}, spaces {accounting['live_spaces']}, tasks "
        f"{accounting['live_tasks']}: {'ok' if accounting['ok'] else 'WRONG'}",
        f"{run['elapsed_s']:.0f} s in all; the console is in {run['console']}",
    ]
    grew = []
    for before, after in zip(run["phases"], run["phases"][1:]):
        tables = after.get("page_tables", 0) - before.get("page_tables", 0)
        if tables > 0:
            heap = after.get("heap_pages", 0) - before.get("heap_pages", 0)
            grew.append(f"phase {after['phase']} +{tables} (heap {heap:+} pages, "
                        f"{'a big task, ' if after['big'] else ''}{after['oom_kills']} OOM "
                        f"kills, {after['ms'] / 1000:.1f} s)")
    if grew:
        lines.append("page tables grew in " + "; ".join(grew))
    return lines


def check_soak(run):
    """The soak's assertions (AssertionError with every problem found)."""
    problems = list(run["problems"])
    if run["status"] != 0:
        problems.append(f"guest exit status {run['status']}")
    if not run["accounting"]["ok"]:
        problems.append("the final accounting is wrong (see its ERROR line)")
    if not run["done"]:
        problems.append("no soak_done")
    gap = run["max_heartbeat_gap_s"]
    if gap is None or gap > HEARTBEAT_GAP_S:
        problems.append(f"heartbeats stopped: longest gap {gap} s (limit {HEARTBEAT_GAP_S} s)")
    kinds = {move["kind"] for move in run["moves"]}
    for kind in ("meet", "zero", "over", "burst"):
        if kind not in kinds:
            problems.append(f"no '{kind}' balloon move completed")
    summary = run["summary"]
    if summary["phases"] < 1 or summary["tasks"] == 0:
        problems.append("no phase ran")
    if "over" in kinds and summary["balloon_targets_refused"] == 0:
        problems.append("targets beyond the reserve were never refused by the guest")
    if problems:
        errors = [line for line in run["lines"] if "ERROR" in line or "panic" in line]
        raise AssertionError("; ".join(problems) + ("\n" + "\n".join(errors[-10:])
                                                    if errors else ""))
