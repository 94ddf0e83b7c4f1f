"""Analytic per-GPU memory: weights, gradients, optimizer state, activations and named overheads.

For every pipeline stage we estimate the most loaded GPU of that stage (all GPUs of a stage hold the
same shards). Pure: numpy only, no torch, no I/O.

Weights and optimizer follow what Megatron Core 0.16.1 allocates (checked parameter-for-parameter
against real GPTModel chunks in tests/test_memory_megatron.py):
- bf16 weights; TP shards attention projections, dense MLPs and shared experts; EP x ETP shards the
  routed experts; norms and the router are replicated; MLA down-projections are replicated (TE spec:
  TELinear parallel_mode='duplicated', multi_latent_attention.py);
- the vocabulary is padded to a multiple of 128 * TP (Megatron-LM make_vocab_size_divisible_by=128);
  the embedding sits on the first stage, the output layer and final norm on the last; with tied
  embeddings and PP > 1 the last stage keeps its own copy of the word embeddings
  (language_module.py::setup_embeddings_and_output_layer);
- fp32 main gradients (DDP grad buffer, not sharded); fp32 master weights + Adam m and v
  (12 bytes/param), with the distributed optimizer split over DP x CP for dense params and over the
  expert-DP group for routed experts (distributed_data_parallel.py uses the dp_cp group for dense
  buffers and expt_dp for experts; FORMULAS.md §2.1). memory_buckets.py replays Megatron's buffer
  layout (reverse registration order, params aligned to 64 elements, buckets padded to
  lcm(DP, 128), a tied embedding in a bucket of its own), so a rank's grad buffer and optimizer
  shard are exact per rank, not params / DP (checked rank by rank in tests/test_memory_megatron.py,
  and against Megatron's real optimizer in tests/test_memory_real_optimizer.py).
Activations: memory_activations.py, times the micro-batches each chunk holds (memory_layout.py).
With the distributed optimizer the bf16 weights live in a param buffer padded exactly like the grad
buffer, so they carry its padding too (checked to the byte in tests/test_memory_megatron.py).
FP8 runs: GEMM weights take Transformer Engine's FP8 bytes (memory_fp8.py); FP8 primary weights only
with the distributed optimizer, the one setup where Megatron-LM allows --fp8-param-gather.
Overheads: `Overheads`, each a named term.

Two entry points share one implementation: `estimate_memory` for one config (a frozen
MemoryEstimate with the per-stage breakdown) and `peak_memory_gib_batch` for a whole enumerated
space (numpy arrays). They differ in one place only: the batch path bounds the distributed
optimizer's padding in closed form (< 64 elements per param tensor, < lcm(DP, 128) per bucket;
memory_buckets.stage_padding_bound) instead of laying out every buffer, so its gradient and
optimizer terms are >= the exact ones `estimate_memory` reports, by at most that padding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autotune.cluster import ClusterSpec
from autotune.config import JobConfig, ParallelConfig, Workload
from autotune.errors import ConfigError
from autotune.memory_activations import (
    BF16, FP32, RECOMPUTE_MODULES, Shard, dense_layer_bytes, layer_input_bytes, logits_bytes, moe_layer_bytes,
)
from autotune.memory_fp8 import gemm_weight_bytes_per_element, gemm_weight_elements, needs_fp8_transpose
from autotune.memory_buckets import stage_buffers, stage_padding_bound
from autotune.memory_layout import ChunkLayers, chunk_layers, chunk_layers_for, in_flight_units
from autotune.model_spec import ModelSpec
from autotune.params import layer_params, norm_params

GIB = 2**30
VOCAB_DIVISIBLE_BY = 128  # Megatron-LM --make-vocab-size-divisible-by default
OPTIMIZER_BYTES = 3 * FP32  # fp32 master weights, Adam exp_avg, exp_avg_sq


def _grad_bytes(options: "MemoryOptions") -> int:
    """Bytes per grad-buffer element: fp32 main grads, or bf16 without grad_reduce_in_fp32."""
    return FP32 if options.grad_reduce_in_fp32 else BF16


@dataclass(frozen=True, kw_only=True)
class Overheads:
    """Memory outside the model's tensors. Each term is named and configurable; none is hidden."""

    cuda_context_gib: float = 0.75  # CUDA context, cuBLAS/cuDNN workspaces and loaded kernels
    nccl_buffers_gib: float = 1.0  # NCCL communicator buffers for the TP/DP/PP/EP groups
    fragmentation_fraction: float = 0.05  # caching-allocator fragmentation, as a share of allocated bytes

    def __post_init__(self) -> None:
        for name in ("cuda_context_gib", "nccl_buffers_gib", "fragmentation_fraction"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True, kw_only=True)
