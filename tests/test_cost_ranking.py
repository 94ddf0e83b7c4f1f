"""rank_space (autotune/cost_ranking.py): configs that fit come first, fastest first, with predicted fields."""

from __future__ import annotations

import numpy as np

from autotune.cluster import ClusterSpec
from autotune.config import Workload
from autotune.cost import predict
from autotune.cost_ranking import PREDICTED_FIELDS, rank_space
from autotune.model_catalog import get_model
from autotune.space import enumerate_space
from autotune.space_files import default_space


def test_ranking_puts_fitting_fastest_first():
    model, cluster = get_model("qwen3-30b-a3b"), ClusterSpec.build(16, "h100")
    res = enumerate_space(default_space(model), model, cluster, Workload(seq_length=4096, global_batch_size=512))
    ranked = rank_space(res)
    fits = ranked.fits_memory[ranked.order]
    assert not np.any(fits[1:] & ~fits[:-1]), "a config that fits ranks below one that does not"
    speed = ranked.tokens_per_s_per_gpu[ranked.order][fits]
    assert np.all(np.diff(speed) <= 0)
    best = int(ranked.order[0])
    one = ranked.predicted(best)
    assert set(PREDICTED_FIELDS) <= set(one)
    assert one["tokens_per_s_per_gpu"] == round(predict(model, cluster, res.job(best)).tokens_per_s_per_gpu, 1)


def test_space_judged_under_a_runs_memory_settings():
    """enumerate_space passes memory_headroom / memory_options to the memory rule (as the throughput
    benchmark does to judge a published run under its own settings). Published config: NeMo 26.04
    Llama3 70B, 64x H100 FP8, TP4 PP8 VPP5 MBS1, gbs 256, seq 8192 (shared/refdata/nemo_perf_h100.csv);
    Megatron-Bridge reduces gradients in bf16 and the config ran on 80 GB."""
    from autotune import constraints as C
    from autotune.config import ParallelConfig
    from autotune.memory import MemoryOptions

    model, cluster = get_model("llama3-70b"), ClusterSpec.build(64, "h100")
    workload = Workload(seq_length=8192, global_batch_size=256, precision="fp8")
    space = default_space(model)
    strict = enumerate_space(space, model, cluster, workload)
    as_run = enumerate_space(space, model, cluster, workload, memory_headroom=0.0,
                             memory_options=MemoryOptions(grad_reduce_in_fp32=False))
    assert as_run.num_candidates == strict.num_candidates
    assert as_run.pruned_by_rule.get("memory", 0) < strict.pruned_by_rule.get("memory", 0)
    assert as_run.num_feasible > strict.num_feasible
    published = C.Knobs.of(ParallelConfig(
        tensor_model_parallel_size=4, pipeline_model_parallel_size=8, virtual_pipeline_model_parallel_size=5,
        micro_batch_size=1, sequence_parallel=True, use_distributed_optimizer=True))
    k = as_run.knobs
    same = np.ones(as_run.num_feasible, dtype=bool)
    for name in ("tp", "pp", "vpp", "cp", "mbs", "sp", "dist_opt", "recompute", "split"):
        same &= getattr(k, name) == getattr(published, name)
    assert same.any(), "the published config that ran on 80 GB is pruned under its own settings"


def test_rank_space_uses_the_memory_options_of_the_space():
    """fits_memory and peak memory follow the options enumerate_space judged with (bf16 gradient reduction
    here, as Megatron-Bridge perf recipes use), not the defaults."""
    from autotune.memory import MemoryOptions, peak_memory_gib_batch

    model, cluster = get_model("llama3-70b"), ClusterSpec.build(64, "h100")
    workload = Workload(seq_length=8192, global_batch_size=256, precision="fp8")
    opts = MemoryOptions(grad_reduce_in_fp32=False)
    res = enumerate_space(default_space(model), model, cluster, workload, memory_headroom=0.0, memory_options=opts)
    ranked = rank_space(res, memory_options=opts)
    expected = peak_memory_gib_batch(model, cluster, workload, res.knobs, options=opts)
    assert np.array_equal(ranked.peak_memory_gib, expected)
    assert ranked.fits_memory.all(), "every config the memory rule admitted under these options fits"
    default = rank_space(res)
    assert np.all(default.peak_memory_gib >= ranked.peak_memory_gib)
    assert np.any(default.peak_memory_gib > ranked.peak_memory_gib)


