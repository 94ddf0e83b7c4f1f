"""Activation bytes one transformer layer keeps for its backward pass, per micro-batch and per GPU.

Korthikanti et al. 2022 (arXiv 2205.05198, Sec. 4 and Table 2; ../shared/refdata/FORMULAS.md §1)
counted what autograd saves in a GPT layer. We count the same tensors for the layers Megatron Core
0.16.1 builds today:
- fused/flash attention (TE DotProductAttention): Q, K, V, the output and an fp32 softmax statistic
  per head are saved; the a*s^2 score/softmax/dropout tensors never exist;
- GQA: K and V are num_query_groups wide (at least one group per TP rank, attention.py);
- SwiGLU: fc1 emits gate and up (2 x ffn), the gated product feeds fc2;
- MoE (dropless, alltoall dispatcher): fp32 router logits and probabilities, then per routed token
  copy the expert input, fc1 output, activation output and expert output (kept to apply the routing
  probability in unpermute, moe_utils.py);
- MLA (multi_latent_attention.py, TE spec): compressed q/kv and their norms, the up-projected Q, K,
  V and the output;
- CP splits the sequence; TP splits everything inside attention and MLP; SP also splits the norms'
  inputs and the linear inputs that plain TP replicates (Korthikanti's 10sbh term);
- selective recompute drops the tensors of the modules it recomputes (Megatron --recompute-modules:
  core_attn, layernorm, mlp, moe, moe_act, shared_experts, mla_up_proj), full recompute keeps only
  the layer input.
- FP8 (Transformer Engine @ d0067d0d, tensor scaling): every TE linear saves its input quantized, one
  direction only, 1 byte per element (module/linear.py:421-436, :600-621); with sequence parallelism the
  saved tensor is the local shard, re-gathered in backward. Tensors that other ops save stay bf16: the
  norm inputs, Q/K/V and the attention output (fused attention), the fc1 output (Megatron's swiglu,
  fusions/fused_bias_swiglu.py:180-184). The one tensor FP8 adds is linear_proj's 1-byte copy of the
  attention output while fused attention still keeps its bf16 original (core_attn not recomputed).
Every function works on ints and on numpy arrays alike (knobs broadcast against each other).
Dropout is off by default (Megatron-Bridge recipes set hidden/attention dropout 0); with
`hidden_dropout` the two 1-byte residual-dropout masks of Korthikanti's count come back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from autotune.model_spec import ModelSpec

BF16 = 2
FP32 = 4
FP8 = 1
RECOMPUTE_MODULES = ("core_attn", "layernorm", "mlp", "moe", "moe_act", "shared_experts", "mla_up_proj")


@dataclass(frozen=True, kw_only=True)
class Shard:
    """How one micro-batch is split on this GPU (ints or broadcastable arrays)."""

    tokens: Any  # micro_batch_size * seq_length / CP: tokens of one micro-batch on this CP rank
    tp: Any
    sp: Any  # 0/1
    etp: Any
    fp8: bool = False  # TE FP8 linears save their inputs quantized to 1 byte

    @property
    def linear_input(self) -> int:
        """Bytes per element of a saved linear-layer input."""
        return FP8 if self.fp8 else BF16

    @property
    def sp_div(self) -> Any:
        """Norm inputs and linear inputs are split over TP only with sequence parallelism."""
        return np.where(self.sp == 1, self.tp, 1)


def _attention_output(s: Shard, modules: frozenset[str]) -> int:
    """Bytes per element kept for the core-attention output, which is also linear_proj's input.

    TE's fused attention saves its bf16 output for backward; a recomputed core_attn does not (Megatron's
    CheckpointFunction saves only q, k, v). linear_proj saves its input: in bf16 that same tensor; in FP8
    its own 1-byte quantized copy (TE module/linear.py:421-436 quantizes, :600-621 keeps one direction).
    """
    if not s.fp8:
        return BF16
    return FP8 + (0 if "core_attn" in modules else BF16)


def _attention(m: ModelSpec, s: Shard, modules: frozenset[str]) -> Any:
    t, h = s.tokens, m.hidden_size
    ln_in = BF16 * t * h / s.sp_div
    ln_out = 0 if "layernorm" in modules else s.linear_input * t * h / s.sp_div
    if m.mla is not None:
        a, n = m.mla, m.num_attention_heads
        compressed = 2 * BF16 * t * ((a.q_lora_rank or 0) + a.kv_lora_rank) / s.sp_div  # down output + norm output
        compressed += BF16 * t * a.qk_pos_emb_head_dim / s.sp_div  # shared rotary key
        qk_width = a.qk_head_dim + a.qk_pos_emb_head_dim
        qkv = 0 if "mla_up_proj" in modules else BF16 * t * n * (2 * qk_width + a.v_head_dim) / s.tp
        out = _attention_output(s, modules) * t * n * a.v_head_dim / s.tp
        lse = 0 if "core_attn" in modules else FP32 * t * n / s.tp
        return ln_in + ln_out + compressed + qkv + out + lse
    q_width = m.num_attention_heads * m.kv_channels / s.tp
    # With TP > num_query_groups each rank keeps one replicated KV group (attention.py).
    kv_width = m.kv_channels * np.maximum(m.num_query_groups / s.tp, 1)
    qkv = BF16 * t * (q_width + 2 * kv_width)
    qk_norm = BF16 * t * (q_width + kv_width) if m.qk_layernorm else 0
    out = _attention_output(s, modules) * t * q_width
    lse = 0 if "core_attn" in modules else FP32 * t * m.num_attention_heads / s.tp
    return ln_in + ln_out + qkv + qk_norm + out + lse


def _mlp(m: ModelSpec, s: Shard, ffn: int, tokens: Any, tp: Any, modules: frozenset[str], name: str,
         act_name: str) -> Any:
    """fc1 output and activation output of a (TP- or ETP-sharded) MLP over `tokens` tokens."""
    if name in modules:
        return 0
    gate = 2 if m.gated_mlp else 1
    fc1_out = BF16 * tokens * ffn * gate / tp
    act_out = 0 if act_name in modules else s.linear_input * tokens * ffn / tp
    return fc1_out + act_out


def dense_layer_bytes(m: ModelSpec, s: Shard, modules: frozenset[str], hidden_dropout: bool = False) -> Any:
    """A layer with a dense MLP, nothing recomputed except `modules`."""
    t, h = s.tokens, m.hidden_size
    ln_in = BF16 * t * h / s.sp_div
    fc1_in = 0 if "layernorm" in modules and "mlp" not in modules else s.linear_input * t * h / s.sp_div
    masks = 2 * t * h / s.sp_div if hidden_dropout else 0
    mlp = _mlp(m, s, m.ffn_hidden_size, t, s.tp, modules, "mlp", "mlp_act")
    return _attention(m, s, modules) + ln_in + fc1_in + mlp + masks


def moe_layer_bytes(m: ModelSpec, s: Shard, modules: frozenset[str], hidden_dropout: bool = False) -> Any:
    """A layer with routed experts (and shared experts when the model has them)."""
    assert m.moe is not None
    moe, t, h = m.moe, s.tokens, m.hidden_size
    ln_in = BF16 * t * h / s.sp_div
    moe_in = 0 if "layernorm" in modules and "moe" not in modules else BF16 * t * h / s.sp_div
    masks = 2 * t * h / s.sp_div if hidden_dropout else 0
    if "moe" in modules:
        return _attention(m, s, modules) + ln_in + moe_in + masks
    router = 2 * FP32 * t * moe.num_experts / s.tp  # fp32 logits and probabilities
    # Balanced dropless routing: every GPU of a stage sees tokens * top-k * ETP / TP expert-tokens
    # (the ETP group gathers its tokens; each member computes 1/ETP of every expert's width).
    routed_tokens = t * moe.router_topk * s.etp / s.tp
    # expert fc1 input and expert output (kept for the probability product)
    routed = (s.linear_input + BF16) * routed_tokens * h
    routed += _mlp(m, s, moe.moe_ffn_hidden_size, routed_tokens, s.etp, modules, "moe", "moe_act")
    shared = 0
    if moe.shared_expert_ffn_hidden_size:
        shared = _mlp(m, s, moe.shared_expert_ffn_hidden_size, t, s.tp, modules, "shared_experts", "shared_act")
    return _attention(m, s, modules) + ln_in + moe_in + router + routed + shared + masks


def layer_input_bytes(m: ModelSpec, s: Shard) -> Any:
    """What full recompute keeps per layer: its input (sequence-sharded with SP)."""
    return BF16 * s.tokens * m.hidden_size / s.sp_div


def logits_bytes(m: ModelSpec, s: Shard, padded_vocab: Any) -> Any:
    """Last stage, one micro-batch: final-norm and output-layer inputs, bf16 logits and the fp32 copy
    vocab_parallel_cross_entropy works in (it keeps the softmax for backward, cross_entropy.py)."""
    t, h = s.tokens, m.hidden_size
    return 2 * BF16 * t * h / s.sp_div + (BF16 + FP32) * t * padded_vocab / s.tp