class MemoryOptions:
    """Training options the parallel knobs do not carry."""

    recompute_modules: tuple[str, ...] = ("core_attn",)  # for selective recompute (Megatron's default list)
    recompute_num_layers: int | None = None  # full recompute 'block' method: layers per chunk; None = every layer
    hidden_dropout: bool = False  # 1-byte residual-dropout masks (Megatron-Bridge recipes set dropout 0)
    # fp32 main gradients (Megatron-LM forces accumulate_allreduce_grads_in_fp32 with --bf16); Megatron-Bridge
    # performance recipes turn it off (perf_recipes/_common.py: grad_reduce_in_fp32 = False) -> bf16 grads.
    grad_reduce_in_fp32: bool = True
    # DDP buckets (Megatron-LM --overlap-grad-reduce): pipeline rank 0's first chunk is split into buckets
    # of ddp_bucket_size elements (None: Megatron's max(40M, 1M x DP)), each padded with the distributed
    # optimizer. False (Megatron's default): one bucket per buffer.
    overlap_grad_reduce: bool = False
    ddp_bucket_size: int | None = None
    # FP8 runs: FP8 primary weights (Megatron --fp8-param-gather; Megatron-Bridge FP8 recipes set
    # fp8_param_gather=True). False: bf16 weights plus TE's cached FP8 copy (memory_fp8.py).
    fp8_param: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.recompute_modules) - set(RECOMPUTE_MODULES)
        if unknown:
            raise ConfigError(f"unknown recompute modules {sorted(unknown)}; known: {', '.join(RECOMPUTE_MODULES)}")
        if self.recompute_num_layers is not None and self.recompute_num_layers < 0:
            raise ConfigError(f"recompute_num_layers must be >= 0, got {self.recompute_num_layers}")
        if self.ddp_bucket_size is not None and self.ddp_bucket_size <= 0:
            raise ConfigError(f"ddp_bucket_size must be > 0 elements or None (Megatron's default), "
                              f"got {self.ddp_bucket_size}")


@dataclass(frozen=True, kw_only=True)
class StageMemory:
    """The most loaded GPU of one pipeline stage."""

    stage: int
    num_parameters: int  # parameters this GPU holds (all its virtual chunks)
    weights_gib: float
    gradients_gib: float
    optimizer_gib: float
    activations_gib: float
    overhead_gib: float

    @property
    def allocated_gib(self) -> float:
        """What torch's allocator hands out at the peak (comparable to max_memory_allocated)."""
        return self.weights_gib + self.gradients_gib + self.optimizer_gib + self.activations_gib

    @property
    def total_gib(self) -> float:
        return self.allocated_gib + self.overhead_gib

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "num_parameters": self.num_parameters, "weights_gib": self.weights_gib,
                "gradients_gib": self.gradients_gib, "optimizer_gib": self.optimizer_gib,
                "activations_gib": self.activations_gib, "overhead_gib": self.overhead_gib,
                "total_gib": self.total_gib}


