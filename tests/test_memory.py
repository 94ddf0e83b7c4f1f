"""autotune.memory: scalar and vectorised APIs agree; monotonicity properties; speed; validation."""

from __future__ import annotations


import numpy as np
import pytest

from autotune.cluster import ClusterSpec
from autotune.config import JobConfig, ParallelConfig, Workload
from autotune.errors import ConfigError
from autotune.memory import (
    MemoryOptions, Overheads, estimate_memory, parameters_per_stage, peak_memory_gib_batch,
)
from autotune.memory_layout import in_flight_units
from autotune.model_catalog import get_model
from autotune.space import enumerate_space
from autotune.space_files import default_space

SPACES = [("tiny-dense", 8, 256, 32), ("tiny-moe", 8, 256, 32), ("llama3-70b", 64, 4096, 256),
          ("deepseek-v2-lite", 32, 4096, 128)]


def _space(model_name: str, gpus: int, seq: int, gbs: int):
    model = get_model(model_name)
    return enumerate_space(default_space(model), model, ClusterSpec.build(gpus), Workload(
        seq_length=seq, global_batch_size=gbs))


@pytest.mark.parametrize("model_name,gpus,seq,gbs", SPACES)
def test_batch_bounds_scalar_on_every_feasible_config(model_name, gpus, seq, gbs):
    """The batch path differs from estimate_memory only by bounding the distributed optimizer's
    buffer padding instead of laying it out (memory.py docstring): never below, and the padding is
    a few elements per param tensor, well under 0.1% of a GPU's memory."""
    space = _space(model_name, gpus, seq, gbs)
    assert space.num_feasible > 0
    batch = peak_memory_gib_batch(space.model, space.cluster, space.workload, space.knobs)
    rng = np.random.default_rng(0)
    # every config for the tiny spaces, a 400-config sample of the large ones
    idx = range(space.num_feasible) if space.num_feasible <= 3000 else rng.choice(space.num_feasible, 400, False)
    for i in idx:
        est = estimate_memory(space.model, space.cluster, space.job(int(i)))
        key = space.job(int(i)).parallel.canonical_key()
        assert est.peak_memory_gib * (1 - 1e-12) <= batch[i] <= est.peak_memory_gib * (1 + 1e-3), key


def test_scoring_the_qwen3_235b_space_gives_a_finite_peak_per_config():
    # Speed is measured by benchmarks/bench_space.py, not asserted here (no wall-clock asserts in tests).
    model = get_model("qwen3-235b")
    cluster, workload = ClusterSpec.build(256), Workload(seq_length=4096, global_batch_size=8192)
    space = enumerate_space(default_space(model), model, cluster, workload)
    peak = peak_memory_gib_batch(model, cluster, workload, space.knobs)
    assert len(peak) == space.num_feasible and np.isfinite(peak).all()
    # Every survivor of the memory rule fits the GPU less the default headroom.
    assert (peak <= cluster.gpu.usable_memory_gib * 0.9 + 1e-9).all()


def _job(model_name: str, gpus: int, seq: int = 4096, gbs: int = 256, **kw) -> tuple:
    model = get_model(model_name)
    return model, ClusterSpec.build(gpus), JobConfig(num_gpus=gpus, parallel=ParallelConfig(**kw),
                                                     workload=Workload(seq_length=seq, global_batch_size=gbs))


def _max_weights(model, cluster, job) -> float:
    return max(s.weights_gib for s in estimate_memory(model, cluster, job).stages)


@pytest.mark.parametrize("knob,values,base", [
    ("tensor_model_parallel_size", [1, 2, 4, 8], {}),
    ("pipeline_model_parallel_size", [1, 2, 4, 8], {}),
    ("context_parallel_size", [1, 2, 4, 8], {}),
])
@pytest.mark.parametrize("model_name", ["llama3-70b", "qwen3-30b-a3b", "deepseek-v2-lite"])
def test_more_parallelism_never_increases_weights(knob, values, base, model_name):
    weights = []
    for v in values:
        model, cluster, job = _job(model_name, 64, **{knob: v, **base})
        weights.append(_max_weights(model, cluster, job))
    assert all(b <= a + 1e-12 for a, b in zip(weights, weights[1:])), weights


@pytest.mark.parametrize("model_name", ["qwen3-30b-a3b", "deepseek-v2-lite", "tiny-moe"])
def test_more_expert_parallelism_never_increases_weights(model_name):
    weights = []
    for ep in [1, 2, 4, 8]:
        model, cluster, job = _job(model_name, 64, seq=256, gbs=64, expert_model_parallel_size=ep)
        weights.append(_max_weights(model, cluster, job))
    assert all(b < a for a, b in zip(weights, weights[1:])), weights


@pytest.mark.parametrize("model_name,gpus,kw", [
    ("llama3-70b", 64, dict(tensor_model_parallel_size=8, pipeline_model_parallel_size=4, sequence_parallel=True)),
    ("qwen3-30b-a3b", 64, dict(expert_model_parallel_size=8, pipeline_model_parallel_size=2)),
    ("deepseek-v2-lite", 48, dict(tensor_model_parallel_size=2, expert_model_parallel_size=4, sequence_parallel=True,
                                  pipeline_model_parallel_size=3, virtual_pipeline_model_parallel_size=3)),
])
def test_distributed_optimizer_and_recompute_never_increase_memory(model_name, gpus, kw):
    def est(**extra):
        model, cluster, job = _job(model_name, gpus, **{**kw, **extra})
        return estimate_memory(model, cluster, job)

    dist, plain = est(use_distributed_optimizer=True), est(use_distributed_optimizer=False)
    assert dist.peak_memory_gib < plain.peak_memory_gib
    for a, b in zip(dist.stages, plain.stages):
        assert a.optimizer_gib < b.optimizer_gib and a.weights_gib == b.weights_gib
    none, sel, full = (est(recompute_granularity=g) for g in (None, "selective", "full"))
    for n, s, f in zip(none.stages, sel.stages, full.stages):
        assert f.activations_gib < s.activations_gib <= n.activations_gib


