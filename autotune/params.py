"""Parameter counts from a ModelSpec, module by module, as Megatron Core's GPTModel allocates them.

The per-layer pieces are exposed separately because the memory model shards them differently:
TP shards attention and dense-MLP weights, EP x ETP shards routed experts, norms and the router are
replicated. Module shapes follow megatron/core/transformer/{attention.py,multi_latent_attention.py,
mlp.py,moe/*.py} and megatron/core/models/gpt/gpt_model.py (megatron-core 0.16.1).
"""

from __future__ import annotations

from dataclasses import dataclass

from autotune.model_spec import ModelSpec


def norm_params(spec: ModelSpec, width: int) -> int:
    """RMSNorm has a weight; LayerNorm a weight and a bias."""
    return width * (2 if spec.normalization == "LayerNorm" else 1)


def mlp_params(spec: ModelSpec, hidden: int, ffn: int, bias: bool) -> int:
    """fc1 (doubled for the gated SwiGLU gate+up projection) plus fc2."""
    fc1_out = ffn * (2 if spec.gated_mlp else 1)
    return hidden * fc1_out + ffn * hidden + ((fc1_out + hidden) if bias else 0)


@dataclass(frozen=True, kw_only=True)
class LayerParams:
    """Parameters of one transformer layer, split by how parallelism shards them."""

    attention: int  # TP-sharded projections (qkv/MLA projections and output projection), with their biases
    attention_replicated: int  # layernorms inside attention (qk-norm, MLA q/kv norms): not TP-sharded
    mlp: int  # dense MLP or shared experts: TP-sharded
    routed_experts: int  # all routed experts of the layer: EP x ETP-sharded
    active_routed_experts: int  # the top-k experts a token passes through
    router: int  # replicated
    norms: int  # input and pre-MLP layernorms: replicated

    @property
    def total(self) -> int:
        return self.attention + self.attention_replicated + self.mlp + self.routed_experts + self.router + self.norms

    @property
    def active(self) -> int:
        return self.total - self.routed_experts + self.active_routed_experts


def attention_params(spec: ModelSpec) -> tuple[int, int]:
    """(TP-sharded projection params, replicated norm params) of one self-attention block."""
    h = spec.hidden_size
    if spec.mla is not None:
        m, n = spec.mla, spec.num_attention_heads
        q_head = m.qk_head_dim + m.qk_pos_emb_head_dim
        if m.q_lora_rank is None:
            q = h * n * q_head
            q_norm = 0
        else:
            q = h * m.q_lora_rank + m.q_lora_rank * n * q_head
            q_norm = norm_params(spec, m.q_lora_rank)
        # The KV down-projection also emits the shared rotary key (kv_lora_rank + rope dim).
        kv = h * (m.kv_lora_rank + m.qk_pos_emb_head_dim) + m.kv_lora_rank * n * (m.qk_head_dim + m.v_head_dim)
        out = n * m.v_head_dim * h + (h if spec.add_bias_linear else 0)
        return q + kv + out, q_norm + norm_params(spec, m.kv_lora_rank)
    qkv_out = spec.query_projection_size + 2 * spec.kv_projection_size
    qkv = h * qkv_out + (qkv_out if (spec.add_bias_linear or spec.add_qkv_bias) else 0)
    proj = spec.query_projection_size * h + (h if spec.add_bias_linear else 0)
    qk_norm = 2 * norm_params(spec, spec.kv_channels) if spec.qk_layernorm else 0
    return qkv + proj, qk_norm


def layer_params(spec: ModelSpec, is_moe: bool) -> LayerParams:
    attn, attn_repl = attention_params(spec)
    h = spec.hidden_size
    norms = 2 * norm_params(spec, h)
    if not is_moe or spec.moe is None:
        return LayerParams(
            attention=attn, attention_replicated=attn_repl, norms=norms,
            mlp=mlp_params(spec, h, spec.ffn_hidden_size, spec.add_bias_linear),
            routed_experts=0, active_routed_experts=0, router=0,
        )
    moe = spec.moe
    one_expert = mlp_params(spec, h, moe.moe_ffn_hidden_size, spec.add_bias_linear)
    shared = mlp_params(spec, h, moe.shared_expert_ffn_hidden_size, False) if moe.shared_expert_ffn_hidden_size else 0
    return LayerParams(
        attention=attn, attention_replicated=attn_repl, norms=norms, mlp=shared,
        routed_experts=moe.num_experts * one_expert, active_routed_experts=moe.router_topk * one_expert,
        router=moe.num_experts * h,
    )


@dataclass(frozen=True, kw_only=True)
class ParamCounts:
    total: int
    active: int
    embedding: int  # input embedding (+ learned positions)
    output_layer: int  # 0 when tied
    transformer: int  # all layers plus the final norm


def count_parameters(spec: ModelSpec, vocab_size: int | None = None) -> ParamCounts:
    """Whole-model counts. `vocab_size` lets callers pass Megatron's padded vocabulary."""
    v = spec.vocab_size if vocab_size is None else vocab_size
    h = spec.hidden_size
    embedding = v * h + (spec.max_position_embeddings * h if spec.position_embedding_type == "learned_absolute" else 0)
    output = 0 if spec.tie_embeddings else v * h
    dense, moe = layer_params(spec, False), layer_params(spec, True)
    final_norm = norm_params(spec, h)
    transformer = spec.num_dense_layers * dense.total + spec.num_moe_layers * moe.total + final_norm
    active_transformer = spec.num_dense_layers * dense.active + spec.num_moe_layers * moe.active + final_norm
    return ParamCounts(
        total=embedding + output + transformer,
        active=embedding + output + active_transformer,
        embedding=embedding,
        output_layer=output,
        transformer=transformer,
    )
