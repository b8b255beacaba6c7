"""Run a scenario: for each scheduler (in turn, in the same invocation, so results
are comparable) and each repetition, build a fresh topology, select the
scheduler, run the traffic processes, apply the timed events, collect both
sides' results and reduce them to one run record. Measurement only; report.py
renders tables and plots from the resulting document (results.json)."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bpfkit import fs
from bpfkit.errors import BpfkitError, KernelUnsupported, UsageError
from bpfkit.lab.metrics import subflow_series
from bpfkit.lab.scenario import Event, Scenario
from bpfkit.lab.topology import SHAPING_NOTES, Topology, detect_shaping

RESULTS_FORMAT = 1
TRAFFIC_PORT = 5201
SAMPLE_INTERVAL_S = 0.1
GUEST_PER_RUN_MARGIN_S = 120  # in a TCG guest: the topology and two Python traffic processes per run
STARTUP_TIMEOUT_S = 180.0  # a bound for failures only; a TCG-emulated guest can take a minute to start Python

ProgressCallback = Callable[[str, float], None]  # (status text, seconds elapsed in this run)
# netns name -> a context manager around the run, yielding a dict it fills on exit (e.g. the
# scheduler's decisions, recorded by `lab run --trace`; the lab itself knows nothing of how)
Observer = Callable[[str], contextlib.AbstractContextManager]


class LabError(BpfkitError):
    """A run could not be carried out (not: a run that measured a failure)."""


@dataclass
class RunRecord:
    """One measurement (one scheduler, one repetition): an entry of results.json's
    `runs`, key for key (docs/results-format.md, "A run record")."""

    scenario: str
    scheduler: str
    repetition: int
    seed: int  # the scenario's seed + repetition: the same for every scheduler (runs are paired)
    kernel: str
    kind: str  # the traffic model's
    ok: bool
    failures: list[str]
    verified: bool
    goodput_bps: float | None
    transfer_time_s: float | None
    completion_times_s: list[float]  # the traffic model's figures()
    bytes_by_path: dict[str, int]
    retrans: dict[str, int | None]
    subflows: dict[str, dict]
    data_sender: str
    mptcp_counters: dict[str, dict]
    sides: dict[str, dict]
    # filled in by run_once from the topology it ran on
    shaping: str | None = None
    qdisc: dict | None = None
    events: list[dict] = field(default_factory=list)
    topology: dict | None = None
    observed: dict | None = None  # only when an observer ran (`lab run --trace`)

    def to_dict(self) -> dict:
        out = asdict(self)
        if self.observed is None:
            del out["observed"]
        return out


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """Make SIGTERM unwind like Ctrl-C so every `with Topology` tears down.
    Only in this process: pyroute2 forks helpers and stops them with SIGTERM, and
    a forked copy must die quietly instead of unwinding our stack (and tearing
    down the topology it inherited)."""
    owner = os.getpid()

    def handler(signum, frame):
        if os.getpid() != owner:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def traffic_job(scenario: Scenario, seed: int) -> dict:
    """What both traffic processes are told (JSON on their command line)."""
    return {
        "traffic": scenario.traffic.to_dict(),
        "seed": seed,
        "timeout": scenario.effective_timeout_s,
        "sample_interval": SAMPLE_INTERVAL_S,
        "expect_subflows": len(scenario.paths),
    }


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    """The child's next stdout line, or '' if it exited or stayed silent."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        return ""
    return proc.stdout.readline().strip()


def _path_resolver(topo: Topology) -> Callable:
    client_addresses = {a.client: name for name, a in topo.addresses.items()}

    def path_of(local, remote) -> str | None:
        # A subflow's path is given by its client-side address, whichever end that is.
        for end in (local, remote):
            if end and end[0] in client_addresses:
                return client_addresses[end[0]]
        return None

    return path_of


