"""Our optimizer-state and grad-buffer bytes against Megatron Core's REAL optimizer, rank by rank.

tests/megatron_real_optimizer.py runs gloo processes on CPU that build GPTModel + DDP +
get_megatron_optimizer(OptimizerConfig(optimizer='adam', bf16=True, ...)), train one step, and sum
the bytes of the state each rank's optimizer holds: the fp32 master params it updates (its shard
with the distributed optimizer, a copy of every local param without) and Adam's exp_avg and
exp_avg_sq. Our prediction (memory_buckets.rank_buffers, the 12 bytes/element of
memory.OPTIMIZER_BYTES, 4-byte fp32 main grads) must be equal for every rank.

Not compared: torch's Adam also keeps a 0-d `step` tensor per param on the host (the fused GPU
Adams keep one counter per group), which is neither GPU memory nor a per-element cost.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from autotune.cluster import ClusterSpec
from autotune.config import JobConfig, ParallelConfig, Workload
from autotune.memory import GIB, OPTIMIZER_BYTES, estimate_memory
from autotune.memory_buckets import rank_buffers
from tests.test_memory_megatron import SEQ, _models, _p

REPO = Path(__file__).resolve().parent.parent
FP32, BF16 = 4, 2

# (model, world size, parallel config); the probe runs neither CP nor the interleaved schedule.
CASES = [
    ("dense", 2, _p()),  # DP2, distributed optimizer
    ("dense", 4, _p(tp=2)),  # DP2 x TP2
    ("moe", 4, _p(ep=2)),  # EP2: experts sharded over expert-DP 2, the rest over DP 4
    ("dense-tied", 4, _p(pp=2)),  # DP2 x PP2, tied embeddings: each stage's copy in a bucket of its own
    ("dense-tied", 2, _p(dist=False)),  # no distributed optimizer
    ("moe", 4, _p(tp=2, ep=2, dist=False)),
]
IDS = [f"{m}-n{n}-{ParallelConfig(**p).short_name()}{'' if p['use_distributed_optimizer'] else '-nodistopt'}"
       for m, n, p in CASES]


@pytest.fixture(scope="module")
def measured() -> list[list[dict]]:
    pytest.importorskip("megatron.core")
    models = _models()
    payload = [{"model": models[m].to_dict(), "parallel": p, "num_gpus": n, "seq_length": SEQ} for m, n, p in CASES]
    proc = subprocess.run([sys.executable, "-m", "tests.megatron_real_optimizer"], input=json.dumps(payload),
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def _job(n: int, p: dict) -> JobConfig:
    return JobConfig(num_gpus=n, parallel=ParallelConfig(**p), workload=Workload(seq_length=SEQ, global_batch_size=8))


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(CASES)), ids=IDS)
def test_optimizer_state_and_grad_buffer_bytes_per_rank_equal_the_real_optimizer(index, measured):
    name, n, p = CASES[index]
    ours = rank_buffers(_models()[name], _job(n, p))
    real = measured[index]
    assert [r["rank"] for r in real] == list(range(n))
    for o, r in zip(ours, real):
        assert r["update_successful"], r
        state = r["master"] + r["exp_avg"] + r["exp_avg_sq"]
        assert (r["master"], r["exp_avg"], r["exp_avg_sq"]) == (FP32 * o.optimizer_numel,) * 3, (o, r)
        assert state == OPTIMIZER_BYTES * o.optimizer_numel
        assert r["grad_buffer"] == FP32 * o.grad_buffer_numel, (o, r)
        # With the distributed optimizer the bf16 weights live in a param buffer laid out like the grads
        # (padding included); without it, the params keep their own storage.
        dist = p["use_distributed_optimizer"]
        assert r["param_buffer"] == (BF16 * o.grad_buffer_numel if dist else 0), (o, r)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(CASES)), ids=IDS)
def test_estimate_memory_equals_the_real_optimizer_on_the_most_loaded_rank(index, measured):
    name, n, p = CASES[index]
    job = _job(n, p)
    est = estimate_memory(_models()[name], ClusterSpec.build(n), job)
    per_stage = n // job.parallel.pp  # PP is the outermost rank dimension
    for stage in est.stages:
        real = measured[index][stage.stage * per_stage:(stage.stage + 1) * per_stage]
        assert stage.optimizer_gib * GIB == max(r["master"] + r["exp_avg"] + r["exp_avg_sq"] for r in real)
        assert stage.gradients_gib * GIB == max(r["grad_buffer"] for r in real)
