"""A fleet that keeps its size: clusters lost while work is queued are replaced.

`fleet up --clusters N` records the target (count, accelerators, name prefix, infra). Each cycle
the controller asks `replacements` (pure) what to launch: while pending work is waiting and the
budget cap is not reached, every cluster short of the target is launched again, a lost cluster's
accelerator first (its replacement is named `replaces` it, for `status` and `watch`), with a
doubling back-off after a failed launch.

Launching takes minutes on SkyPilot, so `Replenisher` runs each launch on a thread of its own
with its own backend object; the thread never touches the ledger. The next cycle reads the
outcome and records it. The launch is written to the ledger (meta `fleet_launches` and a
`provisioning` cluster row) before the thread starts, so a controller that dies mid-launch is
followed by one that launches the same name again: `Backend.up` re-adopts a cluster that came up
meanwhile instead of launching it twice.
"""
from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from fleet.backends import make_backend
from fleet.backends.base import Backend
from fleet.config import FleetConfig
from fleet.core.budget import budget_reached
from fleet.core.ledger import Ledger
from fleet.core.ledger_rows import ClusterRow
from fleet.types import ClusterInfo, ClusterState, ExperimentState
from fleet.workspace import Workspace

log = logging.getLogger("fleet.core.fleet_size")

TARGET_KEY = "fleet_target"  # meta: the size `fleet up` asked for
LAUNCHES_KEY = "fleet_launches"  # meta: replacement launches under way (name -> plan)
FAILURES_KEY = "fleet_launch_failures"  # meta: failed launches in a row, when to try next, the last error


@dataclass(frozen=True)
class FleetTarget:
    count: int
    accelerators: tuple[str, ...]  # alternated over, as `fleet up --accelerators` does
    backend: str = "sky"
    prefix: str = "gpu"
    infra: str | None = None

    def accelerator_of(self, index: int) -> str:
        return self.accelerators[index % len(self.accelerators)]


@dataclass(frozen=True)
class Launch:
    name: str
    accelerator: str
    replaces: str | None = None


def fleet_target(ledger: Ledger) -> FleetTarget | None:
    raw = ledger.get_meta(TARGET_KEY)
    if not raw:
        return None
    data = json.loads(raw)
    return FleetTarget(data["count"], tuple(data["accelerators"]), data.get("backend", "sky"),
                       data.get("prefix", "gpu"), data.get("infra"))


def record_target(ledger: Ledger, target: FleetTarget | None) -> None:
    ledger.set_meta(TARGET_KEY, "" if target is None else json.dumps(asdict(target)))


def shrink_target(ledger: Ledger, removed: int) -> None:
    """`fleet down` of some clusters: the fleet is meant to be that much smaller now."""
    target = fleet_target(ledger)
    if target is not None:
        count = target.count - removed
        record_target(ledger, None if count <= 0 else FleetTarget(count, target.accelerators, target.backend,
                                                                  target.prefix, target.infra))


def next_names(prefix: str, taken: Sequence[str], count: int) -> list[str]:
    """`prefix-NN` names after the highest number any cluster of the ledger ever had (never reused)."""
    numbers = [int(m.group(1)) for name in taken if (m := re.fullmatch(rf"{re.escape(prefix)}-(\d+)", name))]
    start = max(numbers, default=0) + 1
    return [f"{prefix}-{i:02d}" for i in range(start, start + count)]


