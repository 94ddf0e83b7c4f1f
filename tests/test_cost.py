"""The cost model (autotune/cost.py): scalar and batch paths agree, and its physics points the right way."""

from __future__ import annotations

import json

import numpy as np
import pytest

from autotune import constraints as C
from autotune.cluster import ClusterSpec
from autotune.config import JobConfig, ParallelConfig, Workload
from autotune.cost import BREAKDOWN_KEYS, CostConstants, RunOptions, predict, predict_batch
from autotune.cost_constants import load_cost_constants
from autotune.cost_terms import stage_layer_counts, step_work
from autotune.errors import ConfigError, SpecFileError
from autotune.model_catalog import get_model
from autotune.pipeline import layers_per_chunk
from autotune.space import enumerate_space
from autotune.space_files import default_space

CASES = [("llama3-70b", 64, 256, "bf16"), ("qwen3-30b-a3b", 16, 512, "fp8"), ("deepseek-v2-lite", 32, 256, "bf16")]


def _job(num_gpus: int, gbs: int = 256, precision: str = "bf16", seq: int = 4096, **parallel) -> JobConfig:
    return JobConfig(num_gpus=num_gpus, parallel=ParallelConfig(**parallel),
                     workload=Workload(seq_length=seq, global_batch_size=gbs, precision=precision))


@pytest.mark.parametrize("name,gpus,gbs,precision", CASES)
def test_scalar_and_batch_agree(name, gpus, gbs, precision):
    model, cluster = get_model(name), ClusterSpec.build(gpus, "h100")
    res = enumerate_space(default_space(model), model, cluster, Workload(seq_length=4096, global_batch_size=gbs,
                                                                         precision=precision))
    batch = predict_batch(model, cluster, res.workload, res.knobs)
    rng = np.random.default_rng(0)
    for i in rng.choice(res.num_feasible, size=min(40, res.num_feasible), replace=False):
        one = predict(model, cluster, res.job(int(i)))
        assert one.step_time_s == pytest.approx(batch["step_time_s"][i], rel=1e-9)
        assert one.tokens_per_s_per_gpu == pytest.approx(batch["tokens_per_s_per_gpu"][i], rel=1e-9)
        assert one.mfu == pytest.approx(batch["mfu"][i], rel=1e-9)
        assert sum(one.breakdown_s.values()) == pytest.approx(one.step_time_s, rel=1e-9)


@pytest.mark.parametrize("name,gpus", [("llama3.1-405b", 512), ("deepseek-v3", 256), ("tiny-moe", 8)])
def test_vectorised_stage_layers_match_layers_per_chunk(name, gpus):
    model, cluster = get_model(name), ClusterSpec.build(gpus, "h100")
    res = enumerate_space(default_space(model), model, cluster, Workload(seq_length=4096, global_batch_size=1024))
    first, middle, last = stage_layer_counts(model, res.knobs)
    seen = set()
    for i in range(res.num_feasible):
        key = tuple(int(getattr(res.knobs, k)[i]) for k in ("pp", "vpp", "split", "first", "last"))
        if key in seen:
            continue
        seen.add(key)
        per_stage = [sum(c) for c in layers_per_chunk(model.num_layers, res.parallel_config(i))]
        assert (first[i], last[i]) == (per_stage[0], per_stage[-1]), key
        if len(per_stage) > 2:
            assert middle[i] == max(per_stage[1:-1]), key


def test_tp_across_nodes_is_slower():
    model = get_model("llama3-70b")
    job = _job(64, tensor_model_parallel_size=8, pipeline_model_parallel_size=4, sequence_parallel=True)
    inside = predict(model, ClusterSpec.build(64, "h100", gpus_per_node=8), job)
    across = predict(model, ClusterSpec.build(64, "h100", gpus_per_node=4), job)
    assert across.step_time_s > 1.2 * inside.step_time_s
    assert across.breakdown_s["tp_comm"] > 5 * inside.breakdown_s["tp_comm"]


def test_ep_across_nodes_is_slower():
    model, cluster = get_model("qwen3-30b-a3b"), ClusterSpec.build(16, "h100")
    inside = predict(model, cluster, _job(16, expert_model_parallel_size=8))
    across = predict(model, cluster, _job(16, expert_model_parallel_size=16))
    assert across.breakdown_s["ep_comm"] > 2 * inside.breakdown_s["ep_comm"]


