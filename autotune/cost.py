"""Analytic step time and throughput of a Megatron Core training config.

`predict_batch` scores every config of an enumerated space at once (numpy over `constraints.Knobs`);
`predict` scores one `JobConfig` through the same code (a length-1 batch, with the per-stage layer
counts taken from pipeline.layers_per_chunk) and returns a frozen `CostEstimate`.

Model (the physical work comes from cost_terms.py; here it becomes seconds):
- GEMMs: FLOPs / (peak of the precision x efficiency) + a roofline memory term (bytes / HBM
  bandwidth x weight), so the small shards of a large TP/EP/ETP or small micro-batch run less
  efficiently. Core attention is flash attention in bf16 at its own efficiency; backward = 2x GEMMs
  and 2.5x attention (flash-attention backward runs five GEMMs to the forward's two).
- Memory-bound work (norms, activations, MoE permutation, cross-entropy) at HBM bandwidth.
- TP collectives (all-reduce, or all-gather + reduce-scatter with SP; same bytes) forward and
  backward, NVLink inside the NVLink domain, only a fitted exposed fraction counted (TP overlap).
- CP ring exchange of K,V, hidden behind the attention compute where it can be.
- EP all-to-all dispatch + combine of tokens x top-k x hidden, NVLink / NIC by placement, times a
  fitted factor for load imbalance and dispatcher overhead.
- Recompute: selective re-runs core attention forward, full re-runs the whole layer forward.
- Pipeline: m micro-batches at the pace of the slowest stage, plus the fill/drain bubble
  (PP-1)/VPP x the mean stage time (Narayanan et al. 2021, arXiv 2104.04473 Sec. 2.2: bubble
  fraction (p-1)/m for 1F1B, (p-1)/(v.m) interleaved), plus the activation sends.
- DP: gradient reduce-scatter + parameter all-gather (distributed optimizer) or all-reduce, over DP
  for dense and EDP for expert params; overlapped with the last micro-batch's backward / the first
  micro-batch's forward, only the exposed part counted.
- Optimizer: Adam over the local shard, memory-bound.

Throughput is tokens/s/GPU; model TFLOP/s use flops.py (causal attention halved, no recompute).
MFU is model TFLOP/s over the dense peak of the training precision.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np

from autotune import constraints as C
from autotune.cluster import ClusterSpec
from autotune.config import JobConfig, Workload
from autotune.cost_terms import StepWork, step_work
from autotune.errors import ConfigError
from autotune.flops import model_flops_per_iteration
from autotune.model_spec import ModelSpec
from autotune.pipeline import layers_per_chunk

BREAKDOWN_KEYS = ("compute", "recompute", "tp_comm", "cp_comm", "ep_comm", "pipeline_bubble", "p2p",
                  "dp_comm_exposed", "optimizer")


@dataclass(frozen=True, kw_only=True)
class CostConstants:
    """The fitted efficiencies (autotune/data/cost_constants.json; refit by benchmarks/accuracy_throughput.py)."""

    gemm_efficiency: float  # fraction of the bf16 dense peak a large bf16 GEMM reaches
    fp8_gemm_efficiency: float  # fraction of the fp8 dense peak a large fp8 GEMM reaches
    gemm_memory_weight: float  # weight of the GEMM roofline memory term (small-shard penalty)
    attention_efficiency: float  # fraction of the bf16 peak flash attention reaches
    elementwise_passes: float  # multiplier on the estimated memory-bound bytes per layer
    tp_comm_exposed: float  # fraction of TP/ETP collective time not hidden by overlap
    moe_dispatch_overhead: float  # multiplier on EP all-to-all time: imbalance raises it, overlap lowers it
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

    def to_dict(self) -> dict:
        return asdict(self)


def combine(work: StepWork, model: ModelSpec, cluster: ClusterSpec, workload: Workload,
            c: CostConstants, overlap_grad_reduce: bool = True) -> dict[str, np.ndarray]:
    """Seconds from physical work: step_time_s and its breakdown, one array entry per config."""
    gpu = cluster.gpu
    fp8 = workload.precision == "fp8"
    peak_bf16 = gpu.bf16_tflops * 1e12
    peak_lin = (gpu.fp8_tflops if fp8 and gpu.fp8_tflops else gpu.bf16_tflops) * 1e12
    eff_lin = c.fp8_gemm_efficiency if fp8 else c.gemm_efficiency
    hbm = gpu.hbm_bandwidth_gbps * 1e9
    net = c.network_efficiency

    def layer(w):
        gemm = w.linear_flops / (peak_lin * eff_lin) + c.gemm_memory_weight * w.linear_bytes / hbm
        attn = w.attention_flops / (peak_bf16 * c.attention_efficiency)
        elem = c.elementwise_passes * w.elementwise_bytes / hbm
        tp = c.tp_comm_exposed * w.tp_link_s / net
        ep = c.moe_dispatch_overhead * w.ep_link_s / net
        cp_f = np.maximum(w.cp_link_s / net - attn, 0.0)
        cp_b = np.maximum(2 * w.cp_link_s / net - 2.5 * attn, 0.0)
        compute_f, compute_b = gemm + attn + elem, 2 * gemm + 2.5 * attn + 2 * elem
        fwd = compute_f + tp + ep + cp_f
        recompute = np.where(work.recompute == 2, fwd, np.where(work.recompute == 1, attn, 0.0))
        return {"compute": compute_f + compute_b, "recompute": recompute, "tp_comm": 2 * tp + np.where(
            work.recompute == 2, tp, 0.0), "cp_comm": cp_f + cp_b, "ep_comm": 2 * ep + np.where(
            work.recompute == 2, ep, 0.0)}

    dense, moe = layer(work.dense), layer(work.moe)
    logits = 3 * (work.logits_flops / (peak_bf16 * c.gemm_efficiency) + c.gemm_memory_weight * work.logits_bytes
                  / hbm) + c.elementwise_passes * work.loss_bytes / hbm

    def stage(n_dense, n_moe, with_logits):
        parts = {key: n_dense * dense[key] + n_moe * moe[key] for key in dense}
        parts["compute"] = parts["compute"] + np.where(with_logits, logits, 0.0)
        return parts

    pp = work.pp
    first_dense = work.dense_on_first
    stages = [
        stage(first_dense, work.layers_first - first_dense, pp == 1),
        stage(0.0, work.layers_middle, False),
        stage(0.0, work.layers_last, True),
    ]
    if not work.moe_model:
        stages[0] = stage(work.layers_first, 0.0, pp == 1)
    totals = [sum(s.values()) for s in stages]
    totals[1] = np.where(pp > 2, totals[1], 0.0)
    totals[2] = np.where(pp > 1, totals[2], 0.0)
    t = np.stack(totals)
    slowest = np.argmax(t, axis=0)
    t_max = np.take_along_axis(t, slowest[None], axis=0)[0]
    middle_total = (work.num_layers - work.layers_first - work.layers_last) * np.where(
        work.layers_middle > 0, totals[1] / np.maximum(work.layers_middle, 1), 0.0)
    t_sum = totals[0] + totals[2] + np.where(pp > 2, middle_total, 0.0)
    m = work.num_microbatches
    bubble = (pp - 1) / work.vpp * t_sum / pp

    # DP overlap windows: the last micro-batch's backward and the first one's forward on the slowest stage.
    bwd_share = 2.0 / 3.0 if overlap_grad_reduce else 0.0
    fwd_share = 1.0 / 3.0 if overlap_grad_reduce else 0.0
    rs = np.maximum(work.dp_reduce_link_s / net - bwd_share * t_max, 0.0)
    ag = np.maximum(work.dp_gather_link_s / net - fwd_share * t_max, 0.0)
    out = {key: m * np.choose(slowest, [s[key] for s in stages]) for key in stages[0]}
    out["pipeline_bubble"] = bubble
    out["p2p"] = 2 * m * work.p2p_link_s / net
    out["dp_comm_exposed"] = rs + ag
    out["optimizer"] = work.optimizer_bytes / hbm
    out["step_time_s"] = sum(out[k] for k in BREAKDOWN_KEYS)
    return out


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
                  constants: CostConstants | None = None, overlap_grad_reduce: bool = True) -> dict[str, np.ndarray]:
    """Predicted step_time_s, tokens_per_s_per_gpu, model_tflops_per_gpu, mfu and the breakdown keys.

    `knobs` holds equal-length arrays (a SpaceResult's feasible configs); configs must be feasible.
    `overlap_grad_reduce=False` counts all DP communication as exposed (Megatron's 'local' DDP).
    """
    c = constants or _packaged_constants()
    work = step_work(model, cluster, workload, knobs)
    return _finish(combine(work, model, cluster, workload, c, overlap_grad_reduce), model, cluster, workload)


def predict(model: ModelSpec, cluster: ClusterSpec, job: JobConfig, constants: CostConstants | None = None,
            overlap_grad_reduce: bool = True) -> CostEstimate:
    """One config, through the same arithmetic as predict_batch, with Megatron's real stage layer counts."""
    p = job.parallel
    knobs = C.Knobs(**{k: np.asarray([v]) for k, v in vars(C.Knobs.of(p)).items()})
    per_stage = [sum(chunks) for chunks in layers_per_chunk(model.num_layers, p)]
    middle = max(per_stage[1:-1]) if len(per_stage) > 2 else per_stage[0]
    stage_layers = (np.asarray([float(per_stage[0])]), np.asarray([float(middle)]),
                    np.asarray([float(per_stage[-1])]))
    c = constants or _packaged_constants()
    work = step_work(model, cluster, job.workload, knobs, stage_layers=stage_layers)
    out = _finish(combine(work, model, cluster, job.workload, c, overlap_grad_reduce), model, cluster, job.workload)
    return CostEstimate(
        step_time_s=float(out["step_time_s"][0]), tokens_per_s_per_gpu=float(out["tokens_per_s_per_gpu"][0]),
        model_tflops_per_gpu=float(out["model_tflops_per_gpu"][0]), mfu=float(out["mfu"][0]),
        breakdown_s={k: float(out[k][0]) for k in BREAKDOWN_KEYS},
    )