class EventPlayer:
    """Applies the scenario's events at their times after the connection started."""

    def __init__(self, topo: Topology, events: tuple[Event, ...], t0: float):
        self.topo = topo
        self.events = events
        self.t0 = t0
        self.applied: list[dict] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lab-events", daemon=True)

    def start(self) -> EventPlayer:
        if self.events:
            self._thread.start()
        return self

    def _run(self) -> None:
        for event in self.events:
            if self._stop.wait(max(0.0, self.t0 + event.at_s - time.monotonic())):
                return
            record = {"at_s": event.at_s, "path": event.path, "action": event.action, "description": event.describe()}
            try:
                note = self.apply(event)
                if note:
                    record["note"] = note
            except Exception as exc:  # a failed event invalidates the run; say why
                self.errors.append(f"event at {event.at_s:g}s ({event.describe()}): {exc}")
            record["applied_s"] = round(time.monotonic() - self.t0, 4)
            self.applied.append(record)

    def apply(self, event: Event) -> str | None:
        if event.action == "down":
            self.topo.path_down(event.path)
        elif event.action == "up":
            self.topo.path_up(event.path)
        else:
            path = self.topo.paths[event.path].with_changes(event.changes)
            self.topo.set_path(event.path, path)
            ignored = [k for k in event.changes if k in ("delay_s", "jitter_s", "loss_pct")]
            if self.topo.shaping == "tbf" and ignored:
                return f"{', '.join(k.split('_')[0] for k in ignored)} not emulated (tbf)"
        return None

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def run_once(
    scenario: Scenario,
    scheduler: str,
    repetition: int,
    *,
    shaping: str = "auto",
    progress: ProgressCallback | None = None,
    observe: Observer | None = None,
) -> dict:
    """One measurement: fresh topology, one scheduler, one connection.

    observe(netns) is entered for the whole run with the network namespace of the
    side that sends the data (whose scheduler decides); what it yields is a dict that
    it fills when it exits, stored as the run's "observed", its "t" (CLOCK_MONOTONIC
    seconds) turned into seconds since the connection started."""
    seed = scenario.seed + repetition
    job = json.dumps(traffic_job(scenario, seed))
    python = sys.executable
    topology = Topology(scenario.paths, server_signal=scenario.server_signal, shaping=shaping,
                        buffers=scenario.buffers)
    with tempfile.TemporaryDirectory(prefix="bpfkit-lab-") as tmp, topology as topo, contextlib.ExitStack() as observing:
        topo.set_scheduler(scheduler)
        sender_ns = topo.server_ns if scenario.traffic.data_sender == "server" else topo.client_ns
        observed = observing.enter_context(observe(sender_ns)) if observe else None
        result_files = {side: Path(tmp) / f"{side}.json" for side in ("client", "server")}
        common = ["-m", "bpfkit.lab.traffic"]
        # Both sides start at once (a Python start-up each, about a second under TCG, now
        # overlapped on the guest's two vCPUs); the client connects when told the server listens.
        server = topo.popen(
            "server",
            [python, *common, "server", "--job", job, "--port", str(TRAFFIC_PORT), "--result", str(result_files["server"])],
            stdout=subprocess.PIPE,
            text=True,
        )
        client = topo.popen(
            "client",
            [python, *common, "client", "--job", job, "--address", topo.server_address, "--port", str(TRAFFIC_PORT),
             "--result", str(result_files["client"]), "--wait-for-go"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if _read_line(server, STARTUP_TIMEOUT_S) != "ready":
            raise LabError("the traffic server did not start", hint=_failure_hint(server))
        try:
            client.stdin.write("go\n")
            client.stdin.close()
        except BrokenPipeError:
            pass  # the client exited already: it did not connect, said below
        line = _read_line(client, STARTUP_TIMEOUT_S)
        connected = line.startswith("connected ")
        t0 = time.monotonic() if not connected else int(line.split()[1]) / 1e9
        events = EventPlayer(topo, scenario.events if connected else (), t0).start()
        timed_out = False
        try:
            deadline = t0 + scenario.effective_timeout_s
            for proc in (client, server):
                while proc.poll() is None and not timed_out:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        timed_out = True
                        break
                    if progress:
                        progress(f"{scheduler} #{repetition + 1}", time.monotonic() - t0)
                    with contextlib.suppress(subprocess.TimeoutExpired):  # returns as soon as it exits
                        proc.wait(timeout=min(0.2, remaining))
        finally:
            events.stop()
        qdisc = topo.qdisc_stats()
        topology_info = {
            "namespaces": topo.namespaces,
            "shaping": topo.shaping,
            "addresses": {name: vars(a) for name, a in topo.addresses.items()},
            "queue_limit_packets": {name: topo.queue_limit_packets(p) for name, p in topo.paths.items()} if topo.shaping == "netem" else None,
            "buffer_sysctls": topo.buffer_sysctls(),
        }
        path_of = _path_resolver(topo)
        sides = {}
        for side, file in result_files.items():
            try:
                sides[side] = json.loads(file.read_text())
            except (OSError, ValueError):
                sides[side] = {"ok": False, "error": "no result (process killed or crashed)"}
        shaping_used = topo.shaping
    run = reduce_run(scenario, scheduler, repetition, seed, sides, path_of, int(t0 * 1e9))
    run.shaping, run.qdisc, run.events, run.topology = shaping_used, qdisc, events.applied, topology_info
    if observed is not None:
        observed["t"] = [round(t - t0, 4) for t in observed.get("t", [])]
        run.observed = observed
    if timed_out:
        run.failures.insert(0, f"timed out after {scenario.effective_timeout_s:g} s")
    run.failures.extend(events.errors)
    if not connected:
        run.failures.insert(0, "the client did not connect")
    run.ok = not run.failures
    return run.to_dict()


def _failure_hint(proc: subprocess.Popen) -> str | None:
    if proc.poll() is None:
        return None
    return f"it exited with status {proc.returncode}"


def reduce_run(scenario: Scenario, scheduler: str, repetition: int, seed: int, sides: dict, path_of: Callable, t0_ns: int) -> RunRecord:
    """Both sides' raw results → one run record (what results.json stores)."""
    traffic = scenario.traffic
    sender_role = traffic.data_sender
    receiver_role = "client" if sender_role == "server" else "server"
    sender, receiver = sides[sender_role], sides[receiver_role]
    failures = [f"{role}: {sides[role]['error']}" for role in ("client", "server") if sides[role].get("error")]
    figures = traffic.figures(sides)
    failures += figures.failures
    kernel = sender.get("kernel") or receiver.get("kernel") or os.uname().release

    samples = sender.get("samples") or []
    subflows = subflow_series(samples, t0_ns, path_of)
    bytes_by_path: dict[str, int] = {}
    retrans_subflows = 0
    for sf in subflows.values():
        acked = [v for v in sf["bytes_acked"] if v is not None]
        retr = [v for v in sf["bytes_retrans"] if v is not None]
        bytes_by_path[sf["path"] or "?"] = bytes_by_path.get(sf["path"] or "?", 0) + (acked[-1] if acked else 0)
        retrans_subflows += retr[-1] if retr else 0
    final = samples[-1]["mptcp"] if samples else {}

    def compact(side: dict) -> dict:
        keep = ("ok", "error", "sent_bytes", "received_bytes", "verified", "first_bad_offset", "fallback", "final_mptcp_info", "sampler_error", "late_requests", "warmup", "requests", "messages", "peer_verdict")
        return {k: side.get(k) for k in keep if k in side}

    return RunRecord(
        scenario=scenario.name,
        scheduler=scheduler,
        repetition=repetition,
        seed=seed,
        kernel=kernel,
        kind=traffic.kind,
        ok=not failures,
        failures=failures,
        verified=bool(receiver.get("verified")) and bool(sender.get("ok")),
        goodput_bps=figures.goodput_bps,
        transfer_time_s=figures.transfer_time_s,
        completion_times_s=figures.completion_times_s,
        bytes_by_path=bytes_by_path,
        retrans={"mptcp_bytes": final.get("bytes_retrans"), "subflow_bytes": retrans_subflows},
        subflows=subflows,
        data_sender=sender_role,
        mptcp_counters={role: sides[role].get("mptcp_counters", {}) for role in ("client", "server")},
        sides={role: compact(sides[role]) for role in ("client", "server")},
    )


MPTCP_SYSCTL_DIR = Path("/proc/sys/net/mptcp")


def check_kernel(schedulers: tuple[str, ...] | list[str]) -> None:
    """Before anything starts: MPTCP is enabled and every scheduler is registered.
    (Registration is global; the per-namespace sysctl only selects.)"""
    if not MPTCP_SYSCTL_DIR.is_dir():
        raise KernelUnsupported("this kernel has no MPTCP (no /proc/sys/net/mptcp)")
    available_file = MPTCP_SYSCTL_DIR / "available_schedulers"
    available = available_file.read_text().split() if available_file.exists() else ["default"]
    unknown = [s for s in schedulers if s not in available]
    if unknown:
        raise UsageError(
            f"MPTCP scheduler{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} not registered in kernel "
            f"{os.uname().release} (available: {' '.join(available)})",
            hint="load the BPF scheduler first (the lab only selects schedulers), or run with --vm",
        )


def run_scenario(
    scenario: Scenario,
    *,
    shaping: str = "auto",
    progress: ProgressCallback | None = None,
    on_run_done: Callable[[dict], None] | None = None,
    observe: Observer | None = None,
) -> dict:
    """Every scheduler × repetition on this kernel; returns the results document."""
    if os.geteuid() != 0:
        raise LabError("running the lab on the host needs root (network namespaces)", hint="run as root, or use --vm")
    check_kernel(scenario.schedulers)
    mode = detect_shaping() if shaping == "auto" else shaping
    if mode == "netem" and detect_shaping() != "netem":
        raise KernelUnsupported(f"kernel {os.uname().release} has no netem qdisc", hint="use --shaping tbf (rate only) or --vm")
    started = time.monotonic()
    doc = {
        "format": RESULTS_FORMAT,
        "scenario": scenario.to_dict(),
        "kernel": os.uname().release,
        "shaping": mode,
        "shaping_note": SHAPING_NOTES[mode],
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "runs": [],
    }
    with terminate_on_sigterm():
        for scheduler in scenario.schedulers:
            for repetition in range(scenario.repetitions):
                run = run_once(scenario, scheduler, repetition, shaping=mode, progress=progress, observe=observe)
                doc["runs"].append(run)
                if on_run_done:
                    on_run_done(run)
    doc["elapsed_s"] = round(time.monotonic() - started, 2)
    return doc


def write_results(doc: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    fs.atomic_write(path, json.dumps(doc, indent=1))
    return path


def load_results(out_dir: Path) -> dict:
    path = out_dir / "results.json"
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise LabError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise LabError(f"{path} is not valid JSON: {exc}") from None