def test_more_microbatches_shrink_the_bubble():
    model, cluster = get_model("llama3-70b"), ClusterSpec.build(64, "h100")
    fractions = []
    for gbs in (32, 64, 128, 512):
        est = predict(model, cluster, _job(64, gbs=gbs, tensor_model_parallel_size=4, pipeline_model_parallel_size=8,
                                           sequence_parallel=True))
        fractions.append(est.breakdown_s["pipeline_bubble"] / est.step_time_s)
    assert fractions == sorted(fractions, reverse=True) and fractions[-1] < 0.5 * fractions[0]


def test_interleaving_shrinks_the_bubble():
    model, cluster = get_model("llama3-70b"), ClusterSpec.build(64, "h100")
    kw = dict(tensor_model_parallel_size=4, pipeline_model_parallel_size=8, sequence_parallel=True)
    plain = predict(model, cluster, _job(64, **kw))
    interleaved = predict(model, cluster, _job(64, virtual_pipeline_model_parallel_size=5, **kw))
    assert interleaved.breakdown_s["pipeline_bubble"] == pytest.approx(plain.breakdown_s["pipeline_bubble"] / 5,
                                                                       rel=1e-9)
    assert interleaved.step_time_s < plain.step_time_s


def test_fp8_faster_than_bf16_when_compute_bound():
    model, cluster = get_model("llama3-70b"), ClusterSpec.build(64, "h100")
    kw = dict(tensor_model_parallel_size=4, pipeline_model_parallel_size=4, sequence_parallel=True)
    bf16 = predict(model, cluster, _job(64, precision="bf16", **kw))
    fp8 = predict(model, cluster, _job(64, precision="fp8", **kw))
    assert fp8.tokens_per_s_per_gpu > 1.2 * bf16.tokens_per_s_per_gpu


def test_recompute_costs_time():
    model, cluster = get_model("llama3-8b"), ClusterSpec.build(8, "h100")
    none = predict(model, cluster, _job(8, gbs=128))
    selective = predict(model, cluster, _job(8, gbs=128, recompute_granularity="selective"))
    full = predict(model, cluster, _job(8, gbs=128, recompute_granularity="full"))
    assert none.step_time_s < selective.step_time_s < full.step_time_s
    # Full recompute re-runs one forward: about a third more compute.
    assert full.step_time_s / none.step_time_s == pytest.approx(4 / 3, abs=0.08)


def test_model_tflops_convention():
    model, cluster = get_model("llama3-8b"), ClusterSpec.build(8, "h100")
    est = predict(model, cluster, _job(8, gbs=128, seq=8192))
    from autotune.flops import model_flops_per_iteration
    expected = model_flops_per_iteration(model, 8192, 128) / (est.step_time_s * 8) / 1e12
    assert est.model_tflops_per_gpu == pytest.approx(expected, rel=1e-12)
    assert est.mfu == pytest.approx(expected / 989, rel=1e-12)


def test_constants_reject_unknown_and_missing_keys():
    good = load_cost_constants().to_dict()
    with pytest.raises(ConfigError, match="unknown keys \\['gemm_eff'\\]"):
        CostConstants.from_dict({**good, "gemm_eff": 1.0})
    missing = dict(good)
    missing.pop("attention_efficiency")
    with pytest.raises(ConfigError, match="missing keys \\['attention_efficiency'\\]"):
        CostConstants.from_dict(missing)
    with pytest.raises(ConfigError, match="must be positive, got gemm_efficiency=-1.0"):
        CostConstants.from_dict({**good, "gemm_efficiency": -1})
    assert CostConstants.from_dict(good) == load_cost_constants()


def test_constants_file_errors(tmp_path):
    with pytest.raises(SpecFileError, match="not found"):
        load_cost_constants(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(SpecFileError, match="not valid JSON"):
        load_cost_constants(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"gemm_efficiency": 1}))
    with pytest.raises(SpecFileError, match="'constants' mapping"):
        load_cost_constants(wrong)


def test_breakdown_keys_complete():
    model, cluster = get_model("tiny-moe"), ClusterSpec.build(8, "h100")
    est = predict(model, cluster, _job(8, gbs=64, seq=1024, expert_model_parallel_size=2))
    assert set(est.breakdown_s) == set(BREAKDOWN_KEYS)
    assert all(v >= 0 for v in est.breakdown_s.values())


