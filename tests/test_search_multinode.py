"""Multi-node Ray, for real: real Megatron Core over gloo, torchrun rendezvous between the nodes.

All Ray nodes run on this machine (`ray.cluster_utils.Cluster`), each worker node declaring 2 GPUs.
- A 4-rank trial: the search's placement group (one bundle of {GPU: 2} per node, STRICT_SPREAD) must put
  the trial's two halves on two different Ray nodes, and torchrun's multi-node rendezvous (node 0's IP
  as Ray reports it) joins them.
- A node removed while its trial runs: the trial is recorded as node_lost with Ray's evidence, its
  processes end, and the study goes on with the node left.

Each test runs in a fresh pytest process of its own (`in_own_process`): the simulated cluster then lives
and dies with its own Ray driver, and nothing of it is left in the main test session.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from autotune import search as S
from autotune.cluster import ClusterSpec
from autotune.config import Workload
from autotune.model_catalog import get_model
from autotune.scheduler import RayScheduler
from autotune.space_files import default_space
from tests.own_process import IN_CHILD, in_own_process, timeout
from trial_runner import procs


def our_processes(marker: str) -> list[str]:
    """Live processes whose command line mentions `marker` (the study's out dir), as 'pid: cmdline'."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmd and state not in ("Z", "X"):
            found.append(f"{entry.name}: {cmd[:200]}")
    return found


class PlacementRecordingScheduler(RayScheduler):
    """The real scheduler, also noting where each trial's placement group put its bundles."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.placements: dict[int, dict] = {}

    def on_started(self, t):
        table = self.ray.util.placement_group_table(t.pg)
        self.placements[t.number] = {"strategy": table["strategy"], "bundles": table["bundles"],
                                     "nodes": table["bundles_to_node_id"], "pg": t.pg}


def _ray_cluster(head: dict, num_workers: int):
    """A simulated multi-node Ray cluster (ray.cluster_utils) with 2-CPU, 2-GPU worker nodes, connected."""
    if not os.environ.get(IN_CHILD):
        yield None  # in_own_process: the test's child process builds the cluster
        return
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args=head)
    for _ in range(num_workers):
        cluster.add_node(num_cpus=2, num_gpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture
def two_node_cluster():
    yield from _ray_cluster(dict(num_cpus=2, num_gpus=2), num_workers=1)


@pytest.mark.slow
@timeout(300)
@in_own_process
def test_four_rank_trial_spans_two_ray_nodes(two_node_cluster, tmp_path):
    model = get_model("tiny-moe")
    req = S.SearchRequest(model=model, cluster=ClusterSpec.build(4, gpus_per_node=2),
                          workload=Workload(seq_length=64, global_batch_size=8), space=default_space(model),
                          backend="cpu", num_trials=1, trial_time_limit_s=180, out_root=tmp_path)
    phase = S.analytic_phase(req)
    phase.backend = "cpu"
    sched = PlacementRecordingScheduler(backend="cpu", address=None, num_ranks=4)
    assert sched.num_nodes() == 2 and sched.total_gpus() == 4

    recs = S.run_trials(phase, scheduler=sched)

    (rec,) = recs
    assert rec.status == "completed" and rec.measured["tokens_per_s_per_gpu"] > 0, rec
    placed = sched.placements[rec.number]
    assert placed["strategy"] == "STRICT_SPREAD"
    assert len(placed["bundles"]) == 2 and all(b.get("GPU") == 2 for b in placed["bundles"].values())
    node_ids = set(placed["nodes"].values())
    alive = {n["NodeID"] for n in sched.ray.nodes() if n["Alive"]}
    assert len(node_ids) == 2 and node_ids <= alive, placed
    # Each node ran its own torchrun (node 1 wrote its own result file) and they met in one rendezvous.
    trial_dir = phase.folder / "trials" / f"{rec.number:04d}"
    assert (trial_dir / "result.json").is_file() and (trial_dir / "node1.json").is_file()
    from trial_runner.spec import read_result

    node1 = read_result(trial_dir / "node1.json")
    assert node1 is not None and node1.num_ranks == 4, node1
    assert our_processes(str(tmp_path)) == []  # no torchrun or worker of this trial survives



@pytest.fixture
def head_and_two_gpu_nodes():
    """A head without GPUs (the driver's node, which cluster_utils cannot remove) and two 2-GPU worker nodes."""
    yield from _ray_cluster(dict(num_cpus=1, num_gpus=0), num_workers=2)


def _ranks_started(trial_dir: Path, num_ranks: int) -> bool:
    log = trial_dir / "result.json.logs" / "torchrun.log"
    return log.exists() and log.read_text(errors="replace").count("trial_runner.worker started") == num_ranks


def _tiny_cpu_phase(tmp_path, *, num_gpus: int, num_trials: int, trial_time_limit_s: float) -> S.AnalyticPhase:
    """A CPU search of tiny-moe on 2-GPU nodes, one warm-up and one measured step per trial."""
    model = get_model("tiny-moe")
    req = S.SearchRequest(model=model, cluster=ClusterSpec.build(num_gpus, gpus_per_node=2),
                          workload=Workload(seq_length=64, global_batch_size=8), space=default_space(model),
                          backend="cpu", num_trials=num_trials, trial_time_limit_s=trial_time_limit_s,
                          out_root=tmp_path, warmup_iters=1, measured_iters=1)
    phase = S.analytic_phase(req)
    phase.backend = "cpu"
    return phase


@pytest.mark.slow
@timeout(300)
@in_own_process
def test_a_node_lost_mid_trial_fails_that_trial_and_the_study_goes_on(head_and_two_gpu_nodes, tmp_path):
    cluster = head_and_two_gpu_nodes
    phase = _tiny_cpu_phase(tmp_path, num_gpus=2, num_trials=3, trial_time_limit_s=180)
    sched = PlacementRecordingScheduler(backend="cpu", address=None, num_ranks=2)
    assert sched.num_nodes() == 3 and sched.total_gpus() == 4  # two trials run at once, one per GPU node

    def hang_trial_0(number, spec):
        # Trial 0 hangs (test-only fault), so it is surely still running when its node goes; were the loss
        # missed, it would end as a timeout, not node_lost.
        return spec.model_copy(update=dict(fault="hang", fault_rank=0)) if number == 0 else spec

    removed: dict = {}

    def remove_trial_0s_node() -> None:
        deadline = time.time() + 150
        trial_dir = phase.folder / "trials" / "0000"
        while time.time() < deadline and not (0 in sched.placements and _ranks_started(trial_dir, 2)):
            time.sleep(0.2)
        if 0 not in sched.placements:
            return  # the assertions below report it
        node_id = sched.placements[0]["nodes"][0]
        node = next(n for n in cluster.worker_nodes if n.node_id == node_id)
        removed["pids"] = our_processes(str(trial_dir))  # the trial's torchrun and ranks
        cluster.remove_node(node, allow_graceful=False)  # raylet and all: as a crashed machine
        removed["node_id"] = node_id

    killer = threading.Thread(target=remove_trial_0s_node, daemon=True)
    killer.start()
    recs = S.run_trials(phase, scheduler=sched, adjust_spec=hang_trial_0)
    killer.join(timeout=10)

    assert "node_id" in removed, f"trial 0 never got its ranks running: {sched.placements}"
    by_number = {r.number: r for r in recs}
    assert sorted(by_number) == [0, 1, 2], [(r.number, r.status, r.reason) for r in recs]
    lost = by_number[0]
    assert lost.status == "node_lost", (lost.status, lost.reason)
    assert "NodeDiedError" in lost.reason and removed["node_id"] in lost.reason, lost.reason
    # The study went on: trial 1 (already running on the other node) and trial 2 (placed after the loss,
    # necessarily on the node left) both completed.
    for n in (1, 2):
        assert by_number[n].status == "completed" and by_number[n].measured["tokens_per_s_per_gpu"] > 0, by_number[n]
    assert removed["node_id"] not in sched.placements[2]["nodes"].values()
    assert [t.state.name for t in phase.study.get_trials()] == ["FAIL", "COMPLETE", "COMPLETE"]
    lines = {line["number"]: line for line in map(json.loads, (phase.folder / "trials.jsonl").read_text().splitlines())}
    assert lines[0]["status"] == "node_lost" and "NodeDiedError" in lines[0]["reason"]
    # The lost trial's torchrun and ranks ended with their node's Ray worker, and nothing else survives.
    assert len(removed["pids"]) >= 3 and not [p for p in removed["pids"] if procs.is_alive(int(p.split(":")[0]))]
    assert our_processes(str(tmp_path)) == []
    # Its placement group is gone, not rescheduled onto the node left to hold GPUs there.
    assert sched.ray.util.placement_group_table(sched.placements[0]["pg"])["state"] == "REMOVED"


@pytest.mark.slow
@timeout(240)  # far below the trial's own limit: only the scheduler's cancel can end it in time
@in_own_process
def test_losing_one_node_of_a_two_node_trial_stops_the_other_node_at_once(head_and_two_gpu_nodes, tmp_path):
    cluster = head_and_two_gpu_nodes
    phase = _tiny_cpu_phase(tmp_path, num_gpus=4, num_trials=1, trial_time_limit_s=900)
    sched = PlacementRecordingScheduler(backend="cpu", address=None, num_ranks=4)
    removed: dict = {}

    def remove_node_1() -> None:
        # Node 0's ranks then wait on their peers in a collective (or in torchrun's rendezvous) for as long
        # as nothing stops them: here 900 s, the trial's time limit.
        deadline = time.time() + 150
        trial_dir = phase.folder / "trials" / "0000"
        while time.time() < deadline and not (0 in sched.placements and _ranks_started(trial_dir, 2)
                                              and (trial_dir / "node1.json.logs" / "torchrun.log").exists()):
            time.sleep(0.2)
        if 0 in sched.placements:
            time.sleep(3)  # into the model build, past the rendezvous
            node_id = sched.placements[0]["nodes"][1]
            cluster.remove_node(next(n for n in cluster.worker_nodes if n.node_id == node_id), allow_graceful=False)
            removed["node_id"] = node_id

    killer = threading.Thread(target=remove_node_1, daemon=True)
    killer.start()
    (rec,) = S.run_trials(phase, scheduler=sched)
    killer.join(timeout=10)

    assert "node_id" in removed, f"the trial never got its ranks running: {sched.placements}"
    assert rec.status == "node_lost" and removed["node_id"] in rec.reason, (rec.status, rec.reason)
    # Node 0's launcher was interrupted by the cancel (it would have written a result at its time limit),
    # and its torchrun and ranks, on the node that is still alive, are gone.
    assert not (phase.folder / "trials" / "0000" / "result.json").exists()
    assert our_processes(str(tmp_path)) == []
