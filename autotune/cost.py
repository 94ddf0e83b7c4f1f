"""Analytic step time and throughput of a Megatron Core training config.

`predict_batch` scores every config of an enumerated space at once (numpy over `constraints.Knobs`);
`predict` scores one `JobConfig` through the same code (a length-1 batch, with the per-stage layer
counts taken from pipeline.layers_per_chunk) and returns a frozen `CostEstimate`.

Model (the physical work comes from cost_terms.py; here it becomes seconds):
- GEMMs: a roofline per GEMM, the longer of FLOPs / (peak of the precision x efficiency) and operand
  bytes / HBM bandwidth x weight, so only small shards (large TP/EP/ETP, few tokens per expert) turn
  memory-bound and a big GEMM gains nothing from a larger micro-batch. fp8 adds Transformer Engine's
  quantised copies of the GEMM inputs. Core attention is flash attention in bf16 at its own
  efficiency, lower on short key ranges (CP ring steps); backward = 2x GEMMs and 2.5x attention
  (flash-attention backward runs five GEMMs to the forward's two).
- Streaming memory-bound work (norms, residuals, activation functions, cross-entropy) at HBM bandwidth,
  counted, not scaled. MoE token handling (permutation, the routed experts' activation: gathers and
  scatters by index) at HBM bandwidth times a fitted factor.
- A fitted fixed time per layer and micro-batch (kernel launches and partial last waves; twice in
  backward), which no FLOP or byte count sees and which weighs most on narrow layers and small shards.
- TP collectives (all-reduce, or all-gather + reduce-scatter with SP; same bytes), NVLink inside the
  NVLink domain, each overlapping only its own GEMM. Backward ones overlap the weight-gradient GEMM;
  forward ones are exposed unless TP comm overlap (userbuffers) pipelines them in TP chunks. SP without
  userbuffers also exposes the backward all-gather of the gradient (half the forward's bytes). No fitted
  constant.
- CP ring exchange of K,V, hidden behind the attention compute where it can be, plus each ring step's
  fp32 output correction.
- EP dispatch + combine, NVLink / NIC by placement: tokens x top-k x hidden with the alltoall dispatcher,
  one copy per destination node over the NIC and per destination GPU over NVLink with the flex dispatcher's
  HybridEP / DeepEP backends (cost_terms.ep_exchange_copies); times a fitted dispatcher factor (at least 1:
  the exchange is not overlapped) and a load-imbalance factor (the busiest of EP ranks sets the pace).
- Recompute: selective re-runs core attention forward, full re-runs the whole layer forward.
- Pipeline: m micro-batches at the pace of the slowest stage, plus the fill/drain bubble
  (PP-1)/VPP x the mean stage time (Narayanan et al. 2021, arXiv 2104.04473 Sec. 2.2: bubble
  fraction (p-1)/m for 1F1B, (p-1)/(v.m) interleaved), plus the activation sends (VPP of them per
  micro-batch with interleaving, overlapped with compute there unless overlap_p2p_comm is off; split over
  the TP ranks with SP, or with Megatron-LM 2021-2022's scatter-gather).
- DP: gradient reduce-scatter + parameter all-gather (distributed optimizer) or all-reduce, over DP x CP
  for dense and EDP for expert params, in the gradient dtype of the run, hierarchically: NVLink among the
  group's members on a node, the NIC for the 1/L share each of the L members exchanges with other nodes
  (cost_terms._dp_collective_s); overlapped with the last
  micro-batch's backward / the first micro-batch's forward, only the exposed part counted.
- Optimizer: Adam over the local shard, memory-bound.

The Megatron options the knobs do not carry (overlaps, gradient dtype, forced balanced routing, MoE token
dispatcher) come in a `RunOptions`.

Throughput is tokens/s/GPU; model TFLOP/s use flops.py (causal attention halved, no recompute).
MFU is model TFLOP/s over the dense peak of the training precision.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np

from autotune import constraints as C
from autotune.cluster import ClusterSpec, GPUSpec
from autotune.config import JobConfig, Workload
from autotune.cost_terms import MOE_DISPATCHERS, LayerWork, StepWork, step_work
from autotune.errors import ConfigError
from autotune.flops import model_flops_per_iteration
from autotune.model_spec import ModelSpec
from autotune.memory_layout import chunk_layers
from autotune.pipeline import layers_per_chunk

BREAKDOWN_KEYS = ("compute", "recompute", "tp_comm", "cp_comm", "ep_comm", "pipeline_bubble", "p2p",
                  "dp_comm_exposed", "optimizer")

# Flash attention runs below its peak on short key ranges (tile start-up, the masked diagonal tiles of a
# causal mask): in FlashAttention-2's benchmarks (Dao 2023, arXiv 2307.08691, Figs. 4-6) causal fwd+bwd
# throughput climbs with sequence length from 512 and levels off by 8k. L / (L + 200) is our approximation
# of that curve (set by hand, not fitted). It matters for CP, whose ring steps each see s/CP keys.
FLASH_HALF_EFFICIENCY_KEYS = 200.0
# Attention without flash attention (Megatron-LM 2021-2022 CoreAttention, megatron/model/transformer.py):
# the QK^T and PV batched GEMMs over the full s x s square (the causal mask is applied, not skipped), and
# fp16/bf16 traffic per score element. Forward: baddbmm writes the scores (2 bytes), the fused scale-mask-
# softmax reads and writes them (4), dropout reads them and writes probabilities and a 1-byte mask (5), the
# PV bmm reads the probabilities (2): 13 bytes. Backward: the PV grad reads the probabilities and writes
# their gradient (4), dropout backward reads mask and gradient and writes (5), softmax backward reads output
# and gradient and writes (6), the QK^T grads read the score gradient twice (4): 19 bytes. Counted by hand,
# not fitted; korthikanti2022_table4.csv (per-layer times on A100) checks them in the throughput benchmark.
NONFLASH_FWD_BYTES_PER_SCORE = 13.0
NONFLASH_BWD_BYTES_PER_SCORE = 19.0


@dataclass(frozen=True, kw_only=True)
class CostConstants:
    """The fitted efficiencies (autotune/data/cost_constants.json; refit by benchmarks/accuracy_throughput.py)."""

    gemm_efficiency: float  # fraction of the bf16 dense peak a large bf16 GEMM reaches
    fp8_gemm_efficiency: float  # fraction of the fp8 dense peak a large fp8 GEMM reaches
    gemm_memory_weight: float  # weight of the GEMM roofline memory term (small-shard penalty)
    attention_efficiency: float  # fraction of the bf16 peak flash attention reaches
    layer_overhead_s: float  # fixed time of one layer's forward per micro-batch (kernel launches and tails); 2x backward
    moe_token_passes: float  # multiplier on the MoE token-handling bytes (permutation, routed experts' activation)
    moe_dispatch_overhead: float  # multiplier on EP all-to-all time (dispatcher overhead; fitted >= 1)
    expert_load_cv: float  # coefficient of variation of one routed expert's token load (dropless routing)
    network_efficiency: float  # achieved fraction of the nominal NVLink / NIC bandwidth

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "CostConstants":
        names = {f.name for f in fields(cls)}
        unknown, missing = set(data) - names, names - set(data)
        if unknown or missing:
            raise ConfigError(f"cost constants: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}; "
                              f"expected exactly {sorted(names)}")
        values = {k: float(data[k]) for k in names}
        bad = [k for k, v in values.items() if not v > 0]
        if bad:
            raise ConfigError(f"cost constants must be positive, got {', '.join(f'{k}={values[k]}' for k in bad)}")
        return cls(**values)


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Megatron options of a run that the parallel knobs do not carry but its step time depends on.

    By default every overlap is on, as in NVIDIA's tuned perf recipes, and gradients are reduced in
    fp32, as Megatron-LM does with --bf16.
    """

    overlap_grad_reduce: bool = True  # DDP overlaps grad reduce-scatter / param all-gather (False: 'local' DDP)
    grad_reduce_in_fp32: bool = True  # DDP reduces gradients in fp32 (4 bytes) or in bf16 (2 bytes)
    tp_comm_overlap: bool = True  # Transformer Engine userbuffers overlap TP collectives with GEMMs
    overlap_p2p_comm: bool = True  # the interleaved schedule's pipeline sends overlap compute
    # Megatron-LM 2021-2022 (scatter_gather_tensors_in_pipeline, on by default since 2021-02): without SP each
    # TP rank sends only its 1/TP share of the activation to the next stage, which all-gathers it over NVLink
    # (Narayanan et al. 2021, arXiv 2104.04473 Sec. 4.1). Megatron Core has no such option (with SP the
    # activation is already split).
    p2p_scatter_gather: bool = False
    # Fused flash attention (TE / FlashAttention, Megatron since 2023). False: the s x s scores are formed in
    # memory (Megatron-LM 2021-2022: baddbmm + FusedScaleMaskSoftmax + dropout + bmm), see NONFLASH_*.
    flash_attention: bool = True
    force_balanced_routing: bool = False  # moe_router_force_load_balancing (benchmark runs): no expert imbalance
    # MoE token exchange: "alltoall" (moe_token_dispatcher_type='alltoall', what Megatron-Bridge's MoE model
    # providers set), or moe_token_dispatcher_type='flex' with moe_flex_dispatcher_backend='hybridep' or
    # 'deepep' (hierarchical: one NIC crossing per destination node). Megatron-Core's own default,
    # 'allgather', is not modelled.
    moe_dispatcher: str = "alltoall"

    def __post_init__(self) -> None:
        if self.moe_dispatcher not in MOE_DISPATCHERS:
            raise ConfigError(f"moe_dispatcher must be one of {', '.join(MOE_DISPATCHERS)}, "
                              f"got moe_dispatcher={self.moe_dispatcher!r}")