def test_bigger_micro_batch_gains_nothing_on_large_gemms():
    """Roofline per GEMM: at 8k tokens per micro-batch the dense GEMMs are compute-bound, so apart from the
    fixed per-layer time (paid per micro-batch, so halved) MBS 2 may not beat MBS 1 by more than a couple of
    percent (it halves the micro-batches; the bubble is already small)."""
    model, cluster = get_model("llama3-70b"), ClusterSpec.build(64, "h100")
    kw = dict(tensor_model_parallel_size=4, pipeline_model_parallel_size=4, virtual_pipeline_model_parallel_size=5,
              sequence_parallel=True)
    jobs = [_job(64, gbs=256, seq=8192, precision="fp8", micro_batch_size=mbs, **kw) for mbs in (1, 2)]
    c = load_cost_constants()
    no_overhead = CostConstants.from_dict({**c.to_dict(), "layer_overhead_s": 1e-12})
    one, two = (predict(model, cluster, job, constants=no_overhead) for job in jobs)
    assert two.breakdown_s["compute"] == pytest.approx(one.breakdown_s["compute"], rel=0.02)
    one, two = (predict(model, cluster, job, constants=c) for job in jobs)
    assert two.breakdown_s["compute"] < one.breakdown_s["compute"]


def test_context_parallel_is_not_free():
    """CP adds the per-step output correction and shorter flash-attention calls: at equal work per GPU, a
    CP2 config's compute is above the CP1 config's."""
    model, cluster = get_model("llama3-8b"), ClusterSpec.build(8, "h100")
    cp1 = predict(model, cluster, _job(8, gbs=128, seq=8192, micro_batch_size=1))
    cp2 = predict(model, cluster, _job(8, gbs=128, seq=8192, micro_batch_size=1, context_parallel_size=2))
    # CP2 halves DP, so the per-GPU work per step is the same; only the CP overheads differ.
    assert cp2.breakdown_s["compute"] > 1.01 * cp1.breakdown_s["compute"]


def test_bf16_gradient_reduction_halves_dp_traffic():
    model, cluster = get_model("llama3-8b"), ClusterSpec.build(64, "h100")
    job = _job(64, gbs=128, seq=8192, use_distributed_optimizer=False)
    fp32 = predict(model, cluster, job, options=RunOptions(overlap_grad_reduce=False))
    bf16 = predict(model, cluster, job, options=RunOptions(overlap_grad_reduce=False, grad_reduce_in_fp32=False))
    assert bf16.breakdown_s["dp_comm_exposed"] == pytest.approx(fp32.breakdown_s["dp_comm_exposed"] / 2, rel=1e-9)


def test_expert_imbalance_grows_with_ep():
    """The busiest EP rank sets the pace: with fewer experts per rank the expected maximum load rises."""
    from autotune.cost_terms import layer_work
    model, cluster = get_model("qwen3-30b-a3b"), ClusterSpec.build(64, "h100")
    workload = Workload(seq_length=4096, global_batch_size=512)
    spreads = []
    for ep in (2, 8, 32):
        k = C.Knobs.batch_of(ParallelConfig(expert_model_parallel_size=ep))
        spreads.append(float(layer_work(model, cluster, workload, k, moe_layer=True).imbalance_spread[0]))
    assert spreads == sorted(spreads) and spreads[0] > 0


def test_tp_comm_overlap_hides_tp_collectives():
    """Userbuffers TP overlap leaves about 1/TP of the forward TP traffic exposed; without it all of it is."""
    model, cluster = get_model("llama3-70b"), ClusterSpec.build(64, "h100")
    job = _job(64, gbs=128, seq=8192, tensor_model_parallel_size=8, pipeline_model_parallel_size=4,
               sequence_parallel=True)
    overlapped = predict(model, cluster, job)
    exposed = predict(model, cluster, job, options=RunOptions(tp_comm_overlap=False))
    assert exposed.breakdown_s["tp_comm"] > 3 * overlapped.breakdown_s["tp_comm"]
    assert exposed.step_time_s > overlapped.step_time_s


def test_interleaving_multiplies_blocking_pipeline_sends():
    """Narayanan et al. 2021 Sec. 2.2.2: the interleaved schedule sends VPP times as much; overlapped, most of
    it hides behind the next chunk's compute."""
    model, cluster = get_model("llama3-70b"), ClusterSpec.build(64, "h100")
    kw = dict(tensor_model_parallel_size=4, pipeline_model_parallel_size=8, sequence_parallel=True)
    blocking = RunOptions(overlap_p2p_comm=False)
    plain = predict(model, cluster, _job(64, **kw), options=blocking)
    interleaved = predict(model, cluster, _job(64, virtual_pipeline_model_parallel_size=5, **kw), options=blocking)
    assert interleaved.breakdown_s["p2p"] == pytest.approx(5 * plain.breakdown_s["p2p"], rel=1e-9)
    overlapped = predict(model, cluster, _job(64, virtual_pipeline_model_parallel_size=5, **kw))
    assert overlapped.breakdown_s["p2p"] < interleaved.breakdown_s["p2p"]


