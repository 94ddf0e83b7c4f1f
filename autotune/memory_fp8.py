"""Resident bytes of the GEMM weights when Transformer Engine runs the linear layers in FP8.

What TE keeps per GEMM weight element (TransformerEngine @ d0067d0d, Megatron-LM @ d98e8a64):
- FP8 primary weights (Megatron --fp8-param-gather / fp8_param; Megatron-Bridge's FP8 recipes set
  fp8_param_gather=True, training/mixed_precision.py bf16_with_fp8_{current,delayed}_scaling_mixed):
  the parameter is a Float8Tensor whose 1-byte data lives in the DDP param buffer (uint8,
  megatron/core/distributed/param_and_grad_buffer.py:923). GPUs without non-TN FP8 GEMMs (Hopper, Ada:
  transformer_engine/pytorch/utils.py:658-663 is_non_tn_fp8_gemm_supported) also need the transposed
  data for the dgrad GEMM: post_all_gather_processing creates it after every parameter all-gather
  (pytorch/tensor/utils.py:1423-1427) and the backward pass keeps it on the parameter
  (module/linear.py:1051, update_usage in tensor/storage/float8_tensor_storage.py:279-317 only drops it
  when asked for rowwise-only). So 1 + 1 bytes on Hopper, 1 byte on Blackwell.
- bf16 weights: 2 bytes, plus the FP8 copy TE makes for the GEMMs (module/linear.py:475-490: rowwise and,
  for the backward pass, columnwise usage). Megatron passes is_first_microbatch
  (megatron/core/extensions/transformer_engine.py:1339), so TE caches that copy on the module across
  micro-batches (linear.py:1958 cache_name="weight"): one persistent copy, 1 byte (+1 transposed on
  Hopper).
Not modelled: MXFP8/NVFP4/blockwise recipes (per-block scales, both directions on every GPU),
disable_parameter_transpose_cache without fp8_param (then every in-flight micro-batch keeps its own copy),
and delayed scaling's amax histories (amax_history_len fp32 values per quantizer).

Embeddings, the output layer (Megatron's own ColumnParallelLinear), norms, routers and biases stay bf16.
Works on ints and numpy arrays alike.
"""

from __future__ import annotations

from typing import Any

from autotune.model_spec import ModelSpec

BF16 = 2
FP8 = 1
# CUDA compute capability by GPU family (catalog names start with the family).
_COMPUTE_CAPABILITY = {"h100": (9, 0), "h200": (9, 0), "h800": (9, 0), "l40": (8, 9), "b200": (10, 0),
                       "gb200": (10, 0), "b300": (10, 3), "gb300": (10, 3)}


def needs_fp8_transpose(gpu_name: str) -> bool:
    """Whether FP8 GEMMs need a transposed copy of their operands (TE utils.py:658-663); unknown -> yes."""
    name = gpu_name.lower()
    cc = next((v for k, v in sorted(_COMPUTE_CAPABILITY.items(), key=lambda kv: -len(kv[0]))
               if name.startswith(k)), None)
    if cc is None:
        return True
    return not ((10, 0) <= cc < (12, 0) or cc >= (13, 0))


def gemm_weight_bytes_per_element(fp8: bool, fp8_param: bool, transpose: bool) -> int:
    """Resident bytes per GEMM weight element (see the module docstring)."""
    if not fp8:
        return BF16
    fp8_copy = FP8 + (FP8 if transpose else 0)
    return fp8_copy if fp8_param else BF16 + fp8_copy


def _mlp_gemm(m: ModelSpec, ffn: int) -> int:
    return m.hidden_size * ffn * (2 if m.gated_mlp else 1) + ffn * m.hidden_size


def _attention_gemm(m: ModelSpec) -> tuple[int, int]:
    """(TP-sharded, replicated) attention GEMM weight elements of one layer, biases excluded."""
    h = m.hidden_size
    if m.mla is not None:
        a, n = m.mla, m.num_attention_heads
        q_head = a.qk_head_dim + a.qk_pos_emb_head_dim
        q_up = n * q_head * (h if a.q_lora_rank is None else a.q_lora_rank)
        kv_up = a.kv_lora_rank * n * (a.qk_head_dim + a.v_head_dim)
        down = h * ((a.q_lora_rank or 0) + a.kv_lora_rank + a.qk_pos_emb_head_dim)  # replicated (TE spec)
        return q_up + kv_up + n * a.v_head_dim * h, down
    return h * (m.query_projection_size + 2 * m.kv_projection_size) + m.query_projection_size * h, 0


def gemm_weight_elements(m: ModelSpec, n_dense: Any, n_moe: Any, tp: Any, ep_etp: Any) -> Any:
    """GEMM weight elements one GPU holds for `n_dense` dense and `n_moe` MoE layers."""
    attn_tp, attn_repl = _attention_gemm(m)
    dense = (attn_tp + _mlp_gemm(m, m.ffn_hidden_size)) / tp + attn_repl
    if m.moe is None:
        return n_dense * dense
    shared = _mlp_gemm(m, m.moe.shared_expert_ffn_hidden_size) if m.moe.shared_expert_ffn_hidden_size else 0
    moe = (attn_tp + shared) / tp + attn_repl + m.moe.num_experts * _mlp_gemm(m, m.moe.moe_ffn_hidden_size) / ep_etp
    return n_dense * dense + n_moe * moe
