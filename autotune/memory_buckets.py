"""Megatron's gradient buffers and distributed-optimizer shards, element for element, per rank.

With the distributed optimizer, a rank's optimizer state is not params / DP: Megatron Core lays each
model chunk's params out in a contiguous param-and-grad buffer, pads it, and gives each DP rank one
contiguous 1/DP slice of every bucket; the rank then keeps fp32 master weights and Adam's exp_avg and
exp_avg_sq only for the param elements inside its slices. This module replays that layout
(megatron-core 0.16.1):

- distributed_data_parallel.py: one DistributedDataParallel per model chunk; params whose
  `allreduce` is False (routed experts, only when EP > 1: tensor_parallel/layers.py) go to separate
  buffers sharded over the expert-DP group, the rest over the DP x CP group; all params here share
  one dtype, so one buffer of each kind. bucket_size is None (one bucket) unless overlap_grad_reduce,
  then max(40M, 1M x DP) elements, and only on pipeline rank 0 (DDP) and its first model chunk
  (megatron/training/training.py passes disable_bucketing for the other chunks).
- param_and_grad_buffer.py::_ParamAndGradBuffer: params are laid out in REVERSE registration
  order; with the distributed optimizer every param starts at a multiple of 64 elements, every
  bucket is padded to a multiple of lcm(DP, 128), and a tied embedding/output weight on a PP > 1
  model (`shared_embedding`, language_module.py) gets a bucket of its own. Without it there is no
  padding and one bucket.
- optimizer/distrib_optimizer.py::_build_model_gbuf_range: DP rank r owns
  [r * size / DP, (r + 1) * size / DP) of each bucket; its shard is the param elements in there.
- The rank order is Megatron's default 'tp-cp-ep-dp-pp' (parallel_state.initialize_model_parallel):
  within a stage, rank g has DP x CP rank g // TP and expert-DP rank g // (ETP x EP); torch numbers a
  group's ranks in sorted order.

The per-parameter sizes come from the same shapes autotune.params counts, in the registration order
of GPTModel built with the local (pure-torch) layer spec: embedding (word, then learned positions),
then per layer input_layernorm, self_attention (linear_proj, linear_qkv, q/k layernorms; MLA:
linear_proj, q projections, kv projections, q/kv layernorms), pre_mlp_layernorm, mlp (dense: fc1, fc2;
MoE: router, each local expert's fc1, fc2, then the shared experts), then final_layernorm and
output_layer. The Transformer Engine spec holds the same tensors but registers the layernorms inside
the fused linears; that moves params within a layer, so per-rank shards can differ there by a few
elements of 64-alignment per layer, while buffer sizes and group sums stay the same.

Scope: bf16 params, so each chunk has one dense and one expert buffer. With FP8 primary weights
(fp8_param) Megatron puts the FP8 GEMM weights in buffers of their own (DDP groups params by dtype),
each padded separately; we keep the one-buffer layout there, which moves a few padding elements per
chunk between ranks. With the distributed optimizer the bf16 weights also live in a param buffer of
the grad buffer's padded size (checked in tests/test_memory_real_optimizer.py); memory.py's weight
term counts the unpadded params.

Pure: numpy only, no torch, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from autotune.config import JobConfig
from autotune.errors import ConfigError
from autotune.memory_layout import ChunkLayers, chunk_layers
from autotune.model_spec import ModelSpec

PARAM_ALIGN = 64  # param starts are 128-byte aligned (param_and_grad_buffer.py::_pad_start_of_param_if_needed)
BUCKET_ALIGN = 128  # buckets are 256-byte aligned and divisible by DP (_pad_end_of_bucket_if_needed)
MIN_BUCKET_SIZE = 40_000_000  # distributed_data_parallel.py: bucket_size = max(40M, 1M x DP)
BUCKET_SIZE_PER_DP_RANK = 1_000_000


@dataclass(frozen=True)
class ChunkTensors:
    """The params one model chunk registers, in registration order."""

    numel: np.ndarray  # int64, elements of each param on this rank
    expert: np.ndarray  # bool, routed-expert param (its own buffer when EP > 1)
    shared: np.ndarray  # bool, tied embedding/output weight with PP > 1 (a bucket of its own)


@dataclass(frozen=True, kw_only=True)
class RankBuffers:
    """What the DDP buffers and the optimizer hold on one GPU, in elements."""

    rank: int  # global rank, Megatron's 'tp-cp-ep-dp-pp' order
    stage: int  # pipeline rank
    grad_buffer_numel: int  # grad buffer elements, padding included (dense + expert buffers, all chunks)
    dense_optimizer_numel: int  # fp32 master-weight elements of non-expert params (Adam m and v alike)
    expert_optimizer_numel: int  # the same for routed-expert params

    @property
    def optimizer_numel(self) -> int:
        return self.dense_optimizer_numel + self.expert_optimizer_numel


# --- the params of one chunk -------------------------------------------------------------------

def _norm(m: ModelSpec, width: int) -> list[int]:
    return [width, width] if m.normalization == "LayerNorm" else [width]


def _linear(out_features: int, in_features: int, bias: int) -> list[int]:
    """weight, then bias (when `bias` > 0: its number of elements)."""
    return [out_features * in_features] + ([bias] if bias else [])


def _attention_tensors(m: ModelSpec, tp: int) -> list[int]:
    h, bias = m.hidden_size, m.add_bias_linear
    if m.mla is not None:
        a, n = m.mla, m.num_attention_heads
        q_head = a.qk_head_dim + a.qk_pos_emb_head_dim
        out = _linear(h, n * a.v_head_dim // tp, h if bias else 0)  # RowParallel bias is whole on every TP rank
        if a.q_lora_rank is None:
            q = _linear(n * q_head // tp, h, 0)
        else:  # the down-projection is replicated under TP (TE spec: parallel_mode='duplicated')
            q = _linear(a.q_lora_rank, h, 0) + _linear(n * q_head // tp, a.q_lora_rank, 0)
        kv = _linear(a.kv_lora_rank + a.qk_pos_emb_head_dim, h, 0) + \
            _linear(n * (a.qk_head_dim + a.v_head_dim) // tp, a.kv_lora_rank, 0)
        norms = (_norm(m, a.q_lora_rank) if a.q_lora_rank is not None else []) + _norm(m, a.kv_lora_rank)
        return out + q + kv + norms
    qkv_out = m.query_projection_size + 2 * m.kv_projection_size
    out = _linear(h, m.query_projection_size // tp, h if bias else 0)
    qkv = _linear(qkv_out // tp, h, qkv_out // tp if (bias or m.add_qkv_bias) else 0)
    qk_norms = _norm(m, m.kv_channels) * 2 if m.qk_layernorm else []
    return out + qkv + qk_norms


def _mlp_tensors(m: ModelSpec, ffn: int, shard: int, bias: bool) -> list[int]:
    """fc1 (gate and up fused when gated) and fc2; fc2's RowParallel bias is whole."""
    fc1_out = ffn * (2 if m.gated_mlp else 1) // shard
    return _linear(fc1_out, m.hidden_size, fc1_out if bias else 0) + \
        _linear(m.hidden_size, ffn // shard, m.hidden_size if bias else 0)


def _layer_tensors(m: ModelSpec, is_moe: bool, tp: int, ep: int, etp: int) -> tuple[list[int], list[bool]]:
    h = m.hidden_size
    head = _norm(m, h) + _attention_tensors(m, tp) + _norm(m, h)
    if not is_moe:
        mlp = _mlp_tensors(m, m.ffn_hidden_size, tp, m.add_bias_linear)
        return head + mlp, [False] * (len(head) + len(mlp))
    moe = m.moe
    router = _linear(moe.num_experts, h, moe.num_experts if m.add_bias_linear else 0)
    experts = _mlp_tensors(m, moe.moe_ffn_hidden_size, etp, m.add_bias_linear) * (moe.num_experts // ep)
    shared = _mlp_tensors(m, moe.shared_expert_ffn_hidden_size, tp, False) \
        if moe.shared_expert_ffn_hidden_size else []
    sizes = head + router + experts + shared
    return sizes, [False] * len(head + router) + [True] * len(experts) + [False] * len(shared)


def chunk_tensors(m: ModelSpec, job: JobConfig, pp_rank: int, vp_rank: int) -> ChunkTensors:
    """The params of model chunk [pp_rank][vp_rank], in GPTModel's registration order."""
    p = job.parallel
    chunks = chunk_layers(m.num_layers, m.num_dense_layers, p, m.mtp_num_layers)
    pre = pp_rank == 0 and vp_rank == 0
    # chunks.vpp, not p.vpp: an explicit pipeline layout sets the number of virtual stages itself.
    post = pp_rank == p.pp - 1 and vp_rank == chunks.vpp - 1
    h = m.hidden_size
    vocab_shard = -(-m.vocab_size // (128 * p.tp)) * 128 * h  # vocab padded to 128 x TP, then split by TP
    sizes: list[int] = []
    expert: list[bool] = []
    shared: list[bool] = []

    def add(numel: list[int], is_expert: list[bool] | None = None, is_shared: bool = False) -> None:
        sizes.extend(numel)
        expert.extend(is_expert or [False] * len(numel))
        shared.extend([is_shared] * len(numel))

    # With PP > 1, tied weights or MTP keep a duplicated word embedding on the last stage, and both copies are
    # marked shared_embedding (language_module.py::setup_embeddings_and_output_layer).
    mtp = int(chunks.mtp[pp_rank, vp_rank])  # GPTModel.mtp_process
    tied_pp = (m.tie_embeddings or m.mtp_num_layers > 0) and p.pp > 1
    if pre:
        add([vocab_shard], is_shared=tied_pp)
        if m.position_embedding_type == "learned_absolute":
            add([max(job.workload.seq_length, m.max_position_embeddings) * h])
    elif mtp:
        add([vocab_shard], is_shared=True)  # the MTP stage's embedding, registered first like the first stage's
    for is_moe, count in ((False, int(chunks.dense[pp_rank, vp_rank])), (True, int(chunks.moe[pp_rank, vp_rank]))):
        if count:
            layer, layer_expert = _layer_tensors(m, is_moe, p.tp, p.ep, p.etp)
            add(layer * count, layer_expert * count)
    if post:
        add(_norm(m, h))  # final_layernorm
    for _ in range(mtp):  # MultiTokenPredictionLayer: enorm, hnorm, eh_proj (2h -> h/TP), its layer, final norm
        layer, layer_expert = _layer_tensors(m, m.is_moe, p.tp, p.ep, p.etp)
        add(_norm(m, h) + _norm(m, h) + _linear(h // p.tp, 2 * h, 0))
        add(layer, layer_expert)
        add(_norm(m, h))
    if post:
        if not m.tie_embeddings or p.pp > 1:
            add([vocab_shard], is_shared=m.tie_embeddings and p.pp > 1)
    # Routed experts share the dense buffer when EP == 1 (`allreduce` stays True).
    is_expert = np.asarray(expert, dtype=bool) & (p.ep > 1)
    return ChunkTensors(numel=np.asarray(sizes, dtype=np.int64), expert=is_expert,
                        shared=np.asarray(shared, dtype=bool))


# --- one buffer ---------------------------------------------------------------------------------

def _pad(n: int, divisor: int) -> int:
    return -(-n // divisor) * divisor


def buffer_shards(numel: np.ndarray, shared: np.ndarray, dp: int, distributed: bool,
                  bucket_size: int | None) -> tuple[int, np.ndarray]:
    """(buffer elements with padding, param elements owned by each of the `dp` ranks) of one buffer.

    `numel` and `shared` are in registration order. Without the distributed optimizer every rank
    keeps every param (the returned shards are then the whole buffer for each rank).
    """
    total = int(numel.sum())
    if not distributed:
        return total, np.full(dp, total, dtype=np.int64)
    if len(numel) == 0:
        return 0, np.zeros(dp, dtype=np.int64)
    s = numel[::-1]
    sh = shared[::-1]
    n = len(s)
    step = -(-s // PARAM_ALIGN) * PARAM_ALIGN  # start of param j+1 = start of j + ceil64(numel j)
    rel = np.concatenate(([0], np.cumsum(step)))  # start of each param if all sat in one bucket
    ends = rel[:-1] + s  # non-decreasing
    # A bucket closes after a shared param, before one, or (with buckets) once it holds bucket_size.
    stops = np.flatnonzero(sh | np.append(sh[1:], False))
    divisor = math.lcm(dp, BUCKET_ALIGN)
    starts = np.empty(n, dtype=np.int64)
    bucket_bounds = []
    i, base = 0, 0
    while i < n:
        j = n - 1
        k = np.searchsorted(stops, i)
        if k < len(stops):
            j = int(stops[k])
        if bucket_size is not None:
            j = min(j, int(np.searchsorted(ends, rel[i] + bucket_size)))
        starts[i:j + 1] = base + rel[i:j + 1] - rel[i]
        end = _pad(base + int(ends[j] - rel[i]), divisor)
        bucket_bounds.append((base, end))
        base, i = end, j + 1
    # Real elements below buffer position x: F(x) = sum_i clip(x - start_i, 0, numel_i).
    before = np.concatenate(([0], np.cumsum(s)))
    bounds = np.asarray(bucket_bounds, dtype=np.int64)
    edges = bounds[:, :1] + (bounds[:, 1:] - bounds[:, :1]) // dp * np.arange(dp + 1)  # (buckets, dp + 1)
    idx = np.searchsorted(starts, edges, side="right") - 1
    safe = np.maximum(idx, 0)
    covered = np.where(idx >= 0, before[safe] + np.minimum(edges - starts[safe], s[safe]), 0)
    return int(base), np.diff(covered, axis=1).sum(axis=0)


# --- every rank ---------------------------------------------------------------------------------

def default_bucket_size(data_parallel_size: int) -> int:
    return max(MIN_BUCKET_SIZE, BUCKET_SIZE_PER_DP_RANK * data_parallel_size)


def _per_stage(m: ModelSpec, job: JobConfig, overlap_grad_reduce: bool, bucket_size: int | None):
    """(stage, grad-buffer elements, dense shard per rank of the stage, expert shard per rank)."""
    p = job.parallel
    for name, size in (("TP x PP x CP", p.tp * p.pp * p.cp), ("PP x EP x ETP", p.pp * p.ep * p.etp)):
        if job.num_gpus % size:
            raise ConfigError(f"num_gpus={job.num_gpus} must be divisible by {name}={size} to lay out the "
                              f"per-rank buffers; pick a GPU count that is a multiple of {size}")
    dp_cp = job.data_parallel_size * p.cp
    edp = job.expert_data_parallel_size
    g = np.arange(job.num_gpus // p.pp)
    dense_rank, expert_rank = g // p.tp, g // (p.etp * p.ep)
    size = (bucket_size or default_bucket_size(job.data_parallel_size)) if overlap_grad_reduce else None
    for stage in range(p.pp):
        grad = 0
        opt = {False: np.zeros(len(g), dtype=np.int64), True: np.zeros(len(g), dtype=np.int64)}
        for v in range(chunk_layers(m.num_layers, m.num_dense_layers, p, m.mtp_num_layers).vpp):
            c = chunk_tensors(m, job, stage, v)
            chunk_size = size if (stage == 0 and v == 0) else None
            for is_expert, group, rank_of in ((False, dp_cp, dense_rank), (True, edp, expert_rank)):
                sel = c.expert == is_expert
                numel, shards = buffer_shards(c.numel[sel], c.shared[sel], group, p.use_distributed_optimizer,
                                              chunk_size)
                grad += numel
                opt[is_expert] += shards[rank_of]
        yield stage, grad, opt[False], opt[True]


def rank_buffers(m: ModelSpec, job: JobConfig, overlap_grad_reduce: bool = False,
                 bucket_size: int | None = None) -> tuple[RankBuffers, ...]:
    """Grad-buffer and optimizer-shard elements of every global rank (index = global rank).

    `overlap_grad_reduce` splits pipeline rank 0's first chunk into buckets of `bucket_size`
    elements (default: Megatron's max(40M, 1M x DP)); otherwise each buffer is one bucket.
    """
    per_stage = job.num_gpus // job.parallel.pp
    return tuple(RankBuffers(rank=stage * per_stage + i, stage=stage, grad_buffer_numel=grad,
                             dense_optimizer_numel=int(dense[i]), expert_optimizer_numel=int(expert[i]))
                 for stage, grad, dense, expert in _per_stage(m, job, overlap_grad_reduce, bucket_size)
                 for i in range(per_stage))


@dataclass(frozen=True, kw_only=True)
class StageBuffers:
    """The most loaded GPU of a stage: all ranks of a stage have the same grad buffer; their
    optimizer shards differ by DP rank."""

    stage: int
    grad_buffer_numel: int
    optimizer_numel: int  # the largest shard among the stage's ranks


def stage_buffers(m: ModelSpec, job: JobConfig, overlap_grad_reduce: bool = False,
                  bucket_size: int | None = None) -> tuple[StageBuffers, ...]:
    return tuple(StageBuffers(stage=stage, grad_buffer_numel=grad, optimizer_numel=int((dense + expert).max()))
                 for stage, grad, dense, expert in _per_stage(m, job, overlap_grad_reduce, bucket_size))


# --- a closed-form bound for scoring whole spaces -------------------------------------------------

def stage_padding_bound(m: ModelSpec, chunks: ChunkLayers, ep, dense_group, expert_group, num_params,
                        overlap_grad_reduce: bool, bucket_size: int | None = None):
    """Most padding elements the distributed optimizer adds to a stage's (dense, expert) buffers.

    Each param adds < 64 elements of alignment, each bucket < lcm(group, 128). A chunk's buffer has
    one bucket, plus one for each side of a tied embedding/output weight (at most 3), plus one per
    `bucket_size` elements with overlap_grad_reduce (default max(40M, 1M x DP) >= 40M). `ep`,
    `dense_group`, `expert_group` and `num_params` broadcast against shape (n, 1) / (n, PP); the
    result has shape (n, PP). A rank's
    optimizer shard is at most (params + padding) / group of each buffer, and its grad buffer at
    most params + padding: peak_memory_gib_batch uses that, rank_buffers gives the exact numbers.
    """
    ep = np.asarray(ep)
    dense_layer, _ = layer_tensor_counts(m, False)
    moe_layer, per_expert = layer_tensor_counts(m, True) if m.is_moe else (0, 0)
    n_dense = chunks.dense.sum(axis=1)[None, :]
    n_moe = chunks.moe.sum(axis=1)[None, :]
    num_experts = m.moe.num_experts if m.is_moe else 0
    expert_tensors = n_moe * per_expert * (num_experts // ep)
    # word + position embeddings, final norm weight + bias, output layer: at most 5 more.
    dense_tensors = n_dense * dense_layer + n_moe * moe_layer + 5 + np.where(ep == 1, expert_tensors, 0)
    expert_tensors = np.where(ep == 1, 0, expert_tensors)
    # A bucket closes once it holds bucket_size elements, so a buffer has at most params / size + 1.
    size = bucket_size or MIN_BUCKET_SIZE
    buckets = 3 * chunks.vpp + (np.asarray(num_params) // size + 1 if overlap_grad_reduce else 0)
    return padding_bound(dense_tensors, buckets, dense_group), \
        np.where(expert_tensors > 0, padding_bound(expert_tensors, buckets, expert_group), 0)


def layer_tensor_counts(m: ModelSpec, is_moe: bool) -> tuple[int, int]:
    """(non-expert param tensors of one layer, tensors of ONE routed expert)."""
    sizes, expert = _layer_tensors(m, is_moe, 1, 1, 1)
    n_expert = sum(expert)
    return len(sizes) - n_expert, (n_expert // m.moe.num_experts if is_moe and m.moe else 0)


def padding_bound(num_tensors, num_buckets, group_size):
    """< 64 elements per param, < lcm(group, 128) per bucket."""
    lcm = np.lcm(np.asarray(group_size, dtype=np.int64), BUCKET_ALIGN)
    return (PARAM_ALIGN - 1) * np.asarray(num_tensors) + (lcm - 1) * np.asarray(num_buckets)