def test_forced_balanced_routing_removes_the_imbalance():
    model, cluster = get_model("qwen3-30b-a3b"), ClusterSpec.build(16, "h100")
    job = _job(16, gbs=512, expert_model_parallel_size=8)
    routed = predict(model, cluster, job)
    balanced = predict(model, cluster, job, options=RunOptions(force_balanced_routing=True))
    assert balanced.step_time_s < routed.step_time_s
    assert balanced.breakdown_s["ep_comm"] < routed.breakdown_s["ep_comm"]


def test_ep_exchange_copies_known_answer():
    """Qwen3-30B-A3B (128 experts, top-8) at EP16 over two 8-GPU nodes, derived by hand.

    alltoall: each of the 8 routed copies goes to its expert's GPU; 8 of the 16 GPUs are on the other node,
    7 are NVLink peers: 8 * 8/16 = 4 copies through the NIC, 8 * 7/16 = 3.5 over NVLink.
    hybridep: one NIC copy when the token picked any of the other node's 64 experts,
    1 - C(64,8)/C(128,8); one NVLink copy to each of the 14 GPUs (7 per node) holding at least one of its
    experts, 14 * (1 - C(120,8)/C(128,8)).
    """
    from math import comb

    from autotune.cost_terms import ep_exchange_copies
    ep, per_node = np.asarray([16.0]), np.asarray([8.0])
    nvl, nic = ep_exchange_copies(128, 8, ep, per_node, "alltoall")
    assert (nvl[0], nic[0]) == pytest.approx((3.5, 4.0), rel=1e-12)
    nvl, nic = ep_exchange_copies(128, 8, ep, per_node, "hybridep")
    assert nic[0] == pytest.approx(1 - comb(64, 8) / comb(128, 8), rel=1e-12)  # 0.9969
    assert nvl[0] == pytest.approx(14 * (1 - comb(120, 8) / comb(128, 8)), rel=1e-12)  # 5.77
    assert ep_exchange_copies(128, 8, ep, per_node, "deepep")[1][0] == pytest.approx(nic[0], rel=1e-12)


@pytest.mark.parametrize("name,gpus", [("qwen3-30b-a3b", 32), ("deepseek-v2-lite", 32)])
def test_hybridep_never_slower_than_alltoall(name, gpus):
    """Over a whole space: HybridEP's hierarchical exchange never costs more EP time than the alltoall
    dispatcher, and costs less wherever the EP group crosses nodes (fewer NIC copies)."""
    model, cluster = get_model(name), ClusterSpec.build(gpus, "h100")
    res = enumerate_space(default_space(model), model, cluster, Workload(seq_length=4096, global_batch_size=512))
    a2a = predict_batch(model, cluster, res.workload, res.knobs, options=RunOptions(moe_dispatcher="alltoall"))
    hybrid = predict_batch(model, cluster, res.workload, res.knobs, options=RunOptions(moe_dispatcher="hybridep"))
    assert np.all(hybrid["ep_comm"] <= a2a["ep_comm"] * (1 + 1e-12))
    across = res.knobs.ep * res.knobs.etp > cluster.nvlink_domain_size
    assert across.any()
    assert np.all(hybrid["ep_comm"][across] < 0.9 * a2a["ep_comm"][across])
    assert np.all(hybrid["step_time_s"][across] < a2a["step_time_s"][across])


def test_dispatcher_option_is_checked():
    with pytest.raises(ConfigError, match="moe_dispatcher must be one of alltoall, hybridep, deepep, got "
                                          "moe_dispatcher='allgather'"):
        RunOptions(moe_dispatcher="allgather")


