"""memory_buckets: validation and the batch path's padding bound (the exact layout is checked against
Megatron Core rank by rank in test_memory_megatron.py and test_memory_real_optimizer.py)."""

from __future__ import annotations

import pytest

from autotune.cluster import ClusterSpec
from autotune.config import JobConfig, ParallelConfig, Workload
from autotune.errors import ConfigError
from autotune.memory import MemoryOptions, estimate_memory, parameters_per_stage, peak_memory_gib_batch
from autotune.memory_buckets import rank_buffers
from autotune.model_catalog import get_model
from autotune.space import enumerate_space
from autotune.space_files import default_space


def _job(n: int, **kw) -> JobConfig:
    return JobConfig(num_gpus=n, parallel=ParallelConfig(**kw), workload=Workload(seq_length=4096,
                                                                                  global_batch_size=256))


def test_world_size_must_divide_into_the_mesh():
    with pytest.raises(ConfigError, match=r"num_gpus=64 must be divisible by TP x PP x CP=6"):
        rank_buffers(get_model("tiny-dense"), _job(64, tensor_model_parallel_size=2, pipeline_model_parallel_size=3))
    with pytest.raises(ConfigError, match=r"num_gpus=12 must be divisible by PP x EP x ETP=8"):
        rank_buffers(get_model("tiny-moe"), _job(12, expert_model_parallel_size=8))


def test_bucket_size_must_be_positive():
    with pytest.raises(ConfigError, match=r"ddp_bucket_size must be > 0 elements or None .* got 0"):
        MemoryOptions(overlap_grad_reduce=True, ddp_bucket_size=0)


def test_every_rank_of_a_data_parallel_group_shares_out_the_whole_buffer():
    """The shards of one DP x CP group add up to the stage's params, whatever the padding."""
    model = get_model("qwen3-30b-a3b")
    job = _job(64, tensor_model_parallel_size=2, pipeline_model_parallel_size=2, expert_model_parallel_size=8)
    ranks = rank_buffers(model, job)
    for stage in parameters_per_stage(model, job):
        on_stage = [r for r in ranks if r.stage == stage.stage]
        assert sum(r.dense_optimizer_numel for r in on_stage[::2]) == stage.dense  # every TP-th rank
        assert sum(r.expert_optimizer_numel for r in on_stage[::8]) == stage.expert  # every EP-th rank
        assert all(r.grad_buffer_numel >= stage.total for r in on_stage)


@pytest.mark.parametrize("overlap", [False, True])
def test_the_batch_bound_is_never_below_the_exact_layout(overlap):
    """peak_memory_gib_batch bounds the padding; estimate_memory lays it out: batch >= exact on a
    whole MoE space, with and without DDP buckets."""
    model = get_model("deepseek-v2-lite")
    cluster, workload = ClusterSpec.build(32), Workload(seq_length=4096, global_batch_size=128)
    space = enumerate_space(default_space(model), model, cluster, workload)
    options = MemoryOptions(overlap_grad_reduce=overlap, ddp_bucket_size=5_000_000 if overlap else None)
    batch = peak_memory_gib_batch(model, cluster, workload, space.knobs, options=options)
    for i in range(0, space.num_feasible, max(1, space.num_feasible // 150)):
        exact = estimate_memory(model, cluster, space.job(i), options=options).peak_memory_gib
        assert exact * (1 - 1e-12) <= batch[i] <= exact * (1 + 1e-3), space.job(i).parallel.canonical_key()


def _jobs_to_check(refdata):
    from tests.recipes import load_recipes

    for r in load_recipes(refdata):  # real recipes, explicit pipeline layouts among them
        yield get_model(r.model), JobConfig(num_gpus=r.num_gpus, parallel=r.parallel, workload=r.workload)
    for name, gpus in (("deepseek-v2-lite", 32), ("tiny-moe", 8)):
        model = get_model(name)
        space = enumerate_space(default_space(model), model, ClusterSpec.build(gpus),
                                Workload(seq_length=4096, global_batch_size=128))
        for i in range(0, space.num_feasible, max(1, space.num_feasible // 100)):
            yield model, space.job(i)


def test_the_laid_out_params_are_the_params_we_count(refdata):
    """memory_buckets lists each chunk's tensors itself. Without the distributed optimizer a rank's
    optimizer holds all of them, so per stage they must add up to parameters_per_stage (which
    test_memory_megatron checks against Megatron), routed experts apart."""
    for model, job in _jobs_to_check(refdata):
        job = job.model_copy(update={"parallel": job.parallel.model_copy(update={"use_distributed_optimizer": False})})
        ranks = rank_buffers(model, job)
        for stage in parameters_per_stage(model, job):
            key = f"{model.name} {job.parallel.canonical_key()} stage {stage.stage}"
            for r in (r for r in ranks if r.stage == stage.stage):
                assert r.grad_buffer_numel == r.optimizer_numel == stage.total, key
                assert r.expert_optimizer_numel == (stage.expert if job.parallel.ep > 1 else 0), key
