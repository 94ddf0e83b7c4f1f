"""Ray scheduling of real trials: one placement group per trial, one bundle per node.

A trial of world size N on nodes of G GPUs is gang-scheduled as N/G bundles of {GPU: G} (one bundle
when N <= G), STRICT_SPREAD so each bundle is a different node and a TP group (which the constraints
keep inside a node) never straddles two. Each bundle runs `trial_runner.launch.run_trial` for its
node with torchrun's multi-node rendezvous at node 0's address. The trial runner enforces the time
limit and kills its process tree; Ray's cancel is a backstop for a stuck node task.

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
    """A trial in flight: its placement group and node tasks."""

    number: int
    spec: Any  # TrialSpec
    out_path: Path
    pg: Any
    refs: list
    deadline: float
    started: float = field(default_factory=time.time)


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
        """Reserve the trial's GPUs (blocks until the placement group is ready) and start its node tasks."""
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        ray = self.ray
        world = spec.num_ranks
        per_node = min(world, gpus_per_node)
        nnodes = world // per_node
        strategy = "STRICT_SPREAD" if nnodes > 1 and self.num_nodes() >= nnodes else "PACK"
        if nnodes > 1 and strategy != "STRICT_SPREAD" and self.backend != "cpu":
            raise ConfigError(f"a {world}-GPU trial needs {nnodes} Ray nodes with {per_node} GPUs each, "
                              f"but the Ray cluster has {self.num_nodes()} nodes")
        pg = placement_group([{"GPU": per_node, "CPU": 1} for _ in range(nnodes)], strategy=strategy,
                             name=f"trial-{number}")
        try:
            ray.get(pg.ready(), timeout=_PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            ray.util.remove_placement_group(pg)
            raise ConfigError(f"could not reserve {nnodes} x {per_node} GPUs for trial {number} within "
                              f"{_PLACEMENT_TIMEOUT_S:.0f} s; the Ray cluster is busy or its nodes are smaller") from None

        def on(bundle: int, **options):
            return PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=bundle,
                                                    placement_group_capture_child_tasks=True)

        addr_task = ray.remote(num_cpus=0)(_node_address)
        master_addr, master_port = ray.get(addr_task.options(scheduling_strategy=on(0)).remote())
        node_task = ray.remote(_run_node)
        out_dir.mkdir(parents=True, exist_ok=True)
        refs = []
        spec_json = spec.to_json()
        for r in range(nnodes):
            out = out_dir / ("result.json" if r == 0 else f"node{r}.json")
            refs.append(node_task.options(num_cpus=1, num_gpus=per_node, scheduling_strategy=on(r), max_retries=0,
                                          name=f"trial {number} node {r}: {label}")
                        .remote(spec_json, per_node, nnodes, r, master_addr, master_port, str(out)))
        return RunningTrial(number=number, spec=spec, out_path=out_dir / "result.json", pg=pg, refs=refs,
                            deadline=time.time() + spec.time_limit_s + _BACKSTOP_S)

    def wait_any(self, running: list[RunningTrial], timeout_s: float = 1.0) -> list[tuple[RunningTrial, Any]]:
        """Trials that finished (all node tasks done, or stopped past their backstop), with node 0's TrialResult."""
        done = []
        now = time.time()
        for t in running:
            ready, _ = self.ray.wait(t.refs, num_returns=len(t.refs), timeout=0)
            if len(ready) == len(t.refs):
                done.append((t, self._collect(t, timed_out=False)))
            elif now > t.deadline:
                self.cancel(t)
                done.append((t, self._collect(t, timed_out=True)))
        if not done and running:
            time.sleep(timeout_s)
        return done

    def cancel(self, t: RunningTrial, grace_s: float = 15.0) -> None:
        """Stop a trial's node tasks: first an interrupt, so run_trial's `finally` kills its torchrun tree
        (which lives in its own session and would survive a killed Ray worker), then by force."""
        for ref in t.refs:
            self.ray.cancel(ref, force=False)
        self.ray.wait(t.refs, num_returns=len(t.refs), timeout=grace_s)
        for ref in t.refs:
            self.ray.cancel(ref, force=True)

    def _collect(self, t: RunningTrial, timed_out: bool) -> Any:
        from trial_runner.spec import TrialResult

        try:
            result = TrialResult.from_json(self.ray.get(t.refs[0], timeout=5))
        except Exception as exc:  # the node task died or was cancelled
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            result = TrialResult(status="timeout" if timed_out else "crashed",
                                 config_key=t.spec.job.parallel.canonical_key(), num_ranks=t.spec.num_ranks,
                                 backend=t.spec.backend, error=f"node task failed: {type(exc).__name__}: {first}")
        self.ray.util.remove_placement_group(t.pg)
        return result

    def shutdown(self) -> None:
        if self._owns_ray:
            self.ray.shutdown()