def _packaged_constants() -> CostConstants:
    from autotune.cost_constants import load_cost_constants  # the one place that reads the data file
    return load_cost_constants()


@dataclass(frozen=True, kw_only=True)
class CostEstimate:
    """Predicted speed of one config."""

    step_time_s: float
    tokens_per_s_per_gpu: float
    model_tflops_per_gpu: float  # flops.py convention: causal attention halved, no recompute
    mfu: float  # model TFLOP/s / dense peak of the training precision
    breakdown_s: dict[str, float] = field(default_factory=dict)  # where the step time goes (sums to it)
    # One micro-batch's forward + backward on each pipeline stage (recompute and TP/CP/EP time included), keyed
    # by stage: "0", the slowest middle stage as "1-6" on 8 stages, and the last. The slowest sets the pace.
    stage_microbatch_s: dict[str, float] = field(default_factory=dict)
    stage_layers: dict[str, int] = field(default_factory=dict)  # decoder layers of each stage of stage_microbatch_s

    def to_dict(self) -> dict:
        return asdict(self)


def layer_compute_s(w: LayerWork, gpu: GPUSpec, precision: str, c: CostConstants,
                    options: RunOptions = RunOptions()) -> dict[str, np.ndarray]:
    """Seconds of one decoder layer's compute for one micro-batch on one GPU, no communication.

    Keys: each_gemm (GEMMs, configs) and gemm (their sum with the FP8 casts), attention_fwd, attention_bwd,
    elementwise and fixed (each per pass); forward and backward are the pass totals combine() uses; imbalance
    is the routed experts' load factor (the busiest EP rank's), which the EP exchange pays too.
    """
    fp8 = precision == "fp8"
    peak_bf16 = gpu.bf16_tflops * 1e12
    peak_lin = (gpu.fp8_tflops if fp8 and gpu.fp8_tflops else gpu.bf16_tflops) * 1e12
    eff_lin = c.fp8_gemm_efficiency if fp8 else c.gemm_efficiency
    hbm = gpu.hbm_bandwidth_gbps * 1e9
    # Roofline: a GEMM takes the longer of its math and its operand traffic, so only small shards
    # (large TP/EP/ETP, few tokens per expert) turn memory-bound; a big GEMM gains nothing from a
    # larger micro-batch.
    per_gemm = np.maximum(w.linear_flops / (peak_lin * eff_lin), c.gemm_memory_weight * w.linear_bytes / hbm)
    imbalance = 1.0 + (0.0 if options.force_balanced_routing else c.expert_load_cv) * w.imbalance_spread
    each_gemm = np.where(w.routed_gemms[:, None], per_gemm * imbalance, per_gemm)
    gemm = each_gemm.sum(axis=0) + w.cast_bytes / hbm
    keys = w.attention_key_len
    if options.flash_attention:
        attn = w.attention_flops / (peak_bf16 * c.attention_efficiency * keys / (keys + FLASH_HALF_EFFICIENCY_KEYS))
        attn_b = 2.5 * attn
    else:
        square_gemm = 2.0 * w.attention_flops / (peak_bf16 * c.gemm_efficiency)  # full square: twice the causal half
        attn = square_gemm + NONFLASH_FWD_BYTES_PER_SCORE * w.attention_scores / hbm
        attn_b = 2.0 * square_gemm + NONFLASH_BWD_BYTES_PER_SCORE * w.attention_scores / hbm
    elem = (w.elementwise_bytes + c.moe_token_passes * w.moe_token_bytes + w.cp_correction_bytes) / hbm
    # A layer runs a few dozen kernels per pass (norms, GEMMs, casts and amax updates, attention, activation,
    # bias-dropout-add), each with a launch and a partial last wave that no byte or FLOP count sees; this
    # time does not shrink with the shard, so it weighs most on narrow models and small micro-batches.
    # Backward runs about twice the kernels.
    fixed = np.full_like(gemm, c.layer_overhead_s)
    return {"each_gemm": each_gemm, "gemm": gemm, "attention_fwd": attn, "attention_bwd": attn_b,
            "elementwise": elem, "fixed": fixed, "imbalance": imbalance,
            "forward": gemm + attn + elem + fixed, "backward": 2 * gemm + attn_b + 2 * (elem + fixed)}


