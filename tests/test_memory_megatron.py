"""autotune.memory against real Megatron Core 0.16.1: per-rank parameters, grad buffers, optimizer shards.

tests/megatron_fake_rank.py builds the real GPTModel chunks of every rank (torch fake process group,
local layer spec, CPU), wraps them in Megatron's DistributedDataParallel and counts what each rank
holds; our numbers must be equal, rank by rank, not close. tests/test_memory_real_optimizer.py runs
Megatron's real optimizer on a few of these configs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from autotune.config import JobConfig, ParallelConfig, Workload
from autotune.hf_config import load_hf_config
from autotune.cluster import ClusterSpec
from autotune.memory import GIB, MemoryOptions, estimate_memory, parameters_per_stage
from autotune.memory_buckets import rank_buffers
from autotune.model_catalog import get_model
from autotune.model_spec import MoESpec

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "memory"
SEQ = 64


def _models() -> dict:
    dense, moe = get_model("tiny-dense"), get_model("tiny-moe")
    return {
        "dense": dense,
        "dense-tied": dense.model_copy(update={"tie_embeddings": True}),
        "gpt": dense.model_copy(update={"activation": "gelu", "normalization": "LayerNorm", "add_bias_linear": True,
                                        "position_embedding_type": "learned_absolute", "num_query_groups": 8}),
        "qkv-bias": dense.model_copy(update={"add_qkv_bias": True, "qk_layernorm": True}),
        "moe": moe,
        "moe-tied": moe.model_copy(update={"tie_embeddings": True}),
        "moe-dense-shared": moe.model_copy(update={"moe": MoESpec(
            num_experts=8, router_topk=2, moe_ffn_hidden_size=48, shared_expert_ffn_hidden_size=64,
            num_dense_layers=2)}),
        "hf-qwen3-moe": load_hf_config(DATA / "tiny-qwen3-moe"),
        "hf-llama-tied": load_hf_config(DATA / "tiny-llama-tied"),
        "dense-mtp": dense.model_copy(update={"mtp_num_layers": 1}),
        "dense-tied-mtp": dense.model_copy(update={"tie_embeddings": True, "mtp_num_layers": 1}),
        "moe-mtp": moe.model_copy(update={"mtp_num_layers": 1}),
        "moe-dense-shared-mtp": moe.model_copy(update={"mtp_num_layers": 1, "moe": MoESpec(
            num_experts=8, router_topk=2, moe_ffn_hidden_size=48, shared_expert_ffn_hidden_size=64,
            num_dense_layers=2)}),
    }


def _p(tp=1, pp=1, vpp=None, cp=1, ep=1, etp=1, sp=None, dist=True, **split) -> dict:
    return dict(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                virtual_pipeline_model_parallel_size=vpp, context_parallel_size=cp, expert_model_parallel_size=ep,
                expert_tensor_parallel_size=etp, sequence_parallel=(tp > 1) if sp is None else sp,
                use_distributed_optimizer=dist, **split)


# (model, world size, parallel config, DDP options). Every case also wraps each chunk in Megatron's DDP
# and reads its grad buffers and distributed-optimizer shards.
BUCKETS = {"overlap_grad_reduce": True, "bucket_size": 6000}  # several buckets on pipeline rank 0
CASES = [
    ("dense", 1, _p(), {}),
    ("dense", 2, _p(tp=2), {}),
    ("dense", 4, _p(tp=4), {}),
    ("dense", 8, _p(tp=8), {}),  # TP > num_query_groups=4
    ("dense", 2, _p(pp=2), {}),
    ("dense", 4, _p(pp=4, vpp=2), {}),
    ("dense", 8, _p(tp=2, pp=2, vpp=2), {}),
    ("dense", 4, _p(pp=4, num_layers_in_first_pipeline_stage=1, num_layers_in_last_pipeline_stage=3), {}),
    ("dense", 2, _p(pp=2, account_for_embedding_in_pipeline_split=True,
                    account_for_loss_in_pipeline_split=True), {}),
    ("dense", 4, _p(tp=2, cp=2), {}),
    ("dense", 4, _p(tp=2, pp=2, dist=False), {}),
    ("dense-tied", 2, _p(tp=2), {}),
    ("dense-tied", 4, _p(tp=2, pp=2), {}),
    ("dense-tied", 4, _p(pp=2, vpp=2), {}),
    ("gpt", 4, _p(tp=2, pp=2), {}),
    ("qkv-bias", 4, _p(tp=4), {}),
    ("moe", 2, _p(ep=2), {}),
    ("moe", 8, _p(ep=4, etp=2), {}),
    ("moe", 4, _p(tp=2, ep=2), {}),
    ("moe", 8, _p(tp=2, pp=2, ep=2), {}),
    ("moe", 6, _p(pp=3, vpp=2, ep=2), {}),
    ("moe-tied", 4, _p(pp=2, ep=2), {}),
    ("moe-dense-shared", 8, _p(tp=2, pp=2, ep=2, etp=2), {}),
    ("moe-dense-shared", 6, _p(pp=3, ep=2), {}),
    ("hf-qwen3-moe", 8, _p(tp=2, pp=2, ep=2), {}),
    ("hf-llama-tied", 4, _p(tp=2, pp=2), {}),
    # Explicit pipeline layouts: virtual stages given, and (None) derived from the layout as Megatron-LM does.
    ("dense-tied", 4, _p(pp=2, vpp=2, pipeline_model_parallel_layout="Ettt|tt|t|ttL"), {}),
    ("dense", 4, _p(pp=2, pipeline_model_parallel_layout="Ett|ttt|tt|tL"), {}),
    ("moe", 4, _p(pp=2, vpp=2, ep=2, pipeline_model_parallel_layout="Et|tt|tt|tL"), {}),
    # Data-parallel layouts: DP x CP groups, a DP that is not a power of two (lcm(DP, 128) padding).
    ("dense", 8, _p(tp=2, cp=2), {}),
    ("dense", 3, _p(), {}),
    ("dense-tied", 6, _p(tp=2), {}),
    ("gpt", 6, _p(pp=2), {}),
    # EP = 1: the routed experts live in the dense buffer, sharded over DP x CP.
    ("moe", 2, _p(), {}),
    ("moe", 4, _p(tp=2, etp=2), {}),
    ("moe", 4, _p(tp=2), {}),  # ETP 1 < TP: expert-DP would be 4, but the buffer's group is DP x CP = 2
    ("moe-dense-shared", 8, _p(tp=2, pp=2), {}),
    ("moe", 8, _p(pp=2, ep=2, cp=2), {}),
    # No distributed optimizer: every rank keeps every local param; no padding.
    ("dense-tied", 4, _p(pp=2, vpp=2, dist=False), {}),
    ("moe", 4, _p(ep=2, dist=False), {}),
    ("moe-dense-shared", 8, _p(tp=2, pp=2, ep=2, etp=2, dist=False), {}),
    # overlap_grad_reduce: buckets on pipeline rank 0's first chunk; a tied embedding's own bucket.
    ("dense", 4, _p(pp=2), BUCKETS),
    ("dense-tied", 8, _p(pp=2, vpp=2), BUCKETS),
    ("moe", 8, _p(pp=2, ep=2), BUCKETS),
    ("moe-tied", 4, _p(ep=2), BUCKETS),
    ("dense", 4, _p(dist=False), BUCKETS),
    # Multi-token prediction: the MTP layer, its norms and eh_proj, and the embedding copy on the last stage.
    ("dense-mtp", 2, _p(tp=2), {}),
    ("dense-mtp", 4, _p(tp=2, pp=2), {}),
    ("dense-mtp", 4, _p(pp=2, vpp=2), BUCKETS),
    ("dense-tied-mtp", 4, _p(pp=2), {}),
    ("moe-mtp", 2, _p(ep=2), {}),
    ("moe-mtp", 8, _p(tp=2, pp=2, ep=2), {}),
    ("moe-mtp", 4, _p(pp=2, vpp=2, ep=2, pipeline_model_parallel_layout="Et|tt|tt|tmL"), {}),
    ("dense-mtp", 3, _p(pp=3, pipeline_model_parallel_layout="Ett|ttt|ttt||m|L"), {}),  # standalone MTP rank
    ("dense-mtp", 2, _p(pp=2, pipeline_model_parallel_layout="Etttt|tttt|m|L"), {}),  # MTP in rank 0's 2nd chunk
    # MTP on a rank that holds only dense layers: it still copies the model's last (MoE) layer.
    ("moe-dense-shared-mtp", 4, _p(pp=2, ep=2, pipeline_model_parallel_layout="Ett|tttt|m|L"), {}),
]
IDS = [f"{m}-n{n}-{ParallelConfig(**p).short_name()}{'-buckets' if d.get('overlap_grad_reduce') else ''}"
       f"{'' if p['use_distributed_optimizer'] else '-nodistopt'}" for m, n, p, d in CASES]


@pytest.fixture(scope="module")
def megatron_counts() -> list[dict]:
    pytest.importorskip("megatron.core")
    models = _models()
    payload = [{"model": models[m].to_dict(), "parallel": p, "num_gpus": n, "seq_length": SEQ, "optimizer": True,
                "ddp": _ddp(d)} for m, n, p, d in CASES]
    proc = subprocess.run([sys.executable, "-m", "tests.megatron_fake_rank"], input=json.dumps(payload),
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _ddp(d: dict) -> dict:
    return {k: v for k, v in d.items() if k in ("overlap_grad_reduce", "bucket_size")}


def _job(n: int, p: dict) -> JobConfig:
    return JobConfig(num_gpus=n, parallel=ParallelConfig(**p), workload=Workload(seq_length=SEQ, global_batch_size=8))


def test_cases_cover_the_issue_list():
    assert len(CASES) >= 20
    knobs = {k for _, _, p, _ in CASES for k, v in p.items() if v not in (1, None, False, True)}
    assert {"tensor_model_parallel_size", "pipeline_model_parallel_size", "virtual_pipeline_model_parallel_size",
            "expert_model_parallel_size", "expert_tensor_parallel_size", "context_parallel_size"} <= knobs
    assert {p["use_distributed_optimizer"] for _, _, p, _ in CASES} == {True, False}


@pytest.mark.parametrize("index", range(len(CASES)), ids=IDS)
def test_parameters_per_rank_equal_megatron(index, megatron_counts):
    name, n, p, _ = CASES[index]
    job = _job(n, p)
    ours = parameters_per_stage(_models()[name], job)
    per_stage = n // job.parallel.pp  # Megatron's rank order tp-cp-ep-dp-pp: PP is outermost
    real = megatron_counts[index]["params"]
    for stage in ours:
        ranks = real[stage.stage * per_stage:(stage.stage + 1) * per_stage]
        assert max(ranks) == stage.total, f"stage {stage.stage}: Megatron {ranks}, ours {stage}"


@pytest.mark.parametrize("index", range(len(CASES)), ids=IDS)
def test_grad_buffer_and_optimizer_shard_per_rank_equal_megatron(index, megatron_counts):
    """Every rank: the elements of its DDP grad buffers (padding included) and the (dense, expert)
    param elements its optimizer keeps fp32 master weights and Adam m, v for."""
    name, n, p, ddp = CASES[index]
    ours = rank_buffers(_models()[name], _job(n, p), **_ddp(ddp))
    real = megatron_counts[index]["buffers"]
    assert len(ours) == len(real) == n
    for rank, (o, r) in enumerate(zip(ours, real)):
        assert o.rank == rank
        assert (o.grad_buffer_numel, [o.dense_optimizer_numel, o.expert_optimizer_numel]) == \
            (r["grad_buffer"], r["optimizer"]), f"rank {rank}: Megatron {r}, ours {o}"


@pytest.mark.parametrize("index", range(len(CASES)), ids=IDS)
def test_estimate_memory_takes_the_most_loaded_rank_of_each_stage(index, megatron_counts):
    """estimate_memory's weight, gradient and optimizer bytes: Megatron's largest per stage, to the byte
    (bf16 weights, in the padded param buffer with the distributed optimizer; fp32 main grads; fp32
    master weights + exp_avg + exp_avg_sq = 12 bytes per owned element)."""
    name, n, p, ddp = CASES[index]
    job = _job(n, p)
    options = MemoryOptions(overlap_grad_reduce=ddp.get("overlap_grad_reduce", False),
                            ddp_bucket_size=ddp.get("bucket_size"))
    est = estimate_memory(_models()[name], ClusterSpec.build(n), job, options=options)
    real = megatron_counts[index]["buffers"]
    per_stage = n // job.parallel.pp
    for stage in est.stages:
        ranks = real[stage.stage * per_stage:(stage.stage + 1) * per_stage]
        assert stage.gradients_gib * GIB == max(4 * r["grad_buffer"] for r in ranks)
        assert stage.optimizer_gib * GIB == max(12 * sum(r["optimizer"]) for r in ranks)
        assert stage.weights_gib * GIB == max(r["weights_bytes"] for r in ranks)