def replacements(target: FleetTarget | None, clusters: Sequence[ClusterRow], *, work_waiting: bool,
                 budget_left: bool, now: float, next_try_at: float = 0.0) -> list[Launch]:
    """The clusters to launch so the fleet is back at its target size (pure).

    Nothing while no work waits (a fleet with nothing to do is allowed to shrink: autodown), when
    the budget cap is reached, or before the back-off after a failed launch is over. Clusters that
    are up or being launched count; lost ones do not, and each lost one not yet replaced gives its
    accelerator to a replacement (the most recently lost first). Clusters torn down on purpose
    (`fleet down`) are not replaced: `fleet down` lowers the target.
    """
    if target is None or not work_waiting or not budget_left or now < next_try_at:
        return []
    live = [c for c in clusters if c.state in (ClusterState.UP, ClusterState.PROVISIONING)]
    missing = target.count - len(live)
    if missing <= 0:
        return []
    covered = {c.replaces for c in clusters if c.replaces and c.state != ClusterState.DOWN}
    lost = sorted((c for c in clusters if c.state == ClusterState.LOST and c.name not in covered),
                  key=lambda c: (-c.updated_at, c.name))
    wanted = [target.accelerator_of(i) for i in range(target.count)]
    for c in live:  # what the live clusters already provide
        if c.accelerator in wanted:
            wanted.remove(c.accelerator)
    names = next_names(target.prefix, [c.name for c in clusters], missing)
    out: list[Launch] = []
    for name in names:
        if lost:
            gone = lost.pop(0)
            accelerator = gone.accelerator if gone.accelerator not in ("", "unknown") else target.accelerator_of(0)
            if accelerator in wanted:
                wanted.remove(accelerator)
            out.append(Launch(name, accelerator, gone.name))
        else:
            out.append(Launch(name, wanted.pop(0) if wanted else target.accelerator_of(len(out))))
    return out


def backoff_s(failures: int, base_s: float, max_s: float) -> float:
    return min(max_s, base_s * 2 ** max(0, failures - 1))


BackendFactory = Callable[[FleetTarget], Backend]


def default_launcher(workspace: Workspace, config: FleetConfig) -> BackendFactory:
    """A fresh backend object per launch (its thread shares nothing with the cycle's), on the target's infra."""
    def make(target: FleetTarget) -> Backend:
        backend = make_backend(target.backend, workspace, config)
        if target.infra is not None and hasattr(backend, "infra"):
            backend.infra = target.infra
        return backend
    return make


