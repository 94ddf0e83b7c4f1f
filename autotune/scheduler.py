"""Ray scheduling of real trials: one placement group per trial, one bundle per node.

A trial of world size N on nodes of G GPUs is gang-scheduled as N/G bundles of {GPU: G} (one bundle
when N <= G), STRICT_SPREAD so each bundle is a different node and a TP group (which the constraints
keep inside a node) never straddles two. Each bundle runs `trial_runner.launch.run_trial` for its
node with torchrun's multi-node rendezvous at node 0's address. The trial runner enforces the time
limit and kills its process tree; Ray's cancel is a backstop for a stuck node task.

A lost node (its raylet dies; Ray raises NodeDiedError for the task that ran there) makes the trial
`node_lost`: the trial's other node tasks are cancelled at once rather than left waiting in
torchrun's rendezvous, its placement group is removed (Ray would reschedule it and hold GPUs), and
the search goes on with the nodes left. Every wait on Ray is bounded.

CPU backend: the local Ray is started with `num_gpus` = ranks, so Ray's GPU resources stand for
ranks and the same placement code runs; simulated nodes share one machine (PACK instead of
STRICT_SPREAD when the Ray cluster has fewer nodes than the trial).

ray is imported lazily, only here.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune.errors import ConfigError

# Slack over the trial's own time limit before Ray cancels a node task (rendezvous, result write).
_BACKSTOP_S = 60.0
# How long a trial may wait for its GPUs before the search gives up (the cluster is busy or too small).
_PLACEMENT_TIMEOUT_S = 600.0
# Bounds on the driver's other waits on Ray, so a lost node can never stall the search.
_ADDRESS_TIMEOUT_S = 120.0  # node 0's address task: a worker process start on a busy node
_RESULT_TIMEOUT_S = 5.0  # a finished node task's return value
_ERROR_CHARS = 600  # of a Ray error's text kept as the trial's evidence


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on an unreachable HOST:PORT: ray.init would retry for minutes before giving up."""
    if address == "auto":
        return  # Ray reads the local cluster's address file and fails at once when there is none
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"--address must be 'auto' or HOST:PORT (e.g. 10.0.0.1:6379), got '{address}'")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach Ray at --address {address} ({exc.strerror or exc}); start it with "
                          f"`ray start --head` there, or omit --address for a local Ray") from None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _node_address() -> tuple[str, int]:
    import ray

    return ray.util.get_node_ip_address(), _free_port()


def _run_node(spec_json: str, nproc: int, nnodes: int, node_rank: int, master_addr: str | None,
              master_port: int | None, out_path: str) -> str:
    """Runs inside a Ray worker on one node: this node's share of the trial."""
    from trial_runner.launch import run_trial
    from trial_runner.spec import TrialSpec

    spec = TrialSpec.from_json(spec_json)
    if nnodes == 1:
        master_addr = master_port = None  # torchrun --standalone
    result = run_trial(spec, nproc, out_path, nnodes=nnodes, node_rank=node_rank, master_addr=master_addr,
                       master_port=master_port)
    return result.to_json()


@dataclass
class RunningTrial:
    """A trial in flight: waiting for its placement group, then running its node tasks."""

    number: int
    spec: Any  # TrialSpec
    label: str
    out_dir: Path
    out_path: Path
    pg: Any
    pg_ready: Any  # ObjectRef, ready once the placement group is reserved
    per_node: int  # ranks per node
    nnodes: int
    placement_deadline: float  # time.time() after which waiting for the GPUs ends the search
    refs: list = field(default_factory=list)  # node tasks, one per bundle; empty until placed
    deadline: float = float("inf")  # time.time() after which the node tasks are cancelled; set when they start
    released: bool = False  # the placement group was removed
    started: float = field(default_factory=time.time)  # when it was submitted