def test_dp_collective_known_answer():
    """A 1 GB reduce-scatter over 32 ranks spaced 2 apart on 8-GPU H100 nodes (TP2's DP group on 64 GPUs),
    derived by hand: 4 members per node, 8 nodes. NVLink stage 3/4 x 1 GB / 450 GB/s = 1.67 ms; NIC stage
    7/8 x (1 GB / 4) / 50 GB/s = 4.375 ms; the slower sets the time. A flat ring through the NIC would take
    31/32 x 1 GB / 50 GB/s = 19.4 ms. With one member per node (stride 8) it is that flat ring."""
    from autotune.cost_terms import _dp_collective_s
    cluster = ClusterSpec.build(64, "h100")
    t = _dp_collective_s(np.asarray([1e9]), np.asarray([32.0]), np.asarray([2.0]), cluster)
    assert t[0] == pytest.approx(7 / 8 * 0.25e9 / 50e9, rel=1e-12)
    flat = _dp_collective_s(np.asarray([1e9]), np.asarray([8.0]), np.asarray([8.0]), cluster)
    assert flat[0] == pytest.approx(7 / 8 * 1e9 / 50e9, rel=1e-12)
    inside = _dp_collective_s(np.asarray([1e9]), np.asarray([8.0]), np.asarray([1.0]), cluster)
    assert inside[0] == pytest.approx(7 / 8 * 1e9 / 450e9, rel=1e-12)


def test_dp_traffic_leaves_the_node_once_per_node():
    """More DP members per node move less through each NIC: TP1's DP group (8 per node) reduces gradients
    faster than TP8's (1 per node) for the same per-GPU gradient volume."""
    from autotune.cost_terms import _dp_collective_s
    cluster = ClusterSpec.build(256, "h100")
    buf = np.full(4, 1e9)
    t = _dp_collective_s(buf, np.asarray([256.0, 128.0, 64.0, 32.0]), np.asarray([1.0, 2.0, 4.0, 8.0]), cluster)
    assert np.all(np.diff(t) > 0)


def test_optimizer_shards_over_dp_and_cp():
    """Megatron reduces dense gradients and shards the distributed optimizer over the DP x CP group
    (megatron/core/distributed/distributed_data_parallel.py, dp_cp_group): on 8 GPUs, CP2 x DP4 holds the same
    optimizer shard as DP8."""
    model, cluster = get_model("llama3-8b"), ClusterSpec.build(8, "h100")
    dp8 = predict(model, cluster, _job(8, gbs=128, seq=8192, use_distributed_optimizer=True))
    cp2 = predict(model, cluster, _job(8, gbs=128, seq=8192, context_parallel_size=2, use_distributed_optimizer=True))
    assert cp2.breakdown_s["optimizer"] == pytest.approx(dp8.breakdown_s["optimizer"], rel=1e-9)


def _korthikanti_22b_layer_ms(**parallel) -> float:
    """One layer of Korthikanti et al.'s 22B model (arXiv 2205.05198 Table 3: h 6144, 64 heads, TP 8, s 2048,
    micro-batch 4, A100, no flash attention in 2022): the 2-layer minus the 1-layer prediction, in ms."""
    from autotune.model_spec import ModelSpec

    times = []
    for layers in (2, 1):
        model = ModelSpec(name="gpt-22b", num_layers=layers, hidden_size=6144, ffn_hidden_size=4 * 6144,
                          num_attention_heads=64, num_query_groups=64, kv_channels=96, vocab_size=51200,
                          activation="gelu", normalization="LayerNorm", tie_embeddings=True)
        job = JobConfig(num_gpus=8, workload=Workload(seq_length=2048, global_batch_size=4),
                        parallel=ParallelConfig(tensor_model_parallel_size=8, micro_batch_size=4,
                                                use_distributed_optimizer=False, **parallel))
        est = predict(model, ClusterSpec.build(8, "a100-80gb"), job,
                      options=RunOptions(tp_comm_overlap=False, flash_attention=False))
        times.append(est.breakdown_s)
    return {k: 1e3 * (times[0][k] - times[1][k]) for k in ("compute", "recompute", "tp_comm")}


def test_selective_recompute_without_flash_attention_known_answer():
    """Korthikanti et al. 2022 Table 4 (korthikanti2022_table4.csv): selective recompute of the core attention
    adds 20.9 - 19.6 = 1.3 ms to one 22B layer at TP 8 on an A100. Without flash attention that is the s x s
    score traffic (cost.NONFLASH_*, counted by hand) plus the two batched GEMMs; tolerance 30%."""
    ms = _korthikanti_22b_layer_ms(sequence_parallel=False, recompute_granularity="selective")
    assert ms["recompute"] == pytest.approx(1.3, rel=0.30)


