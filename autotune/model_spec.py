"""What a model is, in the terms Megatron Core uses to build it.

Field names follow Megatron's `TransformerConfig` where one exists (`num_query_groups`, `kv_channels`,
`moe_ffn_hidden_size`, ...), so a spec maps onto a real `GPTModel` without translation tables.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from autotune.errors import ConfigError

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class MLASpec(BaseModel):
    """Multi-latent attention dimensions (DeepSeek-V2/V3 style), Megatron `MLATransformerConfig` names."""

    model_config = _FROZEN

    q_lora_rank: int | None = Field(description="query down-projection rank; None means a full q projection")
    kv_lora_rank: int = Field(gt=0, description="compressed KV rank")
    qk_head_dim: int = Field(gt=0, description="per-head q/k size without the rotary part (HF qk_nope_head_dim)")
    qk_pos_emb_head_dim: int = Field(gt=0, description="per-head rotary part (HF qk_rope_head_dim)")
    v_head_dim: int = Field(gt=0, description="per-head value size")


class MoESpec(BaseModel):
    """Mixture-of-experts shape. Layers after the leading dense ones are all MoE."""

    model_config = _FROZEN

    num_experts: int = Field(gt=1, description="routed experts per MoE layer (Megatron num_moe_experts)")
    router_topk: int = Field(gt=0, description="routed experts per token (Megatron moe_router_topk)")
    moe_ffn_hidden_size: int = Field(gt=0, description="intermediate size of one routed expert")
    shared_expert_ffn_hidden_size: int = Field(
        default=0, ge=0, description="total shared-expert intermediate size (moe_shared_expert_intermediate_size)"
    )
    num_dense_layers: int = Field(default=0, ge=0, description="leading dense layers (HF first_k_dense_replace)")

    @model_validator(mode="after")
    def _topk_le_experts(self) -> "MoESpec":
        if self.router_topk > self.num_experts:
            raise ConfigError(
                f"router_topk={self.router_topk} exceeds num_experts={self.num_experts}; top-k must be <= experts"
            )
        return self


class ModelSpec(BaseModel):
    """A decoder-only transformer, as Megatron Core's GPTModel builds it."""

    model_config = _FROZEN

    name: str = Field(description="catalog name or the path it was read from")
    num_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    ffn_hidden_size: int = Field(gt=0, description="dense MLP intermediate size (unused by MoE layers)")
    num_attention_heads: int = Field(gt=0)
    num_query_groups: int = Field(gt=0, description="KV heads; == heads means MHA")
    kv_channels: int = Field(gt=0, description="per-head size (HF head_dim); may differ from hidden/heads")
    vocab_size: int = Field(gt=0, description="unpadded tokenizer vocabulary")
    tie_embeddings: bool = Field(description="output layer shares the input embedding weights")
    activation: Literal["swiglu", "gelu", "squared_relu"] = "swiglu"
    normalization: Literal["RMSNorm", "LayerNorm"] = "RMSNorm"
    qk_layernorm: bool = False
    add_bias_linear: bool = Field(default=False, description="biases on every linear layer (GPT-3 style)")
    add_qkv_bias: bool = Field(default=False, description="bias on the QKV projection only (Qwen2, GLM)")
    position_embedding_type: Literal["rope", "learned_absolute"] = "rope"
    max_position_embeddings: int = Field(default=4096, gt=0)
    moe: MoESpec | None = None
    mla: MLASpec | None = None
    mtp_num_layers: int = Field(default=0, ge=0, description="multi-token-prediction layers (not counted in totals)")
    published_total_params: float | None = Field(default=None, description="headline total, for checks only")
    published_active_params: float | None = Field(default=None, description="headline active, for checks only")
    source: str = Field(default="", description="where the architecture was taken from")

    @model_validator(mode="after")
    def _self_consistent(self) -> "ModelSpec":
        if self.num_attention_heads % self.num_query_groups != 0:
            raise ConfigError(
                f"num_attention_heads={self.num_attention_heads} must be a multiple of "
                f"num_query_groups={self.num_query_groups}"
            )
        if self.moe is not None and self.moe.num_dense_layers >= self.num_layers:
            raise ConfigError(
                f"num_dense_layers={self.moe.num_dense_layers} leaves no MoE layer in {self.num_layers} layers"
            )
        return self

    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    @property
    def gated_mlp(self) -> bool:
        """SwiGLU has two input projections (gate and up); GELU and squared-ReLU have one."""
        return self.activation == "swiglu"

    @property
    def num_moe_layers(self) -> int:
        return 0 if self.moe is None else self.num_layers - self.moe.num_dense_layers

    @property
    def num_dense_layers(self) -> int:
        return self.num_layers - self.num_moe_layers

    @property
    def query_projection_size(self) -> int:
        return self.num_attention_heads * self.kv_channels

    @property
    def kv_projection_size(self) -> int:
        return self.num_query_groups * self.kv_channels

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSpec":
        return cls.model_validate(data)