class RayScheduler:
    """Owns the Ray connection for one search."""

    def __init__(self, *, backend: str, address: str | None, num_ranks: int, log_to_driver: bool = False):
        import ray

        self.ray = ray
        self.backend = backend
        self.dashboard_url: str | None = None
        self.token_auth = False
        self._owns_ray = False
        if ray.is_initialized():
            return
        if address:
            check_reachable(address)
        try:
            if address:
                ctx = ray.init(address=address, log_to_driver=log_to_driver, logging_level="ERROR")
            else:
                kwargs: dict[str, Any] = dict(include_dashboard=True, dashboard_host="127.0.0.1",
                                              log_to_driver=log_to_driver, logging_level="ERROR")
                if backend == "cpu":
                    kwargs.update(num_gpus=num_ranks, num_cpus=max(os.cpu_count() or 1, num_ranks))
                ctx = ray.init(**kwargs)
            self._owns_ray = True  # we started or connected this driver, so we end it
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"cannot connect to Ray at --address {address}: {first}; start it with "
                              f"`ray start --head` or omit --address for a local Ray") from None
        url = getattr(ctx, "dashboard_url", None)
        self.dashboard_url = f"http://{url}" if url and not str(url).startswith("http") else url
        # Ray >= 2.5x turns token auth on for a new local cluster; we keep it (never set RAY_AUTH_MODE=disabled).
        self.token_auth = os.environ.get("RAY_AUTH_MODE", "").lower() == "token"

    def total_gpus(self) -> int:
        return int(self.ray.cluster_resources().get("GPU", 0))

    def num_nodes(self) -> int:
        return sum(1 for n in self.ray.nodes() if n.get("Alive"))

    def submit(self, number: int, spec: Any, label: str, gpus_per_node: int, out_dir: Path) -> RunningTrial:
        """Ask for the trial's GPUs and return at once; `wait_any` starts its node tasks once Ray has
        reserved them. Never blocking here keeps the search loop collecting finished trials (and so
        freeing their GPUs) while this one waits, e.g. when a lost node left fewer GPUs than slots."""
        from ray.util.placement_group import placement_group

        world = spec.num_ranks
        per_node = min(world, gpus_per_node)
        nnodes = world // per_node
        strategy = "STRICT_SPREAD" if nnodes > 1 and self.num_nodes() >= nnodes else "PACK"
        if nnodes > 1 and strategy != "STRICT_SPREAD" and self.backend != "cpu":
            raise ConfigError(f"a {world}-GPU trial needs {nnodes} Ray nodes with {per_node} GPUs each, "
                              f"but the Ray cluster has {self.num_nodes()} nodes")
        pg = placement_group([{"GPU": per_node, "CPU": 1} for _ in range(nnodes)], strategy=strategy,
                             name=f"trial-{number}")
        # A queued trial may wait for the one ahead of it to use its whole time limit.
        wait_s = _PLACEMENT_TIMEOUT_S + spec.time_limit_s + _BACKSTOP_S
        return RunningTrial(number=number, spec=spec, label=label, out_dir=out_dir, out_path=out_dir / "result.json",
                            pg=pg, pg_ready=pg.ready(), per_node=per_node, nnodes=nnodes,
                            placement_deadline=time.time() + wait_s)

    def _start(self, t: RunningTrial) -> Any | None:
        """Start the node tasks of a placed trial; a TrialResult when that already failed, else None."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        ray = self.ray

        def on(bundle: int):
            return PlacementGroupSchedulingStrategy(placement_group=t.pg, placement_group_bundle_index=bundle,
                                                    placement_group_capture_child_tasks=True)

        addr_task = ray.remote(num_cpus=0, max_retries=0)(_node_address)
        try:
            # Bounded: the node of bundle 0 may die between the reservation and this task.
            master_addr, master_port = ray.get(addr_task.options(scheduling_strategy=on(0)).remote(),
                                               timeout=_ADDRESS_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - classified below, never swallowed
            return self._failure(t, exc, "finding node 0's address")
        node_task = ray.remote(_run_node)
        t.out_dir.mkdir(parents=True, exist_ok=True)
        spec_json = t.spec.to_json()
        for r in range(t.nnodes):
            out = t.out_dir / ("result.json" if r == 0 else f"node{r}.json")
            t.refs.append(node_task.options(num_cpus=1, num_gpus=t.per_node, scheduling_strategy=on(r),
                                            max_retries=0, name=f"trial {t.number} node {r}: {t.label}")
                          .remote(spec_json, t.per_node, t.nnodes, r, master_addr, master_port, str(out)))
        t.deadline = time.time() + t.spec.time_limit_s + _BACKSTOP_S
        self.on_started(t)
        return None

    def on_started(self, t: RunningTrial) -> None:
        """Hook: the trial's node tasks were just started on its reserved bundles."""

    def wait_any(self, running: list[RunningTrial], timeout_s: float = 1.0) -> list[tuple[RunningTrial, Any]]:
        """Trials that finished (all node tasks done, one of them failed, or stopped past their
        backstop), with node 0's TrialResult or the failure. Starts the node tasks of trials whose
        GPUs were reserved meanwhile. Raises ConfigError when a trial waited past its placement
        deadline: the cluster is too small or busy for it."""
        ray = self.ray
        done = []
        now = time.time()
        for t in running:
            if not t.refs:
                placed, _ = ray.wait([t.pg_ready], timeout=0)
                if placed:
                    failed = self._start(t)
                    if failed is not None:
                        done.append((t, failed))
                elif now > t.placement_deadline:
                    self._release(t)
                    raise ConfigError(f"could not reserve {t.nnodes} x {t.per_node} GPUs for trial {t.number} within "
                                      f"{t.placement_deadline - t.started:.0f} s; the Ray cluster is busy or its "
                                      f"nodes are smaller")
                continue
            ready, _ = ray.wait(t.refs, num_returns=len(t.refs), timeout=0)
            if len(ready) == len(t.refs):
                done.append((t, self._collect(t, timed_out=False)))
            elif any(self._failed(ref) for ref in ready):
                # One node's task died (its node was lost, say): the other nodes' torchruns would wait
                # in rendezvous or collectives until the time limit, so they are stopped now.
                self.cancel(t)
                done.append((t, self._collect(t, timed_out=False)))
            elif now > t.deadline:
                self.cancel(t)
                done.append((t, self._collect(t, timed_out=True)))
        if not done and running:
            time.sleep(timeout_s)
        return done

    def _failed(self, ref: Any) -> bool:
        try:
            self.ray.get(ref, timeout=0)
        except Exception:  # noqa: BLE001 - only asking whether it failed; _collect classifies it
            return True
        return False

    def cancel(self, t: RunningTrial, grace_s: float = 15.0) -> None:
        """Stop a trial's node tasks: first an interrupt, so run_trial's `finally` kills its torchrun tree
        (which lives in its own session and would survive a killed Ray worker), then by force."""
        for ref in t.refs:
            self.ray.cancel(ref, force=False)
        if t.refs:
            self.ray.wait(t.refs, num_returns=len(t.refs), timeout=grace_s)
        for ref in t.refs:
            self.ray.cancel(ref, force=True)
        self._release(t)

    def _release(self, t: RunningTrial) -> None:
        # A placement group whose node died is rescheduled by Ray and would later take GPUs that
        # other trials wait for: it is removed as soon as its trial is over.
        if not t.released:
            t.released = True
            self.ray.util.remove_placement_group(t.pg)

    def _collect(self, t: RunningTrial, timed_out: bool) -> Any:
        """Node 0's TrialResult; a node task's failure wins over it, since node 0's own error is then
        only the fallout (a peer that vanished mid-collective)."""
        from trial_runner.spec import TrialResult

        outcomes: list[Any] = []
        for ref in t.refs:
            try:
                outcomes.append(self.ray.get(ref, timeout=_RESULT_TIMEOUT_S))
            except Exception as exc:  # noqa: BLE001 - the node task died or was cancelled: classified below
                outcomes.append(exc)
        self._release(t)
        failures = [o for o in outcomes if isinstance(o, Exception)]
        lost = [f for f in failures if self._status_of(f) == "node_lost"]
        if not lost and isinstance(outcomes[0], str):
            return TrialResult.from_json(outcomes[0])
        # The root cause first: a lost node, else a failure that is not our own cancel of its peers.
        cause = (lost or [f for f in failures if not isinstance(f, self.ray.exceptions.TaskCancelledError)]
                 or failures)[0]
        return self._failure(t, cause, "running the trial", timed_out=timed_out and not lost)

    def _status_of(self, exc: Exception) -> str:
        """The trial status a Ray-level failure of a node task stands for."""
        ex = self.ray.exceptions
        if isinstance(exc, (ex.NodeDiedError, ex.LocalRayletDiedError)):
            return "node_lost"
        if isinstance(exc, ex.OutOfMemoryError):  # Ray's memory monitor killed the worker
            return "oom"
        if isinstance(exc, (ex.WorkerCrashedError, ex.ObjectLostError)):
            # Ray may report the worker's death before it marks the node dead.
            return "node_lost" if self._dead_nodes(exc) else "crashed"
        return "crashed"

    def _dead_nodes(self, exc: Exception) -> list[str]:
        """Ids of dead nodes named in the error's text (Ray names the node a task ran on)."""
        text = str(exc)
        return [n["NodeID"] for n in self.ray.nodes() if not n.get("Alive") and n["NodeID"] in text]

    def _failure(self, t: RunningTrial, exc: Exception, doing: str, timed_out: bool = False) -> Any:
        from trial_runner.spec import TrialResult

        self._release(t)
        text = " ".join(str(exc).split())[:_ERROR_CHARS]
        status = "timeout" if timed_out else self._status_of(exc)
        if status == "node_lost":
            error = f"a Ray node was lost while {doing}: {type(exc).__name__}: {text}"
        else:
            error = f"node task failed while {doing}: {type(exc).__name__}: {text}"
        return TrialResult(status=status, config_key=t.spec.job.parallel.canonical_key(), num_ranks=t.spec.num_ranks,
                           backend=t.spec.backend, error=error)

    def shutdown(self) -> None:
        if self._owns_ray:
            self.ray.shutdown()
