"""The host's view of a guest: boot a kernel through run-qemu.sh, follow its serial console
(echoed, with EVENT lines parsed), talk QMP, and read the QEMU process's resident memory.

Used by the host-observed test driver (host_checks.py), the reclaim benchmark
(reclaim_bench.py) and the fragmentation benchmark (fragmentation_bench.py). Python 3 standard library only.
"""

import json
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN_QEMU = os.path.join(ROOT, "run-qemu.sh")
MIB = 1 << 20


class Guest:
    """One boot of `kernel` with `cmdline` words; `env` overrides run-qemu.sh's settings."""

    def __init__(self, kernel, cmdline=(), env=None, echo=True):
        self.dir = tempfile.mkdtemp(prefix="host-check.")
        self.qmp_path = os.path.join(self.dir, "qmp.sock")
        self.pidfile = os.path.join(self.dir, "qemu.pid")
        full_env = dict(os.environ)
        full_env.update({
            "RUN_QEMU_DIRECT": "1",
            "QEMU_QMP": self.qmp_path,
            "QEMU_PIDFILE": self.pidfile,
            "QEMU_TIMEOUT": full_env.get("QEMU_TIMEOUT", "300"),
        })
        full_env.update(env or {})
        self.echo = echo
        self.events = queue.Queue()
        # Every EVENT with the host's time it arrived, in order (wait_event consumes `events`).
        self.event_log = []
        self.lines = []
        self.start = time.monotonic()
        self.proc = subprocess.Popen(
            [RUN_QEMU, kernel, *cmdline],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env,
            text=True, errors="replace", bufsize=1)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.qmp_socket = None
        self.qmp_file = None

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.rstrip("\r\n")
            self.lines.append(line)
            if self.echo:
                print(line, flush=True)
            if line.startswith("EVENT "):
                try:
                    payload = json.loads(line[len("EVENT "):])
                except json.JSONDecodeError:
                    continue
                payload["host_t"] = time.monotonic()
                self.event_log.append(payload)
                self.events.put(payload)
        self.events.put({"name": "<exit>", "host_t": time.monotonic()})

    def wait_event(self, name, timeout=120):
        """The next EVENT named `name` (earlier ones of other names are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no EVENT {name} within {timeout} s")
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if event["name"] == name:
                return event
            if event["name"] == "<exit>":
                raise RuntimeError(f"the guest exited before EVENT {name}")

    def pid(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(self.pidfile) as f:
                    return int(f.read().strip())
            except (OSError, ValueError):
                time.sleep(0.05)
        raise TimeoutError("QEMU wrote no pidfile")

    def rss_bytes(self):
        """The QEMU process's resident memory (VmRSS)."""
        with open(f"/proc/{self.pid()}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def qmp(self, command, **arguments):
        """Runs a QMP command and returns its result (raises on an error reply)."""
        if self.qmp_socket is None:
            deadline = time.monotonic() + 30
            while True:
                try:
                    self.qmp_socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    self.qmp_socket.connect(self.qmp_path)
                    break
                except OSError:
                    self.qmp_socket = None
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            self.qmp_file = self.qmp_socket.makefile("rw")
            json.loads(self.qmp_file.readline())  # the greeting
            self._qmp_send("qmp_capabilities")
        return self._qmp_send(command, **arguments)

    def _qmp_send(self, command, **arguments):
        message = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self.qmp_file.write(json.dumps(message) + "\n")
        self.qmp_file.flush()
        while True:
            reply = json.loads(self.qmp_file.readline())
            if "event" in reply:
                continue
            if "error" in reply:
                raise RuntimeError(f"QMP {command}: {reply['error']}")
            return reply.get("return")

    def wait_exit(self, timeout=300):
        try:
            status = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            status = self.proc.wait()
        self.reader.join(timeout=5)
        if self.qmp_socket is not None:
            self.qmp_socket.close()
        return status

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        return self.wait_exit()


class RssSampler:
    """Samples a guest's QEMU resident memory every `period` seconds in a thread."""

    def __init__(self, guest, period=0.1):
        self.guest = guest
        self.period = period
        self.samples = []  # (host monotonic time, bytes)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopped.is_set():
            try:
                self.samples.append((time.monotonic(), self.guest.rss_bytes()))
            except (OSError, TimeoutError, RuntimeError):
                if self.guest.proc.poll() is not None:
                    return
            self.stopped.wait(self.period)

    def stop(self):
        self.stopped.set()
        self.thread.join(timeout=5)
        return self.samples


def reclaim_run(kernel, reporting, mib=1024, watch_s=5.0, echo=False, period=0.1,
                guest=None):
    """Boots `scenario=reclaim` and measures how much of the freed memory leaves the QEMU process.

    `guest`: (extra command-line words, extra environment) for another kind of guest (the Linux
    guest of linux_guest.py); its `scenario=reclaim` must print the same EVENT lines.

    Returns a dict: touched (bytes the touch added), returned fraction after `watch_s`, the
    seconds to 50% and 90% returned (None if never), and the samples relative to `freed`.
    """
    words, env = guest or ([], {})
    cmdline = [*words, "scenario=reclaim", f"scenario.reclaim_mib={mib}",
               f"scenario.idle_ms={int(watch_s * 1000) + 1500}", f"idle_s={int(watch_s) + 2}"]
    env = {**env, "QEMU_REPORTING": "on" if reporting else "off"}
    guest = Guest(kernel, cmdline, env=env, echo=echo)
    sampler = RssSampler(guest, period)
    try:
        start = guest.wait_event("start", timeout=300)
        rss_start = guest.rss_bytes()
        touched_event = guest.wait_event("touched")
        rss_touched = guest.rss_bytes()
        freed = guest.wait_event("freed")
        t0 = freed["host_t"]
        time.sleep(watch_s)
        guest.wait_event("done", timeout=60)
        status = guest.wait_exit(timeout=60)
    finally:
        samples = sampler.stop()
        if guest.proc.poll() is None:
            guest.kill()
    touched = max(rss_touched - rss_start, 1)
    after = [(t - t0, rss) for (t, rss) in samples if t >= t0 and t - t0 <= watch_s]
    def time_to(fraction):
        for (t, rss) in after:
            if rss_touched - rss >= fraction * touched:
                return t
        return None
    final = after[-1][1] if after else rss_touched
    return {
        "reporting": reporting,
        "status": status,
        "touched_bytes": touched,
        "guest_touched_mib": touched_event.get("mib"),
        "guest_touched_above_4gib_mib": touched_event.get("above_4gib_mib"),
        "rss_start": rss_start,
        "rss_touched": rss_touched,
        "returned_fraction": (rss_touched - final) / touched,
        "t50_s": time_to(0.5),
        "t90_s": time_to(0.9),
        "t95_s": time_to(0.95),
        "samples": [(t - start["host_t"], rss) for (t, rss) in samples
                    if t >= start["host_t"]],
        "lines": guest.lines,
        "events": {"touched": touched_event["host_t"] - start["host_t"],
                   "freed": t0 - start["host_t"]},
    }


def event_lines(lines):
    """Every `EVENT {...}` of a console, parsed, in order."""
    events = []
    for line in lines:
        if line.startswith("EVENT "):
            try:
                events.append(json.loads(line[len("EVENT "):]))
            except json.JSONDecodeError:
                continue
    return events


def fragment_run(kernel, proactiveness=None, mem="512M", mib=None, watch_s=5.0, period=0.05,
                 echo=False, words=()):
    """Boots `scenario=fragment` (reporting on) and measures how much of the memory the tasks
    freed in 4 KiB pieces leaves the QEMU process within `watch_s` of the free.

    `proactiveness`: `compaction.proactiveness` for the guest (None: its default). The
    workload fills most of a `mem` guest unless `mib` says less (`scenario.fragment_mib`);
    `words` go on the command line too.

    Returns a dict: the guest's events by name, the bytes the fill added to the QEMU process,
    the bytes freed (the guest's figure), the fraction of those that left it within `watch_s`
    of the `fragmented` event, the seconds to 50% and 90% (None if never), the samples.
    """
    cmdline = ["scenario=fragment", f"scenario.fragment_idle_ms={int(watch_s * 1000) + 500}"]
    if proactiveness is not None:
        cmdline.append(f"compaction.proactiveness={proactiveness}")
    if mib is not None:
        cmdline.append(f"scenario.fragment_mib={mib}")
    cmdline.extend(words)
    guest = Guest(kernel, cmdline, env={"QEMU_MEM": mem, "QEMU_REPORTING": "on"}, echo=echo)
    sampler = RssSampler(guest, period)
    try:
        start = guest.wait_event("start", timeout=300)
        rss_start = guest.rss_bytes()
        fragmented = guest.wait_event("fragmented", timeout=300)
        t0 = fragmented["host_t"]
        time.sleep(watch_s)
        guest.wait_event("done", timeout=120)
        status = guest.wait_exit(timeout=60)
    finally:
        samples = sampler.stop()
        if guest.proc.poll() is None:
            guest.kill()
    # Resident memory at the free: the last sample before the event (freeing in the guest
    # changes nothing the host sees; compaction starts right after the event).
    before = [rss for (t, rss) in samples if t <= t0]
    rss_freed = before[-1] if before else rss_start
    freed = fragmented["freed_mib"] * MIB
    after = [(t - t0, rss) for (t, rss) in samples if t > t0 and t - t0 <= watch_s]

    def time_to(fraction):
        for (t, rss) in after:
            if rss_freed - rss >= fraction * freed:
                return t
        return None
    final = after[-1][1] if after else rss_freed
    events = {}
    for event in event_lines(guest.lines):
        events.setdefault(event["name"], event)
    return {
        "status": status,
        "events": events,
        "filled_bytes": rss_freed - rss_start,
        "freed_bytes": freed,
        "returned_bytes": rss_freed - final,
        "returned_fraction": (rss_freed - final) / max(freed, 1),
        "t50_s": time_to(0.5),
        "t90_s": time_to(0.9),
        "samples": [(t - start["host_t"], rss) for (t, rss) in samples if t >= start["host_t"]],
        "freed_at_s": t0 - start["host_t"],
        "lines": guest.lines,
    }
