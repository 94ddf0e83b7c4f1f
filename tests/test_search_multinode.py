"""A 4-rank trial across two Ray nodes: real Megatron Core over gloo, torchrun rendezvous between the nodes.

Both Ray nodes run on this machine (`ray.cluster_utils.Cluster`), each declaring 2 GPUs, so the search's
placement group (one bundle of {GPU: 2} per node, STRICT_SPREAD) must put the trial's two halves on two
different Ray nodes, and torchrun's multi-node rendezvous (node 0's IP as Ray reports it) joins them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune import search as S
from autotune.cluster import ClusterSpec
from autotune.config import Workload
from autotune.model_catalog import get_model
from autotune.scheduler import RayScheduler
from autotune.space_files import default_space


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

    def submit(self, number, spec, label, gpus_per_node, out_dir):
        running = super().submit(number, spec, label, gpus_per_node, out_dir)
        table = self.ray.util.placement_group_table(running.pg)
        self.placements[number] = {"strategy": table["strategy"], "bundles": table["bundles"],
                                   "nodes": table["bundles_to_node_id"]}
        return running


@pytest.fixture
def two_node_cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=2, num_gpus=2))
    cluster.add_node(num_cpus=2, num_gpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(300)
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