def test_attention_without_flash_is_slower_and_grows_with_the_square_of_the_sequence():
    model = get_model("llama3-8b")
    cluster = ClusterSpec.build(8)

    def attention_s(seq: int, flash: bool) -> float:
        job = _job(8, gbs=8, seq=seq, tensor_model_parallel_size=8, sequence_parallel=True)
        return predict(model, cluster, job, options=RunOptions(flash_attention=flash)).breakdown_s["compute"]

    # Doubling the sequence at a fixed batch of sequences doubles the tokens: linear work at most doubles, the
    # score traffic quadruples, so the step without flash attention grows faster than the one with it.
    assert attention_s(4096, flash=False) > attention_s(4096, flash=True)
    growth_plain = attention_s(8192, False) / attention_s(4096, False)
    growth_flash = attention_s(8192, True) / attention_s(4096, True)
    assert growth_plain > growth_flash and growth_plain > 2.0


def test_sequence_parallel_without_userbuffers_saves_little_known_answer():
    """Korthikanti et al. 2022 Table 4: one 22B layer at TP 8 takes 19.6 ms forward + backward, 19.0 ms with
    sequence parallelism (3% saved). SP shares the norms and residuals over the TP ranks but moves the same
    forward bytes and, without userbuffers, exposes the backward all-gather of the gradient. Tolerance: the
    layer within 10% of 19.6 ms, and SP saving under 1.5 ms (8% of the layer; the published saving is 0.6 ms)."""
    plain = sum(_korthikanti_22b_layer_ms(sequence_parallel=False).values())
    sp = sum(_korthikanti_22b_layer_ms(sequence_parallel=True).values())
    assert plain == pytest.approx(19.6, rel=0.10)
    assert 0.0 < plain - sp < 1.5


def test_sequence_parallel_without_userbuffers_exposes_the_gradient_gather():
    """Without userbuffers, SP's forward all-gather + reduce-scatter move an all-reduce's bytes, and in backward
    the all-gather of the gradient (the backward of each reduce-scatter, megatron/core/tensor_parallel/
    mappings.py) is blocking: half as much again, while the other backward collectives hide behind GEMMs
    (large GEMMs here: TP 8 inside one node)."""
    model, cluster = get_model("llama3-70b"), ClusterSpec.build(64, "h100")
    kw = dict(tensor_model_parallel_size=8, pipeline_model_parallel_size=4)
    no_ub = RunOptions(tp_comm_overlap=False)
    plain = predict(model, cluster, _job(64, gbs=128, seq=8192, sequence_parallel=False, **kw), options=no_ub)
    sp = predict(model, cluster, _job(64, gbs=128, seq=8192, sequence_parallel=True, **kw), options=no_ub)
    assert sp.breakdown_s["tp_comm"] == pytest.approx(1.5 * plain.breakdown_s["tp_comm"], rel=1e-9)


def test_scatter_gather_splits_pipeline_sends_over_tp():
    """Megatron-LM 2021-2022 (scatter_gather_tensors_in_pipeline; Narayanan et al. 2021 Sec. 4.1): without SP
    each of the TP ranks sends 1/TP of the activation to the next stage."""
    model, cluster = get_model("llama3-70b"), ClusterSpec.build(64, "h100")
    job = _job(64, tensor_model_parallel_size=4, pipeline_model_parallel_size=8, sequence_parallel=False)
    whole = predict(model, cluster, job, options=RunOptions(overlap_p2p_comm=False))
    split = predict(model, cluster, job, options=RunOptions(overlap_p2p_comm=False, p2p_scatter_gather=True))
    assert split.breakdown_s["p2p"] == pytest.approx(whole.breakdown_s["p2p"] / 4, rel=1e-9)


def test_layer_overhead_is_paid_per_layer_and_micro_batch():
    """The fixed per-layer time is paid once per layer in forward and twice in backward, for every micro-batch:
    at PP 1 without recompute the step grows by 3 x layers x micro-batches x the overhead."""
    model, cluster = get_model("llama3-8b"), ClusterSpec.build(8, "h100")
    job = _job(8, gbs=64, seq=4096)  # DP 8, micro-batch 1: 8 micro-batches
    c = load_cost_constants()
    more = CostConstants.from_dict({**c.to_dict(), "layer_overhead_s": c.layer_overhead_s + 1e-3})
    extra = predict(model, cluster, job, constants=more).breakdown_s["compute"] - predict(
        model, cluster, job, constants=c).breakdown_s["compute"]
    assert extra == pytest.approx(3 * model.num_layers * 8 * 1e-3, rel=1e-9)


