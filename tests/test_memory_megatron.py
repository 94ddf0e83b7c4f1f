"""autotune.memory against real Megatron Core 0.16.1: per-rank parameters and optimizer shards.

tests/megatron_fake_rank.py builds the real GPTModel chunks of every rank (torch fake process group,
local layer spec, CPU) and counts what each rank holds; our per-stage numbers must be equal, not close.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from autotune.config import JobConfig, ParallelConfig, Workload
from autotune.hf_config import load_hf_config
from autotune.memory import parameters_per_stage
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
    }


def _p(tp=1, pp=1, vpp=None, cp=1, ep=1, etp=1, sp=None, dist=True, **split) -> dict:
    return dict(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                virtual_pipeline_model_parallel_size=vpp, context_parallel_size=cp, expert_model_parallel_size=ep,
                expert_tensor_parallel_size=etp, sequence_parallel=(tp > 1) if sp is None else sp,
                use_distributed_optimizer=dist, **split)


# (model, world size, parallel config, also check the optimizer shard)
CASES = [
    ("dense", 1, _p(), False),
    ("dense", 2, _p(tp=2), False),
    ("dense", 4, _p(tp=4), False),
    ("dense", 8, _p(tp=8), False),  # TP > num_query_groups=4
    ("dense", 2, _p(pp=2), True),
    ("dense", 4, _p(pp=4, vpp=2), False),
    ("dense", 8, _p(tp=2, pp=2, vpp=2), True),
    ("dense", 4, _p(pp=4, num_layers_in_first_pipeline_stage=1, num_layers_in_last_pipeline_stage=3), False),
    ("dense", 2, _p(pp=2, account_for_embedding_in_pipeline_split=True,
                    account_for_loss_in_pipeline_split=True), False),
    ("dense", 4, _p(tp=2, cp=2), True),
    ("dense", 4, _p(tp=2, pp=2, dist=False), True),
    ("dense-tied", 2, _p(tp=2), False),
    ("dense-tied", 4, _p(tp=2, pp=2), False),
    ("dense-tied", 4, _p(pp=2, vpp=2), False),
    ("gpt", 4, _p(tp=2, pp=2), False),
    ("qkv-bias", 4, _p(tp=4), False),
    ("moe", 2, _p(ep=2), True),
    ("moe", 8, _p(ep=4, etp=2), True),
    ("moe", 4, _p(tp=2, ep=2), False),
    ("moe", 8, _p(tp=2, pp=2, ep=2), True),
    ("moe", 6, _p(pp=3, vpp=2, ep=2), False),
    ("moe-tied", 4, _p(pp=2, ep=2), False),
    ("moe-dense-shared", 8, _p(tp=2, pp=2, ep=2, etp=2), True),
    ("moe-dense-shared", 6, _p(pp=3, ep=2), False),
    ("hf-qwen3-moe", 8, _p(tp=2, pp=2, ep=2), True),
    ("hf-llama-tied", 4, _p(tp=2, pp=2), False),
]


@pytest.fixture(scope="module")
def megatron_counts() -> list[dict]:
    pytest.importorskip("megatron.core")
    models = _models()
    payload = [{"model": models[m].to_dict(), "parallel": p, "num_gpus": n, "seq_length": SEQ, "optimizer": opt}
               for m, n, p, opt in CASES]
    proc = subprocess.run([sys.executable, "-m", "tests.megatron_fake_rank"], input=json.dumps(payload),
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _job(n: int, p: dict) -> JobConfig:
    return JobConfig(num_gpus=n, parallel=ParallelConfig(**p), workload=Workload(seq_length=SEQ, global_batch_size=8))


def test_cases_cover_the_issue_list():
    assert len(CASES) >= 20
    knobs = {k for _, _, p, _ in CASES for k, v in p.items() if v not in (1, None, False, True)}
    assert {"tensor_model_parallel_size", "pipeline_model_parallel_size", "virtual_pipeline_model_parallel_size",
            "expert_model_parallel_size", "expert_tensor_parallel_size", "context_parallel_size"} <= knobs


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{m}-n{n}-{ParallelConfig(**p).short_name()}"
                                                           for m, n, p, _ in CASES])
def test_parameters_per_rank_equal_megatron(index, megatron_counts):
    name, n, p, _ = CASES[index]
    job = _job(n, p)
    ours = parameters_per_stage(_models()[name], job)
    per_stage = n // job.parallel.pp  # Megatron's rank order tp-cp-ep-dp-pp: PP is outermost
    real = megatron_counts[index]["params"]
    for stage in ours:
        ranks = real[stage.stage * per_stage:(stage.stage + 1) * per_stage]
        assert max(ranks) == stage.total, f"stage {stage.stage}: Megatron {ranks}, ours {stage}"


@pytest.mark.parametrize("index", [i for i, c in enumerate(CASES) if c[3]])
def test_optimizer_shard_matches_megatron(index, megatron_counts):
    """fp32 master weights (and so Adam m, v) per rank. Non-distributed: every local param, exactly.
    Distributed: the dense params split over DP x CP, the experts over expert-DP; Megatron's shard
    differs from params/DP only by its bucket padding (each bucket padded to lcm(DP, 128), each param
    start to 64 elements), and the shards of a DP group add up to the params exactly."""
    name, n, p, _ = CASES[index]
    job = _job(n, p)
    ours = parameters_per_stage(_models()[name], job)
    per_stage = n // job.parallel.pp
    dp_cp = job.data_parallel_size * job.parallel.cp
    edp = job.expert_data_parallel_size
    shards = megatron_counts[index]["optimizer_fp32"]
    for stage in ours:
        stage_shards = shards[stage.stage * per_stage:(stage.stage + 1) * per_stage]
        if not job.parallel.use_distributed_optimizer:
            assert all(d == stage.dense and e == stage.expert for d, e in stage_shards)
            continue
        # rank order tp-cp-ep-dp-pp: the DP x CP group of the stage's first rank is every (TP)-th rank.
        tp = job.parallel.tp
        dense_group = [stage_shards[i][0] for i in range(0, per_stage, tp)]
        assert len(dense_group) == dp_cp and sum(dense_group) == stage.dense
        assert all(abs(d - stage.dense / dp_cp) <= math.lcm(dp_cp, 128) for d in dense_group)
        if stage.expert:
            step = job.parallel.ep * job.parallel.etp  # expert order tp-ep-dp-pp
            expert_group = [stage_shards[i][1] for i in range(0, per_stage, step)]
            assert len(expert_group) == edp and sum(expert_group) == stage.expert
            assert all(abs(e - stage.expert / edp) <= math.lcm(edp, 128) for e in expert_group)