def test_a_matched_pair_is_ordered_as_it_ran_where_the_gap_exceeds_our_error():
    """Megatron-LM's CI ran one GPT 7B as TP1 PP4 VPP8 MBS1 and as TP4 PP1 MBS2 on 8 GPUs (functional tests
    gpt3_7b_{tp1_pp4,tp4_pp1}_memory_speed; benchmarks/data/megatron_lm_iteration_times.csv, from the golden values
    at Megatron-LM d98e8a64). On A100 TP4 PP1 was 12% faster, on GB200 TP1 PP4 was 8-11% faster: gaps wider than
    the cost model's leave-one-out error (5-8%), so the model must order the pair as it ran on both. (On H100 the
    measured gap, 1-8%, is within that error; the benchmark report shows we call it the wrong way.)"""
    from benchmarks.functional_timings import PIPELINED, TENSOR, measured_pairs, predicted_step_s
    from autotune.cost_constants import load_cost_constants

    pairs = measured_pairs()
    assert {p.gpu for p in pairs} == {"h100", "a100", "gb200"}
    assert all(p.seconds[PIPELINED] > 0 and p.seconds[TENSOR] > 0 for p in pairs)
    for gpu in ("a100", "gb200"):
        runs = [p for p in pairs if p.gpu == gpu]
        assert runs and all(abs(p.tensor_vs_pipelined) > 0.08 for p in runs)  # the data say what the docstring says
        measured_sign = {p.tensor_vs_pipelined > 0 for p in runs}
        assert len(measured_sign) == 1, f"{gpu}: the runs disagree on the order"
        pred = predicted_step_s(gpu, load_cost_constants())
        assert (pred[TENSOR] > pred[PIPELINED]) == measured_sign.pop(), f"{gpu}: predicted {pred}"


def test_the_cost_model_orders_narayanans_matched_configs_as_the_paper_states():
    """Narayanan et al. 2021 (arXiv 2104.04473) on A100, configs from Megatron-LM's sc21 scripts
    (benchmarks/paper_orderings.py). Sec. 5.3.2: GPT-3 175B on 96 GPUs (TP 8, PP 12) runs faster with the
    interleaved schedule than without at every batch size of Figure 12, and "this gap closes as the batch size
    increases". Sec. 5.4.1: a 162B GPT on 64 GPUs peaks at TP 8 (the GPUs in a node) among TP x PP = 64 splits.
    Sec. 5.4.2: a 5.9B GPT's throughput "decreases as the pipeline-parallel size increases" at every batch size.
    Figure 16's "best microbatch size is 2" is not asserted: at global batch 128 we predict micro-batch 1 faster,
    which the benchmark report shows and explains."""
    from benchmarks.paper_orderings import COMPARISONS, cases, orderings_check
    from autotune.cost_constants import load_cost_constants

    constants = load_cost_constants()
    checked = set()
    for comp, gbs, est in cases(constants):  # cases() raises on a config that breaks a Megatron rule
        if comp.figure in ("Figure 12", "Figure 13", "Figure 14"):
            speeds = [e.tokens_per_s_per_gpu for e in est]
            assert comp.agrees(speeds), f"{comp.figure} at global batch {gbs}: predicted {speeds}"
            checked.add((comp.figure, gbs))
    assert checked == {("Figure 12", b) for b in (12, 24, 36, 48, 60)} | {
        ("Figure 13", 32), ("Figure 13", 128), ("Figure 14", 32), ("Figure 14", 512)}
    assert orderings_check(constants)[1]["interleaving_gap_closes"]
    fig13 = next(c for c in COMPARISONS if c.figure == "Figure 13")
    assert fig13.configs[fig13.fastest].tensor_model_parallel_size == 8
    assert fig13.agrees([1, 2, 3, 2, 1]) and not fig13.agrees([1, 2, 3, 4, 1])
    fig14 = next(c for c in COMPARISONS if c.figure == "Figure 14")
    assert fig14.agrees([5, 4, 3, 2, 1]) and not fig14.agrees([5, 4, 4, 2, 1])