def output_layer_s(work: StepWork, gpu: GPUSpec, c: CostConstants) -> tuple[np.ndarray, np.ndarray]:
    """Seconds the last stage spends per micro-batch on the output layer: its three GEMMs (forward, input and
    weight gradients; bf16 even in an FP8 run, as Megatron keeps the output layer out of FP8) on the GEMM
    roofline, and the fp32 vocabulary-parallel cross-entropy passes at HBM bandwidth."""
    hbm = gpu.hbm_bandwidth_gbps * 1e9
    gemms = 3 * np.maximum(work.logits_flops / (gpu.bf16_tflops * 1e12 * c.gemm_efficiency),
                           c.gemm_memory_weight * work.logits_bytes / hbm)
    return gemms, work.loss_bytes / hbm


def combine(work: StepWork, model: ModelSpec, cluster: ClusterSpec, workload: Workload,
            c: CostConstants, options: RunOptions = RunOptions()) -> dict[str, np.ndarray]:
    """Seconds from physical work: step_time_s and its breakdown, one array entry per config."""
    gpu = cluster.gpu
    hbm = gpu.hbm_bandwidth_gbps * 1e9
    net = c.network_efficiency

    def layer(w):
        parts = layer_compute_s(w, gpu, workload.precision, c, options)
        each_gemm, imbalance = parts["each_gemm"], parts["imbalance"]
        attn, attn_b = parts["attention_fwd"], parts["attention_bwd"]
        # TP collectives, each hidden only behind the GEMM it feeds or drains (a collective and its GEMM
        # depend on each other, so the attention side's cannot hide behind the MLP's GEMMs). Backward:
        # Megatron overlaps the input-gradient all-reduce / reduce-scatter with the weight-gradient GEMM
        # (megatron/core/tensor_parallel/layers.py, LinearWithGradAccumulationAndAsyncCommunication), so only
        # what outlasts that GEMM is exposed. Forward: Transformer Engine's userbuffers overlap
        # (tp_comm_overlap) splits each GEMM into TP chunks and moves chunk i+1 while chunk i computes, leaving
        # the first chunk's transfer (and any transfer that outlasts its GEMM) exposed; without it the forward
        # collectives are all exposed.
        # Userbuffers overlap works on SP's all-gather / reduce-scatter only (Megatron-LM validate_args:
        # --tp-comm-overlap needs --sequence-parallel), so a TP > 1 config without SP gets no overlap.
        # SP without userbuffers moves more in backward than the all-reduces it replaces: the column-parallel
        # GEMMs re-gather their sequence-split input for the weight gradient (hidden behind the input-gradient
        # GEMM) and reduce-scatter the input gradient (behind the weight-gradient GEMM), both asynchronous
        # (layers.py, LinearWithGradAccumulationAndAsyncCommunication.backward), while the backward of each
        # reduce-scatter is a blocking all-gather of the gradient (mappings.py,
        # _ReduceScatterToSequenceParallelRegion.backward): half of the forward's bytes, exposed.
        tp_each = w.tp_comm_s / net
        tp_all = tp_each.sum(axis=0)
        tp_chunked = tp_all / w.tp + np.maximum(tp_each * (w.tp - 1) / w.tp - each_gemm, 0.0).sum(axis=0)
        ub = options.tp_comm_overlap & work.sequence_parallel
        tp_f = np.where(ub, tp_chunked, tp_all)
        tp_b_plain = np.maximum(tp_each - each_gemm, 0.0).sum(axis=0)
        tp_b = np.where(ub, tp_chunked, np.where(work.sequence_parallel, tp_all / 2 + tp_b_plain, tp_b_plain))
        # EP all-to-all: the NVLink and NIC parts run at once; the slower sets the time.
        ep = c.moe_dispatch_overhead * imbalance * np.maximum(w.ep_nvlink_s, w.ep_internode_s) / net
        cp_f = np.maximum(w.cp_link_s / net - attn, 0.0)
        cp_b = np.maximum(2 * w.cp_link_s / net - attn_b, 0.0)
        compute_f, compute_b = parts["forward"], parts["backward"]
        # Full recompute re-runs the forward: its compute here, its TP / EP time under those keys.
        recompute = np.where(work.recompute == 2, compute_f + cp_f, np.where(work.recompute == 1, attn, 0.0))
        return {"compute": compute_f + compute_b, "recompute": recompute, "tp_comm": tp_f + tp_b + np.where(
            work.recompute == 2, tp_f, 0.0), "cp_comm": cp_f + cp_b, "ep_comm": 2 * ep + np.where(
            work.recompute == 2, ep, 0.0)}

    dense, moe = layer(work.dense), layer(work.moe)
    mtp = layer(work.mtp) if work.mtp is not None else None
    logits = sum(output_layer_s(work, gpu, c))

    def stage(n_dense, n_moe, with_logits, with_mtp):
        parts = {key: n_dense * dense[key] + n_moe * moe[key] for key in dense}
        if mtp is not None:  # each MTP layer, then its own output layer + loss
            parts = {key: parts[key] + np.where(with_mtp, work.mtp_layers * mtp[key], 0.0) for key in parts}
        logit_passes = np.where(with_logits, 1, 0) + np.where(with_mtp, work.mtp_layers, 0)
        parts["compute"] = parts["compute"] + logit_passes * logits
        return parts

    pp = work.pp
    first_dense = work.dense_on_first
    at = work.mtp_stage
    stages = [
        stage(first_dense, work.layers_first - first_dense, pp == 1, (pp == 1) | (at == 0)),
        stage(0.0, work.layers_middle, False, at == 1),
        stage(0.0, work.layers_last, True, at == 2),
    ]
    if not work.moe_model:
        stages[0] = stage(work.layers_first, 0.0, pp == 1, (pp == 1) | (at == 0))
    totals = [sum(s.values()) for s in stages]
    totals[1] = np.where(pp > 2, totals[1], 0.0)
    totals[2] = np.where(pp > 1, totals[2], 0.0)
    t = np.stack(totals)
    out_stages = {"stage_first_s": totals[0], "stage_middle_s": totals[1], "stage_last_s": totals[2]}
    slowest = np.argmax(t, axis=0)
    t_max = np.take_along_axis(t, slowest[None], axis=0)[0]
    middle_total = (work.num_layers - work.layers_first - work.layers_last) * np.where(
        work.layers_middle > 0, totals[1] / np.maximum(work.layers_middle, 1), 0.0)
    t_sum = totals[0] + totals[2] + np.where(pp > 2, middle_total, 0.0)
    m = work.num_microbatches
    bubble = (pp - 1) / work.vpp * t_sum / pp

    # DP overlap windows: the last micro-batch's backward and the first one's forward on the slowest stage.
    bwd_share = 2.0 / 3.0 if options.overlap_grad_reduce else 0.0
    fwd_share = 1.0 / 3.0 if options.overlap_grad_reduce else 0.0
    rs = np.maximum(work.dp_reduce_link_s / net - bwd_share * t_max, 0.0)
    ag = np.maximum(work.dp_gather_link_s / net - fwd_share * t_max, 0.0)
    out = {key: m * np.choose(slowest, [s[key] for s in stages]) for key in stages[0]}
    out["pipeline_bubble"] = bubble
    # Point-to-point sends: with VPP chunks a micro-batch crosses VPP chunk boundaries per GPU in each
    # direction, so the interleaved schedule sends VPP times as often (Narayanan et al. 2021, arXiv
    # 2104.04473 Sec. 2.2.2: "the amount of communication also increases by v"), but with overlap_p2p_comm
    # (megatron/core/model_parallel_config.py; Megatron-LM turns it on unless --no-overlap-p2p-communication)
    # the interleaved schedule posts those sends alongside the next chunk's compute, so only what outlasts
    # one chunk's forward is exposed. 1F1B sends, and all sends without that option, are blocking.
    send = work.p2p_link_s / net
    if options.p2p_scatter_gather:
        send = np.where(work.sequence_parallel, send, send / work.dense.tp)
    chunk_fwd = t_max / (3 * work.vpp)
    overlapped = (work.vpp > 1) & options.overlap_p2p_comm
    out["p2p"] = 2 * m * np.where(overlapped, work.vpp * np.maximum(send - chunk_fwd, 0.0), work.vpp * send)
    out["dp_comm_exposed"] = rs + ag
    out["optimizer"] = work.optimizer_bytes / hbm
    out["step_time_s"] = sum(out[k] for k in BREAKDOWN_KEYS)
    return out | out_stages


