"""The parallelism matrix, each a real short Megatron Core training run on CPU.

Default suite: TP1 (1 rank), TP2, PP2+VPP2, EP2 MoE, CP2 - one launch per mechanism (tensor,
interleaved pipeline, expert alltoall, context), several checks per launch. Slow: the rest.
"""

from __future__ import annotations

import pytest

from autotune.model_catalog import get_model
from autotune.params import count_parameters, layer_params, norm_params
from trial_runner.model_builder import padded_vocab_size

# name -> (model, ranks, ParallelConfig knobs). seq 64, global batch 8, 2 warm-up + 3 measured steps.
MATRIX = {
    "tp1": ("tiny-dense", 1, {}),
    "tp2": ("tiny-dense", 2, dict(tensor_model_parallel_size=2)),
    "pp2_vpp2": ("tiny-dense", 2, dict(pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=2)),
    "ep2_moe": ("tiny-moe", 2, dict(expert_model_parallel_size=2)),
    "cp2": ("tiny-dense", 2, dict(context_parallel_size=2)),
    "pp2": ("tiny-dense", 2, dict(pipeline_model_parallel_size=2)),
    "tp2_sp": ("tiny-dense", 2, dict(tensor_model_parallel_size=2, sequence_parallel=True)),
    "dp2_distopt": ("tiny-dense", 2, dict(use_distributed_optimizer=True)),
    "tp2_pp2": ("tiny-dense", 4, dict(tensor_model_parallel_size=2, pipeline_model_parallel_size=2)),
    "tp2_etp2_sp_moe": ("tiny-moe", 2, dict(tensor_model_parallel_size=2, expert_tensor_parallel_size=2,
                                             sequence_parallel=True)),
    "tp2_ep2_etp2_sp_moe": ("tiny-moe", 4, dict(tensor_model_parallel_size=2, expert_model_parallel_size=2,
                                                 expert_tensor_parallel_size=2, sequence_parallel=True)),
    "dp2_recompute_full": ("tiny-dense", 2, dict(recompute_granularity="full", use_distributed_optimizer=False)),
    # A CP group without global rank 0 (ranks {2, 3}): regression for the gloo all-gather backward.
    "cp2_ep4_moe": ("tiny-moe", 4, dict(context_parallel_size=2, expert_model_parallel_size=4)),
    # An explicit layout with two stages per rank and no VPP given: interleaved, as Megatron-LM derives it.
    "pp2_layout": ("tiny-dense", 2, dict(pipeline_model_parallel_size=2,
                                         pipeline_model_parallel_layout="Ett|ttt|tt|tL")),
}
DEFAULT = ["tp1", "tp2", "pp2_vpp2", "ep2_moe", "cp2"]
SLOW = [name for name in MATRIX if name not in DEFAULT]


def _run(trials, make_spec, name):
    model, ranks, knobs = MATRIX[name]
    return trials.get(name, make_spec(model, ranks, **knobs))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", DEFAULT)
def test_default_matrix_trains(trials, make_spec, assert_trained, name):
    assert_trained(_run(trials, make_spec, name))


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", SLOW)
def test_slow_matrix_trains(trials, make_spec, assert_trained, name):
    assert_trained(_run(trials, make_spec, name))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["tp2", "cp2"])
def test_same_losses_as_tp1(trials, make_spec, name):
    """Same seed, same data: TP2 (and CP2, whose loss is normalised over CP ranks) follow TP1's losses.
    fp32 on CPU; the tolerance covers reduction-order differences only."""
    reference = _run(trials, make_spec, "tp1").losses
    assert _run(trials, make_spec, name).losses == pytest.approx(reference, abs=2e-3)


def _replicated_under_tp(model) -> int:
    """Norms (and qk-norms) are whole on every TP rank; everything else in tiny-dense is TP-split."""
    layer = layer_params(model, is_moe=False)
    return model.num_layers * (layer.norms + layer.attention_replicated) + norm_params(model, model.hidden_size)


