"""Model FLOPs: the useful arithmetic of one training step, independent of how it is parallelised.

Convention (the one Megatron-LM uses for "model TFLOP/s/GPU" since commit 8873b55d6a, 2025-03-06,
megatron/training/training.py::num_floating_point_operations; summarised in
shared/refdata/FORMULAS.md §3):
- GEMMs only, 2 FLOPs per multiply-add; backward = 2 x forward (dgrad + wgrad), so a step is 3 x forward.
- The core-attention term (QK^T and AV) is HALVED for causal masks by default (`causal=True`). Pass
  `causal=False` for the older convention (full s^2) that Korthikanti et al. 2022 Eq. 7, Megatron-LM
  before 2025-03 and NeMo before 2025-06 used; FORMULAS.md §3 shows why published TFLOP/s moved.
- Recompute is NOT counted (model FLOPs, not hardware FLOPs); the cost model adds it as time.
- The MoE router, norms, activations and the embedding lookup are not counted (as in Megatron).
- MTP adds one more logits GEMM per MTP layer plus its 2h->h projection, and counts each MTP layer as one
  more decoder layer of the last layer's kind (MoE in an MoE model), as Megatron's formula does
  (num_floating_point_operations: num_moe_layers += last_layer_is_moe * mtp_num_layers).
"""

from __future__ import annotations

from dataclasses import dataclass

from autotune.model_spec import ModelSpec


def mlp_factor(model: ModelSpec) -> int:
    """GEMM widths per ffn unit: SwiGLU has gate, up and down projections (3), GELU/ReLU^2 two."""
    return 3 if model.gated_mlp else 2


def attention_linear_flops_per_token(model: ModelSpec) -> float:
    """Forward FLOPs of the attention projections (QKV or the MLA LoRA projections, and the output)."""
    h = model.hidden_size
    if model.mla is not None:
        m, n = model.mla, model.num_attention_heads
        q_head = m.qk_head_dim + m.qk_pos_emb_head_dim
        q = h * n * q_head if m.q_lora_rank is None else m.q_lora_rank * (h + n * q_head)
        kv = m.kv_lora_rank * (h + n * (m.qk_head_dim + m.v_head_dim)) + h * m.qk_pos_emb_head_dim
        return 2.0 * (q + kv + n * m.v_head_dim * h)
    q, kv = model.query_projection_size, model.kv_projection_size
    return 2.0 * (h * (q + 2 * kv) + q * h)


def core_attention_flops_per_token(model: ModelSpec, seq_length: int, causal: bool = True) -> float:
    """Forward FLOPs of QK^T and AV for one token attending over a sequence of `seq_length`."""
    if model.mla is not None:
        m = model.mla
        width = model.num_attention_heads * (m.qk_head_dim + m.qk_pos_emb_head_dim + m.v_head_dim)
    else:
        width = 2 * model.query_projection_size  # QK^T over kv_channels*heads, AV the same
    return 2.0 * seq_length * width * (0.5 if causal else 1.0)


def dense_mlp_flops_per_token(model: ModelSpec) -> float:
    return 2.0 * model.hidden_size * model.ffn_hidden_size * mlp_factor(model)


def moe_mlp_flops_per_token(model: ModelSpec) -> float:
    """Routed top-k experts plus shared experts (router excluded, as in Megatron)."""
    moe = model.moe
    if moe is None:
        return 0.0
    width = moe.moe_ffn_hidden_size * moe.router_topk + moe.shared_expert_ffn_hidden_size
    return 2.0 * model.hidden_size * width * mlp_factor(model)


def logits_flops_per_token(model: ModelSpec, vocab_size: int | None = None) -> float:
    v = model.vocab_size if vocab_size is None else vocab_size
    h = model.hidden_size
    return 2.0 * h * v * (1 + model.mtp_num_layers) + 2.0 * model.mtp_num_layers * (3 * h + 2 * h * h)


@dataclass(frozen=True, kw_only=True)
class FlopsBreakdown:
    """Model FLOPs of one token, forward + backward (3 x forward), by part."""

    attention_linear: float
    core_attention: float
    mlp: float  # dense MLPs and MoE (routed top-k + shared)
    logits: float

    @property
    def total(self) -> float:
        return self.attention_linear + self.core_attention + self.mlp + self.logits


def model_flops_per_token(model: ModelSpec, seq_length: int, causal: bool = True,
                          vocab_size: int | None = None) -> FlopsBreakdown:
    """Forward + backward model FLOPs per trained token (every sample `seq_length` long)."""
    mtp = model.mtp_num_layers
    L = model.num_layers + mtp
    moe_layers = model.num_moe_layers + (mtp if model.is_moe else 0)
    dense_layers = model.num_dense_layers + (0 if model.is_moe else mtp)
    return FlopsBreakdown(
        attention_linear=3 * L * attention_linear_flops_per_token(model),
        core_attention=3 * L * core_attention_flops_per_token(model, seq_length, causal),
        mlp=3 * (dense_layers * dense_mlp_flops_per_token(model) + moe_layers * moe_mlp_flops_per_token(model)),
        logits=3 * logits_flops_per_token(model, vocab_size),
    )


def model_flops_per_iteration(model: ModelSpec, seq_length: int, global_batch_size: int, causal: bool = True,
                              vocab_size: int | None = None) -> float:
    """Model FLOPs of one optimizer step over `global_batch_size` sequences."""
    return model_flops_per_token(model, seq_length, causal, vocab_size).total * seq_length * global_batch_size