def _finish(out: dict[str, np.ndarray], model: ModelSpec, cluster: ClusterSpec,
            workload: Workload) -> dict[str, np.ndarray]:
    n = cluster.num_gpus
    step = out["step_time_s"]
    tokens = workload.global_batch_size * workload.seq_length
    flops = model_flops_per_iteration(model, workload.seq_length, workload.global_batch_size)
    peak = (cluster.gpu.fp8_tflops if workload.precision == "fp8" and cluster.gpu.fp8_tflops
            else cluster.gpu.bf16_tflops)
    out["tokens_per_s_per_gpu"] = tokens / (step * n)
    out["model_tflops_per_gpu"] = flops / (step * n) / 1e12
    out["mfu"] = out["model_tflops_per_gpu"] / peak
    return out


def predict_batch(model: ModelSpec, cluster: ClusterSpec, workload: Workload, knobs: C.Knobs,
                  constants: CostConstants | None = None, options: RunOptions = RunOptions()) -> dict[str, np.ndarray]:
    """Predicted step_time_s, tokens_per_s_per_gpu, model_tflops_per_gpu, mfu and the breakdown keys.

    `knobs` holds equal-length arrays (a SpaceResult's feasible configs); configs must be feasible.
    """
    c = constants or _packaged_constants()
    work = step_work(model, cluster, workload, knobs, grad_reduce_in_fp32=options.grad_reduce_in_fp32,
                     moe_dispatcher=options.moe_dispatcher)
    return _finish(combine(work, model, cluster, workload, c, options), model, cluster, workload)