def test_moe_token_work_only_charges_moe_layers():
    c = load_cost_constants()
    more = CostConstants.from_dict({**c.to_dict(), "moe_token_passes": 2 * c.moe_token_passes})
    moe, dense = get_model("qwen3-30b-a3b"), get_model("llama3-8b")
    moe_job = _job(16, gbs=512, expert_model_parallel_size=8)
    assert predict(moe, ClusterSpec.build(16, "h100"), moe_job, constants=more).step_time_s > predict(
        moe, ClusterSpec.build(16, "h100"), moe_job, constants=c).step_time_s
    dense_job = _job(8, gbs=64)
    assert predict(dense, ClusterSpec.build(8, "h100"), dense_job, constants=more).step_time_s == pytest.approx(
        predict(dense, ClusterSpec.build(8, "h100"), dense_job, constants=c).step_time_s, rel=1e-12)


def test_tp_collective_hides_only_behind_its_own_gemm():
    """Each TP collective overlaps only the GEMM it feeds or drains (the all-gather before QKV waits for nothing
    but QKV can start only when it lands), so a huge MLP cannot hide the attention side's traffic. Constants
    are set here so that QKV and the output projection (GQA, TP 8) are shorter than one collective, and FC1 and
    FC2 longer; the layer's GEMMs then outlast all of its TP traffic many times over."""
    cluster = ClusterSpec.build(8, "h100")
    c = CostConstants.from_dict({**load_cost_constants().to_dict(), "gemm_efficiency": 1.0,
                                 "gemm_memory_weight": 1.0, "layer_overhead_s": 1e-9})
    job = _job(8, gbs=8, seq=4096, tensor_model_parallel_size=8, sequence_parallel=True)
    base = get_model("llama3-8b")
    knobs = C.Knobs.batch_of(job.parallel)
    tp_comm, floors = [], []
    for ffn in (base.ffn_hidden_size, 8 * base.ffn_hidden_size):
        model = base.model_copy(update={"ffn_hidden_size": ffn})
        per_layer = step_work(model, cluster, job.workload, knobs).dense.tp_comm_s.sum(axis=0)[0]
        floors.append(2 * model.num_layers * 8 * per_layer / 8)  # fwd + bwd, 32 layers, 8 micro-batches: 1/TP each
        tp_comm.append(predict(model, cluster, job, constants=c).breakdown_s["tp_comm"])
    assert floors[0] == pytest.approx(floors[1], rel=1e-12)  # the MLP's size does not change the traffic
    assert tp_comm[1] == pytest.approx(tp_comm[0], rel=1e-9)  # ... nor what stays exposed
    assert tp_comm[1] > 2 * floors[1]  # the attention side's collectives outlast QKV and the projection


def test_more_replicas_at_a_fixed_batch_lower_per_gpu_speed():
    """Narayanan et al. 2021 (arXiv 2104.04473) Table 2, PTD rows (../shared/refdata/narayanan2021_table2.csv):
    GPT-3 175B at model-parallel size 96 and batch 1536 on 384, 768 and 1536 A100s ran at 153, 149 and 141
    TFLOP/s per GPU. Each doubling halves the micro-batches per pipeline (a larger bubble share) and widens the
    un-overlapped gradient all-reduce, so per-GPU speed must fall with the GPU count, through both terms."""
    model = get_model("gpt3-175b")
    run = RunOptions(overlap_grad_reduce=False, tp_comm_overlap=False, flash_attention=False)
    estimates = [predict(model, ClusterSpec.build(n, "a100-80gb"),
                         _job(n, gbs=1536, seq=2048, tensor_model_parallel_size=8, pipeline_model_parallel_size=12,
                              use_distributed_optimizer=False, recompute_granularity="full"), None, run)
                 for n in (384, 768, 1536)]
    speeds = [e.tokens_per_s_per_gpu for e in estimates]
    assert speeds[0] > speeds[1] > speeds[2]
    for key in ("pipeline_bubble", "dp_comm_exposed"):
        shares = [e.breakdown_s[key] / e.step_time_s for e in estimates]
        assert shares[0] < shares[1] < shares[2], key