@pytest.mark.timeout(300)
def test_parameters_per_rank_match_the_analytic_count(trials, make_spec):
    dense = get_model("tiny-dense")
    total = count_parameters(dense, padded_vocab_size(dense.vocab_size, 1)).total
    assert padded_vocab_size(1000, 2) == 1024  # 1000 padded to a multiple of 128 * TP
    assert _run(trials, make_spec, "tp1").num_parameters_per_rank == [total]
    assert _run(trials, make_spec, "cp2").num_parameters_per_rank == [total, total]
    tp2 = _run(trials, make_spec, "tp2").num_parameters_per_rank
    assert sum(tp2) == total + _replicated_under_tp(dense)
    assert tp2[0] == tp2[1]
    # Pipeline stages partition the model: nothing is held twice (embeddings are untied).
    assert sum(_run(trials, make_spec, "pp2_vpp2").num_parameters_per_rank) == total

    moe = get_model("tiny-moe")
    moe_total = count_parameters(moe, padded_vocab_size(moe.vocab_size, 1)).total
    routed = layer_params(moe, is_moe=True).routed_experts * moe.num_moe_layers
    # EP2: each rank holds everything except the other rank's half of the routed experts.
    assert _run(trials, make_spec, "ep2_moe").num_parameters_per_rank == [moe_total - routed // 2] * 2


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_tp2_pp2_parameters_sum_to_the_analytic_count(trials, make_spec):
    dense = get_model("tiny-dense")
    total = count_parameters(dense, padded_vocab_size(dense.vocab_size, 2)).total
    per_rank = _run(trials, make_spec, "tp2_pp2").num_parameters_per_rank
    assert sum(per_rank) == total + _replicated_under_tp(dense)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", DEFAULT + [pytest.param("pp2_layout", marks=pytest.mark.slow)])
def test_parameters_per_rank_equal_the_memory_model(trials, make_spec, name):
    """The parameters each real rank allocated equal the memory model's count for the most loaded
    rank of its stage (ranks are stage-major in Megatron's tp-cp-ep-dp-pp order)."""
    from autotune.config import JobConfig, ParallelConfig, Workload
    from autotune.memory import estimate_memory
    from autotune.cluster import ClusterSpec

    model_name, ranks, knobs = MATRIX[name]
    result = _run(trials, make_spec, name)
    job = JobConfig(num_gpus=ranks, parallel=ParallelConfig(**knobs),
                    workload=Workload(seq_length=64, global_batch_size=8))
    est = estimate_memory(get_model(model_name), ClusterSpec.build(ranks, gpus_per_node=ranks), job)
    per_stage = ranks // job.parallel.pp
    measured = [max(result.num_parameters_per_rank[s * per_stage:(s + 1) * per_stage]) for s in range(job.parallel.pp)]
    assert measured == [s.num_parameters for s in est.stages]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_model_with_an_mtp_layer_trains_and_holds_the_modelled_parameters(trials, make_spec, assert_trained):
    """Megatron Core builds the multi-token-prediction layer (and the embedding copy it needs) on the last
    stage; the real ranks train and hold exactly what the memory model counts per stage."""
    from autotune.cluster import ClusterSpec
    from autotune.memory import estimate_memory

    spec = make_spec("tiny-moe", 2, pipeline_model_parallel_size=2, model_updates={"mtp_num_layers": 1})
    result = trials.get("pp2_mtp", spec)
    assert_trained(result)
    est = estimate_memory(spec.model, ClusterSpec.build(2, gpus_per_node=2), spec.job)
    assert result.num_parameters_per_rank == [s.num_parameters for s in est.stages]
    no_mtp = estimate_memory(get_model("tiny-moe"), ClusterSpec.build(2, gpus_per_node=2), spec.job)
    assert est.stages[0].num_parameters == no_mtp.stages[0].num_parameters
    assert est.stages[1].num_parameters > no_mtp.stages[1].num_parameters