@dataclass(frozen=True, kw_only=True)
class MemoryEstimate:
    stages: tuple[StageMemory, ...]
    capacity_gib: float  # the GPU's memory
    overheads: Overheads = field(default_factory=Overheads)

    @property
    def peak_stage(self) -> StageMemory:
        return max(self.stages, key=lambda s: s.total_gib)

    @property
    def peak_memory_gib(self) -> float:
        return self.peak_stage.total_gib

    @property
    def peak_allocated_gib(self) -> float:
        return max(s.allocated_gib for s in self.stages)

    def fits(self, headroom: float) -> bool:
        return self.peak_memory_gib <= self.capacity_gib * (1 - headroom)

    def to_dict(self) -> dict[str, Any]:
        return {"stages": [s.to_dict() for s in self.stages], "peak_memory_gib": self.peak_memory_gib,
                "peak_stage": self.peak_stage.stage, "capacity_gib": self.capacity_gib}


def padded_vocab_size(vocab_size: int, tp: Any) -> Any:
    multiple = VOCAB_DIVISIBLE_BY * np.asarray(tp)
    return -(-vocab_size // multiple) * multiple


# --- the shared implementation: knobs as arrays of shape (n, 1, 1), chunks as (1, PP, VPP) --------

@dataclass(frozen=True, kw_only=True)
class _Rows:
    tp: Any
    cp: Any
    ep: Any
    etp: Any
    mbs: Any
    sp: Any
    dist_opt: Any
    recompute: Any  # 0 none, 1 selective, 2 full
    dp: Any
    edp: Any
    num_microbatches: Any


def _params_per_stage(m: ModelSpec, rows: _Rows, chunks: ChunkLayers, seq_length: int) -> dict[str, Any]:
    """Dense (DP-sharded by the distributed optimizer) and expert params per stage: shape (n, PP)."""
    dense_l, moe_l = layer_params(m, False), layer_params(m, True)
    mla_down = 0
    if m.mla is not None:  # down-projections are replicated under TP (TE spec)
        mla_down = m.hidden_size * ((m.mla.q_lora_rank or 0) + m.mla.kv_lora_rank + m.mla.qk_pos_emb_head_dim)
    # RowParallelLinear keeps its bias whole on every TP rank (tensor_parallel/layers.py): the attention
    # output projection's, and the dense MLP's fc2 (shared experts have no bias).
    row_bias = m.hidden_size if m.add_bias_linear else 0
    dense_repl = mla_down + 2 * row_bias
    moe_repl = mla_down + row_bias
    tp = rows.tp[..., 0]  # (n, 1)
    per_dense = (dense_l.attention + dense_l.mlp - dense_repl) / tp + dense_repl + dense_l.attention_replicated + \
        dense_l.norms
    per_moe_dense = (moe_l.attention + moe_l.mlp - moe_repl) / tp + moe_repl + moe_l.attention_replicated + \
        moe_l.norms + moe_l.router
    per_moe_expert = moe_l.routed_experts / (rows.ep * rows.etp)[..., 0] if m.is_moe else 0 * tp
    pp = chunks.pp
    first = (np.arange(pp) == 0)[None, :]
    last = (np.arange(pp) == pp - 1)[None, :]
    mtp = chunks.mtp.sum(axis=1)[None, :]  # (1, PP)
    mtp_is_moe = int(m.is_moe)  # an MTP layer copies the model's last decoder layer (MoE in a MoE model)
    n_dense = chunks.dense.sum(axis=1)[None, :] + mtp * (1 - mtp_is_moe)
    n_moe = chunks.moe.sum(axis=1)[None, :] + mtp * mtp_is_moe
    vocab_shard = padded_vocab_size(m.vocab_size, tp) * m.hidden_size / tp
    positions = max(seq_length, m.max_position_embeddings) * m.hidden_size \
        if m.position_embedding_type == "learned_absolute" else 0
    embedding = vocab_shard + positions
    # Untied: an output layer. Tied with PP > 1: the last stage's own copy of the word embeddings.
    output = vocab_shard if (not m.tie_embeddings or pp > 1) else 0 * tp
    # Each MTP layer's own parts beyond its decoder layer (counted above): enorm, hnorm, final_layernorm and
    # the column-parallel eh_proj (2h -> h, no bias). A chunk holding MTP layers other than the first chunk
    # builds its own copy of the word embeddings (GPTModel: `if self.pre_process or self.mtp_process:
    # self.embedding = ...`).
    eh_proj = mtp * 2 * m.hidden_size * m.hidden_size / tp
    mtp_apart = chunks.mtp.copy()
    mtp_apart[0, 0] = 0  # the first chunk has the embedding anyway
    mtp_own = eh_proj + mtp * 3 * norm_params(m, m.hidden_size) + (mtp_apart.sum(axis=1)[None, :] > 0) * vocab_shard
    dense = n_dense * per_dense + n_moe * per_moe_dense + first * embedding + last * (
        output + norm_params(m, m.hidden_size)) + mtp_own
    expert = n_moe * per_moe_expert
    gemm = gemm_weight_elements(m, n_dense, n_moe, tp, (rows.ep * rows.etp)[..., 0]) + eh_proj  # FP8-able weights
    return {"dense": dense, "expert": expert, "gemm": gemm}


def _selective_modules(options: MemoryOptions) -> frozenset[str]:
    return frozenset(options.recompute_modules)


def _activations_per_stage(m: ModelSpec, rows: _Rows, chunks: ChunkLayers, workload: Workload,
                           options: MemoryOptions) -> Any:
    """Peak activation bytes per stage, shape (n, PP)."""
    shard = Shard(tokens=rows.mbs * workload.seq_length / rows.cp, tp=rows.tp, sp=rows.sp, etp=rows.etp,
                  fp8=workload.precision == "fp8")
    none, selective = frozenset(), _selective_modules(options)
    full_dense = dense_layer_bytes(m, shard, none, options.hidden_dropout)
    full_moe = moe_layer_bytes(m, shard, none, options.hidden_dropout) if m.is_moe else 0 * full_dense
    sel_dense = dense_layer_bytes(m, shard, selective, options.hidden_dropout)
    sel_moe = moe_layer_bytes(m, shard, selective, options.hidden_dropout) if m.is_moe else 0 * full_dense
    kept_input = layer_input_bytes(m, shard)
    is_sel, is_full = rows.recompute == 1, rows.recompute == 2
    a_dense = np.where(is_sel, sel_dense, full_dense)  # (n, 1, 1)
    a_moe = np.where(is_sel, sel_moe, full_moe)
    # MTP layers count as decoder layers of the last layer's kind in their chunk; full recompute checkpoints
    # them like the decoder's.
    mtp_c = chunks.mtp[None]  # (1, PP, V)
    dense_c = chunks.dense[None] + mtp_c * (1 - int(m.is_moe))
    moe_c = chunks.moe[None] + mtp_c * int(m.is_moe)
    # Full recompute ('uniform', 1 layer, or 'block' with recompute_num_layers per chunk): recomputed
    # layers keep only their input; the first layers of a chunk are the recomputed ones.
    r_layers = (dense_c + moe_c) if options.recompute_num_layers is None else options.recompute_num_layers
    rec_dense = np.where(is_full, np.minimum(r_layers, dense_c), 0)
    rec_moe = np.where(is_full, np.minimum(r_layers - rec_dense, moe_c), 0)
    per_chunk = (rec_dense + rec_moe) * kept_input + (dense_c - rec_dense) * a_dense + (moe_c - rec_moe) * a_moe
    # Each MTP layer also keeps its own inputs unless fully recomputed: the enorm and hnorm inputs (h each),
    # the concatenated eh_proj input (2h) and its final_layernorm's input (h), bf16 and sequence-split by SP.
    mtp_inputs = BF16 * 5 * shard.tokens * m.hidden_size / shard.sp_div  # (n, 1, 1), per MTP layer
    per_chunk = per_chunk + mtp_c * np.where(is_full, 0, mtp_inputs)
    units = in_flight_units(rows.num_microbatches, chunks.pp, chunks.vpp)  # (n, PP, V)
    stage = (units * per_chunk).sum(axis=2)  # (n, PP)
    # Transients of one micro-batch: a recomputed layer's full activations during its backward, and the
    # logits / cross-entropy buffers on the last stage.
    has_dense, has_moe = chunks.dense.sum(axis=1)[None] > 0, chunks.moe.sum(axis=1)[None] > 0
    working = np.maximum(np.where(has_dense, full_dense[..., 0], 0), np.where(has_moe, full_moe[..., 0], 0))
    stage = stage + np.where(is_full[..., 0], working, 0)
    last = (np.arange(chunks.pp) == chunks.pp - 1)[None, :]
    logits = logits_bytes(m, shard, padded_vocab_size(m.vocab_size, rows.tp))[..., 0]  # (n, 1)
    # Each MTP layer runs the output layer and cross-entropy once more on its own stage, and every loss keeps
    # its softmax until the backward.
    stage = stage + (last + chunks.mtp.sum(axis=1)[None, :]) * logits
    return stage


def _stage_bytes(m: ModelSpec, rows: _Rows, chunks: ChunkLayers, workload: Workload,
                 options: MemoryOptions, gpu_name: str) -> dict[str, Any]:
    params = _params_per_stage(m, rows, chunks, workload.seq_length)
    dense, expert = params["dense"], params["expert"]
    dp_cp = (rows.dp * rows.cp)[..., 0]
    edp = rows.edp[..., 0]
    ep = rows.ep[..., 0]
    dist = rows.dist_opt[..., 0] == 1
    # With EP = 1 the routed experts sit in the dense buffer, sharded over DP x CP (memory_buckets.py).
    in_dense = np.where(ep == 1, dense + expert, dense)
    in_expert = np.where(ep == 1, 0, expert)
    # An upper bound on Megatron's buffer padding, so a shard is at most (params + padding) / group;
    # estimate_memory replaces both terms with the exact layout (memory_buckets.stage_buffers).
    pad_dense, pad_expert = stage_padding_bound(m, chunks, ep, dp_cp, edp, dense + expert,
                                                options.overlap_grad_reduce, options.ddp_bucket_size)
    pad_dense, pad_expert = np.where(dist, pad_dense, 0), np.where(dist, pad_expert, 0)
    optimizer = OPTIMIZER_BYTES * (np.where(dist, np.minimum(in_dense, (in_dense + pad_dense) / dp_cp), in_dense) +
                                   np.where(dist, np.minimum(in_expert, (in_expert + pad_expert) / edp), in_expert))
    # GEMM weights take TE's FP8 bytes instead of bf16 (memory_fp8.py); the rest stays bf16. FP8 primary
    # weights need the distributed optimizer (Megatron-LM validate_args: --fp8-param-gather only with it).
    fp8, transpose = workload.precision == "fp8", needs_fp8_transpose(gpu_name)
    gemm_bytes = np.where(dist, gemm_weight_bytes_per_element(fp8, options.fp8_param, transpose),
                          gemm_weight_bytes_per_element(fp8, False, transpose))
    return {
        "num_parameters": dense + expert,
        # With the distributed optimizer the params are views into a param buffer padded like the grad
        # buffer (param_and_grad_buffer.py param_data), so they carry the same padding.
        "weights": BF16 * (dense + expert + pad_dense + pad_expert) + (gemm_bytes - BF16) * params["gemm"],
        "gradients": _grad_bytes(options) * (dense + expert + pad_dense + pad_expert),
        "optimizer": optimizer,
        "activations": _activations_per_stage(m, rows, chunks, workload, options),
    }


def _overhead_bytes(allocated: Any, overheads: Overheads) -> Any:
    return (overheads.cuda_context_gib + overheads.nccl_buffers_gib) * GIB + \
        overheads.fragmentation_fraction * allocated


def _rows_of(tp, cp, ep, etp, mbs, sp, dist_opt, recompute, num_gpus: int, pp, global_batch_size: int) -> _Rows:
    def col(x: Any) -> np.ndarray:
        return np.asarray(x, dtype=np.int64).reshape(-1, 1, 1)

    tp, cp, ep, etp, mbs, pp = col(tp), col(cp), col(ep), col(etp), col(mbs), col(pp)
    dp = num_gpus // (tp * pp * cp)
    edp = num_gpus // (pp * ep * etp)
    return _Rows(tp=tp, cp=cp, ep=ep, etp=etp, mbs=mbs, sp=col(sp), dist_opt=col(dist_opt),
                 recompute=col(recompute), dp=dp, edp=edp,
                 num_microbatches=np.maximum(global_batch_size // np.maximum(mbs * dp, 1), 1))


# --- public API ---------------------------------------------------------------------------------

def estimate_memory(model: ModelSpec, cluster: ClusterSpec, job: JobConfig, overheads: Overheads = Overheads(),
                    options: MemoryOptions = MemoryOptions()) -> MemoryEstimate:
    """Per-stage memory of one config. The config must pass the constraint rules."""
    p: ParallelConfig = job.parallel
    recompute = {None: 0, "selective": 1, "full": 2}[p.recompute_granularity]
    rows = _rows_of(p.tp, p.cp, p.ep, p.etp, p.micro_batch_size, int(p.sequence_parallel),
                    int(p.use_distributed_optimizer), recompute, job.num_gpus, p.pp, job.workload.global_batch_size)
    chunks = chunk_layers(model.num_layers, model.num_dense_layers, _split_only(p), model.mtp_num_layers)
    b = _stage_bytes(model, rows, chunks, job.workload, options, cluster.gpu.name)
    # The exact grad buffers and optimizer shards of each stage's most loaded rank, in place of the
    # batch path's padding bound.
    exact = stage_buffers(model, job, options.overlap_grad_reduce, options.ddp_bucket_size)
    exact_numel = np.asarray([[s.grad_buffer_numel for s in exact]], dtype=np.float64)
    if p.use_distributed_optimizer:  # the param buffer's padding is the grad buffer's: bound -> exact
        b["weights"] = b["weights"] + BF16 * (exact_numel - b["gradients"] / _grad_bytes(options))
    b["gradients"] = _grad_bytes(options) * exact_numel
    b["optimizer"] = np.asarray([[OPTIMIZER_BYTES * s.optimizer_numel for s in exact]], dtype=np.float64)
    stages = []
    for r in range(p.pp):
        parts = {k: float(np.asarray(v)[0, r]) for k, v in b.items()}
        allocated = parts["weights"] + parts["gradients"] + parts["optimizer"] + parts["activations"]
        stages.append(StageMemory(
            stage=r, num_parameters=int(round(parts["num_parameters"])), weights_gib=parts["weights"] / GIB,
            gradients_gib=parts["gradients"] / GIB, optimizer_gib=parts["optimizer"] / GIB,
            activations_gib=parts["activations"] / GIB,
            overhead_gib=float(_overhead_bytes(allocated, overheads)) / GIB,
        ))
    return MemoryEstimate(stages=tuple(stages), capacity_gib=cluster.gpu.usable_memory_gib, overheads=overheads)


@dataclass(frozen=True, kw_only=True)
class StageParameters:
    """Parameters one GPU of a stage holds, split by how the distributed optimizer shards them."""

    stage: int
    dense: int  # sharded over DP x CP by the distributed optimizer
    expert: int  # routed experts, sharded over the expert-data-parallel group

    @property
    def total(self) -> int:
        return self.dense + self.expert


def parameters_per_stage(model: ModelSpec, job: JobConfig) -> tuple[StageParameters, ...]:
    p = job.parallel
    rows = _rows_of(p.tp, p.cp, p.ep, p.etp, p.micro_batch_size, 0, 0, 0, job.num_gpus, p.pp,
                    job.workload.global_batch_size)
    chunks = chunk_layers(model.num_layers, model.num_dense_layers, _split_only(p), model.mtp_num_layers)
    params = _params_per_stage(model, rows, chunks, job.workload.seq_length)
    return tuple(StageParameters(stage=r, dense=int(round(float(params["dense"][0, r]))),
                                 expert=int(round(float(np.asarray(params["expert"])[0, r]))))
                 for r in range(p.pp))


def _split_only(p: ParallelConfig) -> ParallelConfig:
    """The knobs that decide the layer split (so the chunk table cache is shared across configs)."""
    return ParallelConfig(
        pipeline_model_parallel_size=p.pp, virtual_pipeline_model_parallel_size=p.virtual_pipeline_model_parallel_size,
        account_for_embedding_in_pipeline_split=p.account_for_embedding_in_pipeline_split,
        account_for_loss_in_pipeline_split=p.account_for_loss_in_pipeline_split,
        num_layers_in_first_pipeline_stage=p.num_layers_in_first_pipeline_stage,
        num_layers_in_last_pipeline_stage=p.num_layers_in_last_pipeline_stage,
        pipeline_model_parallel_layout=p.pipeline_model_parallel_layout,
    )


def peak_memory_gib_batch(model: ModelSpec, cluster: ClusterSpec, workload: Workload, knobs: Any,
                          overheads: Overheads = Overheads(), options: MemoryOptions = MemoryOptions(),
                          layout: str | None = None) -> np.ndarray:
    """Peak per-GPU memory (GiB, max over stages, overheads included) of every config in `knobs`.

    `knobs` is a constraints.Knobs of equal-length arrays (or ints). Rows with split=3 (explicit
    layout) use `layout`. Rows that break a constraint rule give meaningless numbers.
    """
    cols = {k: np.atleast_1d(np.asarray(getattr(knobs, k), dtype=np.int64))
            for k in ("tp", "pp", "vpp", "cp", "ep", "etp", "mbs", "sp", "dist_opt", "recompute", "split",
                      "first", "last", "emb_slot", "loss_slot")}
    n = max(len(v) for v in cols.values())
    cols = {k: np.broadcast_to(v, (n,)) for k, v in cols.items()}
    out = np.empty(n, dtype=np.float64)
    # Rows with the same layer split share one chunk table: group them by a packed integer key
    # (np.unique on a 1-D int array is much faster than on rows).
    split_keys = ("pp", "vpp", "split", "first", "last", "emb_slot", "loss_slot")
    packed = np.zeros(n, dtype=np.int64)
    for k in split_keys:
        packed = packed * 4099 + (cols[k] + 1)  # +1: first/last may be -1
    _, first_row, inverse = np.unique(packed, return_index=True, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse))
    for g, row in enumerate(first_row):
        sel = order[(bounds[g - 1] if g else 0):bounds[g]]
        pp, vpp, split, first, last, emb, loss = (int(cols[k][row]) for k in split_keys)
        if split == 3:
            if layout is None:
                raise ConfigError("a config with an explicit pipeline layout needs the layout string")
            chunks = chunk_layers(model.num_layers, model.num_dense_layers, ParallelConfig(
                pipeline_model_parallel_size=pp, virtual_pipeline_model_parallel_size=vpp if vpp > 1 else None,
                pipeline_model_parallel_layout=layout), model.mtp_num_layers)
        else:
            chunks = chunk_layers_for(model.num_layers, model.num_dense_layers, pp, vpp, split, first, last,
                                      emb, loss, model.mtp_num_layers)
        rows = _rows_of(*(cols[k][sel] for k in ("tp", "cp", "ep", "etp", "mbs", "sp", "dist_opt", "recompute")),
                        num_gpus=cluster.num_gpus, pp=cols["pp"][sel], global_batch_size=workload.global_batch_size)
        b = _stage_bytes(model, rows, chunks, workload, options, cluster.gpu.name)
        allocated = b["weights"] + b["gradients"] + b["optimizer"] + b["activations"]
        total = allocated + _overhead_bytes(allocated, overheads)
        out[sel] = np.max(total, axis=1) / GIB
    return out