class Replenisher:
    """Launches replacements off the controller's cycle and records what came of them."""

    def __init__(self, ledger: Ledger, config: FleetConfig, backend_factory: BackendFactory,
                 clock: Callable[[], float]) -> None:
        self.ledger = ledger
        self.config = config
        self.backend_factory = backend_factory
        self.clock = clock
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}
        self._done: dict[str, list[ClusterInfo] | BaseException] = {}  # written by launch threads only

    # --- each cycle ----------------------------------------------------------------------------
    def step(self) -> list[str]:
        """Record finished launches, resume ones a dead controller left, start new ones; returns names started."""
        target = fleet_target(self.ledger)
        self._collect(target)
        if target is None or not self.config.fleet_size.replace_lost:
            return []
        launches = self._launches()
        started = [self._start(target, Launch(**plan)) for name, plan in launches.items() if name not in self._threads]
        clusters = self.ledger.clusters()
        failures = self._failures()
        plans = replacements(target, clusters, work_waiting=self._work_waiting(), budget_left=True, now=self.clock(),
                             next_try_at=failures.get("next_at", 0.0))
        if plans and budget_reached(self.ledger, self.config):  # read only when a launch is wanted
            log.warning("not replacing %d lost clusters: the budget cap (max_gpu_hours) is reached", len(plans))
            plans = []
        for plan in plans:
            self.ledger.upsert_cluster(plan.name, target.backend, plan.accelerator, ClusterState.PROVISIONING,
                                       replaces=plan.replaces)
            launches[plan.name] = asdict(plan)
            self._set_launches(launches)
            started.append(self._start(target, plan))
        return started

    def busy(self) -> bool:
        """Launches under way (the controller keeps running while clusters are coming)."""
        return bool(self._launches())

    def _work_waiting(self) -> bool:
        return bool(self.ledger.select("SELECT 1 FROM experiments WHERE state = ? LIMIT 1",
                                       (ExperimentState.PENDING.value,)))

    # --- launches ------------------------------------------------------------------------------
    def _start(self, target: FleetTarget, plan: Launch) -> str:
        log.warning("launching %s (%s)%s", plan.name, plan.accelerator,
                    f" to replace {plan.replaces}" if plan.replaces else " to bring the fleet back to its size")
        thread = threading.Thread(target=self._launch, args=(target, plan), name=f"fleet-launch-{plan.name}",
                                  daemon=True)
        self._threads[plan.name] = thread
        thread.start()
        return plan.name

    def _launch(self, target: FleetTarget, plan: Launch) -> None:
        try:
            outcome: list[ClusterInfo] | BaseException = self.backend_factory(target).up([plan.name], [plan.accelerator])
        except BaseException as exc:  # noqa: BLE001 - recorded by the next cycle, whatever it was
            outcome = exc
        with self._lock:
            self._done[plan.name] = outcome

    def _collect(self, target: FleetTarget | None) -> None:
        with self._lock:
            done, self._done = self._done, {}
        if not done:
            return
        launches = self._launches()
        failures = self._failures()
        for name, outcome in done.items():
            self._threads.pop(name, None)
            plan = launches.pop(name, None) or {"accelerator": "unknown", "replaces": None}
            info = next((i for i in outcome if i.name == name), None) if isinstance(outcome, list) else None
            if info is not None and info.state == ClusterState.UP:
                if self.ledger.cluster_launched(name, info.accelerator, ClusterState.UP):
                    log.warning("%s is up (%s)%s", name, info.accelerator,
                                f", replacing {plan['replaces']}" if plan["replaces"] else "")
                else:  # torn down (`fleet down`) while it launched: it must not run on unseen
                    log.warning("%s came up after it was torn down; tearing it down", name)
                    self._down_in_background(target, name)
                failures = {}
                continue
            error = str(outcome).splitlines()[0] if isinstance(outcome, BaseException) else "it did not come up"
            count = failures.get("count", 0) + 1
            wait = backoff_s(count, self.config.fleet_size.backoff_s, self.config.fleet_size.max_backoff_s)
            failures = {"count": count, "next_at": self.clock() + wait, "error": f"{name}: {error}"}
            self.ledger.cluster_launched(name, plan["accelerator"], ClusterState.DOWN)
            log.warning("launching %s failed (%s); next try in %.0fs", name, error, wait)
        self._set_launches(launches)
        self.ledger.set_meta(FAILURES_KEY, json.dumps(failures))

    def _down_in_background(self, target: FleetTarget | None, name: str) -> None:
        if target is None:
            target = FleetTarget(1, ("unknown",), backend=self.ledger.get_meta("backend") or "sky")

        def down() -> None:
            try:
                self.backend_factory(target).down([name])
            except Exception as exc:  # noqa: BLE001 - best effort; `fleet down` again finishes it
                log.warning("could not tear %s down: %s", name, exc)

        threading.Thread(target=down, name=f"fleet-down-{name}", daemon=True).start()

    # --- the ledger's record of launches -------------------------------------------------------
    def _launches(self) -> dict[str, dict]:
        return json.loads(self.ledger.get_meta(LAUNCHES_KEY) or "{}")

    def _set_launches(self, launches: dict[str, dict]) -> None:
        self.ledger.set_meta(LAUNCHES_KEY, json.dumps(launches))

    def _failures(self) -> dict:
        return json.loads(self.ledger.get_meta(FAILURES_KEY) or "{}")

    def wait_idle(self, timeout: float | None = None) -> None:
        """Join the launch threads (tests, and a controller that exits)."""
        for thread in list(self._threads.values()):
            thread.join(timeout)


def launch_failures(ledger: Ledger) -> dict:
    """The last failed launches, for `fleet status` (empty when the last launch worked)."""
    return json.loads(ledger.get_meta(FAILURES_KEY) or "{}")


def launches_under_way(ledger: Ledger) -> list[str]:
    return sorted(json.loads(ledger.get_meta(LAUNCHES_KEY) or "{}"))