def test_more_selective_modules_never_increase_activations():
    model, cluster, job = _job("deepseek-v2-lite", 32, tensor_model_parallel_size=2, sequence_parallel=True,
                               expert_model_parallel_size=4, recompute_granularity="selective")
    previous = None
    for modules in [("core_attn",), ("core_attn", "layernorm"), ("core_attn", "layernorm", "moe_act"),
                    ("core_attn", "layernorm", "moe_act", "mla_up_proj"), ("core_attn", "layernorm", "moe", "mlp")]:
        act = estimate_memory(model, cluster, job, options=MemoryOptions(recompute_modules=modules)).peak_stage
        if previous is not None:
            assert act.activations_gib <= previous
        previous = act.activations_gib


def test_in_flight_microbatches_follow_megatron_schedules():
    # 1F1B: stage r holds min(PP - r, M) micro-batches.
    assert in_flight_units(8, 4, 1)[0, :, 0].tolist() == [4, 3, 2, 1]
    assert in_flight_units(2, 4, 1)[0, :, 0].tolist() == [2, 2, 2, 1]
    # Interleaved, PP=4, VPP=2: warm-up 2(PP-r-1) + (VPP-1)PP forwards, then one more.
    units = in_flight_units(8, 4, 2)[0]
    assert units.sum(axis=1).tolist() == [11, 9, 7, 5]
    assert units[0].tolist() == [7, 4]  # units 0-3 and 8-10 on chunk 0, 4-7 on chunk 1
    # Korthikanti Eq. 5 with interleaving: stage 0 holds L (1 + (p-1)/(p m)) layers' worth.
    p, m = 4, 2
    assert units[0].sum() / m == pytest.approx(p * (1 + (p - 1) / (p * m)))


def test_tied_embeddings_put_a_copy_on_the_last_stage():
    model = get_model("tiny-dense").model_copy(update={"tie_embeddings": True})
    job = JobConfig(num_gpus=2, parallel=ParallelConfig(pipeline_model_parallel_size=2), workload=Workload())
    first, last = parameters_per_stage(model, job)
    vocab = 1024  # 1000 padded to a multiple of 128
    assert last.total - first.total == 64  # both hold vocab x hidden; the last also the final norm
    assert first.total > vocab * 64


def test_overheads_are_named_and_added():
    model, cluster, job = _job("llama3-8b", 8)
    base = estimate_memory(model, cluster, job, overheads=Overheads(cuda_context_gib=0, nccl_buffers_gib=0,
                                                                   fragmentation_fraction=0))
    more = estimate_memory(model, cluster, job, overheads=Overheads(cuda_context_gib=1, nccl_buffers_gib=2,
                                                                   fragmentation_fraction=0))
    assert more.peak_memory_gib - base.peak_memory_gib == pytest.approx(3)
    assert base.peak_stage.overhead_gib == 0


@pytest.mark.parametrize("kwargs,match", [
    (dict(cuda_context_gib=-1), "cuda_context_gib must be >= 0"),
    (dict(fragmentation_fraction=-0.1), "fragmentation_fraction must be >= 0"),
])
def test_overheads_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Overheads(**kwargs)


def test_options_validation():
    with pytest.raises(ConfigError, match="unknown recompute modules"):
        MemoryOptions(recompute_modules=("attention",))
    with pytest.raises(ConfigError, match="recompute_num_layers must be >= 0"):
        MemoryOptions(recompute_num_layers=-1)


def test_mtp_adds_a_layer_and_a_second_loss_to_the_activations_of_its_stage_only():
    # One MTP layer (DeepSeek-V3) keeps one more MoE layer's activations and a second logits / softmax
    # buffer on the stage that runs it; the first stage's activations do not change. The size of the change
    # is bounded by hand: more than the 16-bit logits of one micro-batch (4096 tokens x 129280 vocabulary),
    # less than that plus two layers' worth of what the stage holds per layer.
    dsv3 = get_model("deepseek-v3")
    no_mtp = dsv3.model_copy(update={"mtp_num_layers": 0})
    cluster = ClusterSpec.build(64, "h100")

    def stages(model, layout):
        job = JobConfig(num_gpus=64, parallel=ParallelConfig(
            pipeline_model_parallel_size=2, expert_model_parallel_size=32, pipeline_model_parallel_layout=layout),
            workload=Workload(seq_length=4096, global_batch_size=64))
        return estimate_memory(model, cluster, job).stages

    base = stages(no_mtp, "E" + "t" * 30 + "|" + "t" * 31 + "L")
    mtp = stages(dsv3, "E" + "t" * 30 + "|" + "t" * 31 + "mL")
    assert mtp[0].activations_gib == pytest.approx(base[0].activations_gib, rel=1e-12)
    added = mtp[1].activations_gib - base[1].activations_gib
    logits_gib = 2 * 4096 * 129280 / 2**30
    per_layer = (base[1].activations_gib - logits_gib) / 31
    assert logits_gib < added < logits_gib * 3 + 2 * per_layer
    assert mtp[1].num_parameters > base[1].num_parameters