def test_stage_times_set_the_pipeline_pace():
    """Every stage waits for the slowest each micro-batch: the per-micro-batch terms of the breakdown are the
    micro-batch count times the slowest stage's time. With an even split of Llama3 70B's 80 layers over 8
    stages (10 each) the last stage also runs the output layer and loss, so it is the slowest; moving two of
    its layers to the first stage (num_layers_in_last_pipeline_stage=8) makes it faster than the first."""
    model, cluster = get_model("llama3-70b"), ClusterSpec.build(64, "h100")
    kw = dict(tensor_model_parallel_size=4, pipeline_model_parallel_size=8, sequence_parallel=True)
    est = predict(model, cluster, _job(64, gbs=128, precision="fp8", seq=8192, **kw))
    assert est.stage_layers == {"0": 10, "1-6": 10, "7": 10}
    times = est.stage_microbatch_s
    assert times["7"] > times["0"] == pytest.approx(times["1-6"], rel=1e-12)
    per_microbatch = sum(est.breakdown_s[k] for k in ("compute", "recompute", "tp_comm", "cp_comm", "ep_comm"))
    microbatches = 128 // (64 // (4 * 8))  # DP 2, micro-batch 1
    assert per_microbatch == pytest.approx(microbatches * max(times.values()), rel=1e-9)
    moved = predict(model, cluster, _job(64, gbs=128, precision="fp8", seq=8192, num_layers_in_first_pipeline_stage=12,
                                         num_layers_in_last_pipeline_stage=8, **kw))
    assert moved.stage_layers == {"0": 12, "1-6": 10, "7": 8}
    assert moved.stage_microbatch_s["7"] < moved.stage_microbatch_s["0"]
    single = predict(model, cluster, _job(64, gbs=128, precision="fp8", seq=8192, tensor_model_parallel_size=8,
                                          context_parallel_size=2, sequence_parallel=True))
    assert single.stage_layers == {"0": 80} and len(single.stage_microbatch_s) == 1


def test_mtp_layer_runs_on_the_last_stage_as_one_more_layer_plus_its_logits():
    # DeepSeek-V3 has one MTP layer (model.mtp_num_layers = 1): Megatron builds it with the loss, as one more
    # MoE layer (plus its eh_proj and norms) followed by one more output layer and cross-entropy. We measure
    # what one more decoder layer costs on the last stage (a 62-layer copy) and what the output layer costs
    # (the last stage minus its layers), and the MTP layer must cost their sum plus the small eh_proj.
    dsv3 = get_model("deepseek-v3")
    assert dsv3.mtp_num_layers == 1
    no_mtp = dsv3.model_copy(update={"mtp_num_layers": 0})
    longer = dsv3.model_copy(update={"mtp_num_layers": 0, "num_layers": 62})
    cluster = ClusterSpec.build(16, "h100")

    def stages(model, layout):
        job = _job(16, gbs=64, pipeline_model_parallel_size=2, expert_model_parallel_size=8,
                   pipeline_model_parallel_layout=layout)
        return predict(model, cluster, job).stage_microbatch_s

    base = stages(no_mtp, "E" + "t" * 30 + "|" + "t" * 31 + "L")
    with_mtp = stages(dsv3, "E" + "t" * 30 + "|" + "t" * 31 + "mL")
    one_more = stages(longer, "E" + "t" * 30 + "|" + "t" * 32 + "L")
    assert with_mtp["0"] == pytest.approx(base["0"], rel=1e-12)  # the first stage does not see it
    layer = one_more["1"] - base["1"]
    logits = base["1"] - 31 * layer
    assert layer > 0 and logits > 0
    added = with_mtp["1"] - base["1"]
    assert layer + logits < added < 1.25 * layer + logits


def test_a_standalone_mtp_rank_is_costed_where_the_layout_puts_it():
    # Megatron lets a layout give the MTP layer the last virtual stage of a middle rank (standalone MTP):
    # then the last stage runs only the loss of the main model and that middle rank runs the MTP layer.
    dsv3 = get_model("deepseek-v3")
    cluster = ClusterSpec.build(24, "h100")
    job = _job(24, gbs=48, pipeline_model_parallel_size=3, expert_model_parallel_size=8,
               pipeline_model_parallel_layout="E" + "t" * 20 + "|" + "t" * 20 + "|" + "t" * 21 + "||m|L")
    on_middle = predict(dsv3, cluster, job).stage_microbatch_s
    job_last = _job(24, gbs=48, pipeline_model_parallel_size=3, expert_model_parallel_size=8,
                    pipeline_model_parallel_layout="E" + "t" * 20 + "|" + "t" * 20 + "|" + "t" * 21 + "||" + "|mL")
    on_last = predict(dsv3, cluster, job_last).stage_microbatch_s
    assert on_middle["1"] > on_last["1"] and on_middle["2"] < on_last["2"]