def predict(model: ModelSpec, cluster: ClusterSpec, job: JobConfig, constants: CostConstants | None = None,
            options: RunOptions = RunOptions()) -> CostEstimate:
    """One config, through the same arithmetic as predict_batch, with Megatron's real stage layer counts."""
    p = job.parallel
    knobs = C.Knobs.batch_of(p)
    per_stage = [sum(chunks) for chunks in layers_per_chunk(model.num_layers, p)]
    middle = max(per_stage[1:-1]) if len(per_stage) > 2 else per_stage[0]
    # A layout may put the MTP layers on another rank than the last (Megatron's standalone MTP); on a middle
    # rank, that rank is the middle stage combine() sees.
    pp = len(per_stage)
    mtp_rank = pp - 1
    if model.mtp_num_layers:
        mtp_rank = int(np.argmax(chunk_layers(model.num_layers, model.num_dense_layers, p,
                                              model.mtp_num_layers).mtp.sum(axis=1)))
        if 0 < mtp_rank < pp - 1:
            middle = per_stage[mtp_rank]
    mtp_stage = 2 if mtp_rank == pp - 1 else (0 if mtp_rank == 0 else 1)
    stage_layers = (np.asarray([float(per_stage[0])]), np.asarray([float(middle)]),
                    np.asarray([float(per_stage[-1])]))
    c = constants or _packaged_constants()
    work = step_work(model, cluster, job.workload, knobs, stage_layers=stage_layers,
                     grad_reduce_in_fp32=options.grad_reduce_in_fp32, moe_dispatcher=options.moe_dispatcher,
                     mtp_stage=mtp_stage)
    out = _finish(combine(work, model, cluster, job.workload, c, options), model, cluster, job.workload)
    stages = [("0", "stage_first_s", per_stage[0])]
    if pp > 2:
        stages.append((f"1-{pp - 2}" if pp > 3 else "1", "stage_middle_s", middle))
    if pp > 1:
        stages.append((str(pp - 1), "stage_last_s", per_stage[-1]))
    return CostEstimate(
        step_time_s=float(out["step_time_s"][0]), tokens_per_s_per_gpu=float(out["tokens_per_s_per_gpu"][0]),
        model_tflops_per_gpu=float(out["model_tflops_per_gpu"][0]), mfu=float(out["mfu"][0]),
        breakdown_s={k: float(out[k][0]) for k in BREAKDOWN_KEYS},
        stage_microbatch_s={name: float(out[key][0]) for name, key, _ in stages},
        stage_layers={name: int(layers) for name, _, layers in stages},
    )
