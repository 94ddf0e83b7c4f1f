"""The built-in model catalog.

Architectures are copied from ../shared/refdata/models.yaml (which cites HF config.json fixtures in
Megatron-Bridge tests, Megatron-Bridge providers, NeMo configs and the model papers); the per-model
`source` says which. `deepseek-v2` is not in that file: it comes from the DeepSeek-V2 paper
(arXiv 2405.04434, Sec. 3.1) and the deepseek-ai/DeepSeek-V2 HF config (60 layers, hidden 5120,
128 heads, q_lora 1536, kv_lora 512, 160 routed + 2 shared experts of 1536, top-6, 1 dense layer).

The catalog is plain Python data: no file is read at import time.
"""

from __future__ import annotations

import difflib

from autotune.errors import UnknownNameError
from autotune.model_spec import MLASpec, MoESpec, ModelSpec

_DSV3_MLA = MLASpec(q_lora_rank=1536, kv_lora_rank=512, qk_head_dim=128, qk_pos_emb_head_dim=64, v_head_dim=128)
_LITE_MLA = MLASpec(q_lora_rank=None, kv_lora_rank=512, qk_head_dim=128, qk_pos_emb_head_dim=64, v_head_dim=128)
_REF = "shared/refdata/models.yaml"


def _llama(name: str, layers: int, hidden: int, ffn: int, heads: int, total: float, pos: int) -> ModelSpec:
    return ModelSpec(
        name=name, num_layers=layers, hidden_size=hidden, ffn_hidden_size=ffn, num_attention_heads=heads,
        num_query_groups=8, kv_channels=128, vocab_size=128256, tie_embeddings=False,
        max_position_embeddings=pos, published_total_params=total,
        source=f"{_REF} (Llama 3 Herd, arXiv 2407.21783 Table 3)",
    )


def _qwen3_moe(name: str, layers: int, hidden: int, heads: int, ffn: int, moe_ffn: int, total: float,
               active: float) -> ModelSpec:
    return ModelSpec(
        name=name, num_layers=layers, hidden_size=hidden, ffn_hidden_size=ffn, num_attention_heads=heads,
        num_query_groups=4, kv_channels=128, vocab_size=151936, tie_embeddings=False, qk_layernorm=True,
        max_position_embeddings=40960,
        moe=MoESpec(num_experts=128, router_topk=8, moe_ffn_hidden_size=moe_ffn),
        published_total_params=total, published_active_params=active,
        source=f"{_REF} (HF config fixture in Megatron-Bridge test_qwen3_moe_bridge.py)",
    )


def _build_catalog() -> dict[str, ModelSpec]:
    specs = [
        _llama("llama3-8b", 32, 4096, 14336, 32, 8.0e9, 8192),
        _llama("llama3-70b", 80, 8192, 28672, 64, 70.0e9, 8192),
        _llama("llama3.1-405b", 126, 16384, 53248, 128, 405.0e9, 131072),
        ModelSpec(
            name="gpt3-175b", num_layers=96, hidden_size=12288, ffn_hidden_size=49152, num_attention_heads=96,
            num_query_groups=96, kv_channels=128, vocab_size=51200, tie_embeddings=True, activation="gelu",
            normalization="LayerNorm", add_bias_linear=True, position_embedding_type="learned_absolute",
            max_position_embeddings=2048, published_total_params=174.6e9,
            source=f"{_REF} (Narayanan et al. 2021, arXiv 2104.04473 Table 2; Korthikanti et al. 2022)",
        ),
        ModelSpec(
            name="mixtral-8x7b", num_layers=32, hidden_size=4096, ffn_hidden_size=14336, num_attention_heads=32,
            num_query_groups=8, kv_channels=128, vocab_size=32000, tie_embeddings=False,
            max_position_embeddings=32768,
            moe=MoESpec(num_experts=8, router_topk=2, moe_ffn_hidden_size=14336),
            published_total_params=46.7e9, published_active_params=12.9e9,
            source=f"{_REF} (Megatron-Bridge MixtralModelProvider; Mistral announcement 46.7B/12.9B)",
        ),
        ModelSpec(
            name="mixtral-8x22b", num_layers=56, hidden_size=6144, ffn_hidden_size=16384, num_attention_heads=48,
            num_query_groups=8, kv_channels=128, vocab_size=32000, tie_embeddings=False,
            max_position_embeddings=65536,
            moe=MoESpec(num_experts=8, router_topk=2, moe_ffn_hidden_size=16384),
            published_total_params=141e9, published_active_params=39e9,
            source=f"{_REF} (NeMo MixtralConfig8x22B; vocab and positions marked uncertain there)",
        ),
        ModelSpec(
            name="deepseek-v3", num_layers=61, hidden_size=7168, ffn_hidden_size=18432, num_attention_heads=128,
            num_query_groups=128, kv_channels=128, vocab_size=129280, tie_embeddings=False,
            max_position_embeddings=163840, mla=_DSV3_MLA, mtp_num_layers=1,
            moe=MoESpec(num_experts=256, router_topk=8, moe_ffn_hidden_size=2048,
                        shared_expert_ffn_hidden_size=2048, num_dense_layers=3),
            published_total_params=671e9, published_active_params=37e9,
            source=f"{_REF} (HF config fixture in Megatron-Bridge test_deepseek_bridges.py; arXiv 2412.19437)",
        ),
        ModelSpec(
            name="deepseek-v2", num_layers=60, hidden_size=5120, ffn_hidden_size=12288, num_attention_heads=128,
            num_query_groups=128, kv_channels=128, vocab_size=102400, tie_embeddings=False,
            max_position_embeddings=163840, mla=_DSV3_MLA,
            moe=MoESpec(num_experts=160, router_topk=6, moe_ffn_hidden_size=1536,
                        shared_expert_ffn_hidden_size=3072, num_dense_layers=1),
            published_total_params=236e9, published_active_params=21e9,
            source="DeepSeek-V2 paper arXiv 2405.04434 Sec. 3.1 and HF deepseek-ai/DeepSeek-V2 config (236B/21B)",
        ),
        ModelSpec(
            name="deepseek-v2-lite", num_layers=27, hidden_size=2048, ffn_hidden_size=10944,
            num_attention_heads=16, num_query_groups=16, kv_channels=128, vocab_size=102400,
            tie_embeddings=False, max_position_embeddings=163840, mla=_LITE_MLA,
            moe=MoESpec(num_experts=64, router_topk=6, moe_ffn_hidden_size=1408,
                        shared_expert_ffn_hidden_size=2816, num_dense_layers=1),
            published_total_params=15.7e9, published_active_params=2.4e9,
            source=f"{_REF} (Megatron-Bridge DeepSeekV2LiteModelProvider; arXiv 2405.04434 appendix)",
        ),
        ModelSpec(
            name="qwen3-8b", num_layers=36, hidden_size=4096, ffn_hidden_size=12288, num_attention_heads=32,
            num_query_groups=8, kv_channels=128, vocab_size=151936, tie_embeddings=False, qk_layernorm=True,
            max_position_embeddings=40960, published_total_params=8.2e9,
            source=f"{_REF} (Megatron-Bridge Qwen3ModelProvider8B)",
        ),
        _qwen3_moe("qwen3-30b-a3b", 48, 2048, 32, 6144, 768, 30.5e9, 3.3e9),
        _qwen3_moe("qwen3-235b", 94, 4096, 64, 12288, 1536, 235e9, 22e9),
        ModelSpec(
            name="olmoe-1b-7b", num_layers=16, hidden_size=2048, ffn_hidden_size=1024, num_attention_heads=16,
            num_query_groups=16, kv_channels=128, vocab_size=50304, tie_embeddings=False, qk_layernorm=True,
            max_position_embeddings=4096,
            moe=MoESpec(num_experts=64, router_topk=8, moe_ffn_hidden_size=1024),
            published_total_params=6.9e9, published_active_params=1.3e9,
            source=f"{_REF} (HF config fixture in Megatron-Bridge test_olmoe_bridge.py; OLMoE paper "
                   "arXiv 2409.02060: 6.9B total, 1.3B active)",
        ),
        ModelSpec(
            name="moonlight-16b-a3b", num_layers=27, hidden_size=2048, ffn_hidden_size=11264,
            num_attention_heads=16, num_query_groups=16, kv_channels=128, vocab_size=163840,
            tie_embeddings=False, max_position_embeddings=4096, mla=_LITE_MLA,
            moe=MoESpec(num_experts=64, router_topk=6, moe_ffn_hidden_size=1408,
                        shared_expert_ffn_hidden_size=2816, num_dense_layers=1),
            published_total_params=16e9, published_active_params=3e9,
            source=f"{_REF} (Megatron-Bridge MoonlightModelProvider16B)",
        ),
        ModelSpec(
            name="glm4.5-air", num_layers=46, hidden_size=4096, ffn_hidden_size=10944, num_attention_heads=96,
            num_query_groups=8, kv_channels=128, vocab_size=151552, tie_embeddings=False, add_qkv_bias=True,
            max_position_embeddings=131072, mtp_num_layers=1,
            moe=MoESpec(num_experts=128, router_topk=8, moe_ffn_hidden_size=1408,
                        shared_expert_ffn_hidden_size=1408, num_dense_layers=1),
            published_total_params=106e9, published_active_params=12e9,
            source=f"{_REF} (Megatron-Bridge GLM45AirModelProvider106B)",
        ),
        ModelSpec(
            name="glm4.5", num_layers=92, hidden_size=5120, ffn_hidden_size=12288, num_attention_heads=96,
            num_query_groups=8, kv_channels=128, vocab_size=151552, tie_embeddings=False, add_qkv_bias=True,
            qk_layernorm=True, max_position_embeddings=131072, mtp_num_layers=1,
            moe=MoESpec(num_experts=160, router_topk=8, moe_ffn_hidden_size=1536,
                        shared_expert_ffn_hidden_size=1536, num_dense_layers=3),
            published_total_params=355e9, published_active_params=32e9,
            source=f"{_REF} (Megatron-Bridge GLM45ModelProvider355B; GLM-4.5 report arXiv 2508.06471)",
        ),
        ModelSpec(
            name="kimi-k2", num_layers=61, hidden_size=7168, ffn_hidden_size=18432, num_attention_heads=64,
            num_query_groups=64, kv_channels=128, vocab_size=163840, tie_embeddings=False,
            max_position_embeddings=131072, mla=_DSV3_MLA,
            moe=MoESpec(num_experts=384, router_topk=8, moe_ffn_hidden_size=2048,
                        shared_expert_ffn_hidden_size=2048, num_dense_layers=1),
            published_total_params=1.04e12, published_active_params=32e9,
            source=f"{_REF} (Megatron-Bridge KimiK2Provider; headline totals marked uncertain there)",
        ),
        ModelSpec(
            name="nemotron4-340b", num_layers=96, hidden_size=18432, ffn_hidden_size=73728,
            num_attention_heads=96, num_query_groups=8, kv_channels=192, vocab_size=256000,
            tie_embeddings=False, activation="squared_relu", normalization="LayerNorm",
            max_position_embeddings=4096, published_total_params=340e9,
            source=f"{_REF} (NeMo Nemotron4Config340B; arXiv 2406.11704)",
        ),
        # Tiny models: shaped to exercise every rule (heads 8 -> TP up to 8, 2 query groups -> KV
        # replication at TP 4, a vocab that needs padding, 6 layers -> uneven pipeline splits) while
        # training on CPU in seconds.
        ModelSpec(
            name="tiny-dense", num_layers=8, hidden_size=64, ffn_hidden_size=192, num_attention_heads=8,
            num_query_groups=4, kv_channels=8, vocab_size=1000, tie_embeddings=False,
            max_position_embeddings=512, source="autotune test model",
        ),
        ModelSpec(
            name="tiny-moe", num_layers=6, hidden_size=64, ffn_hidden_size=128, num_attention_heads=8,
            num_query_groups=2, kv_channels=8, vocab_size=1000, tie_embeddings=False, qk_layernorm=True,
            max_position_embeddings=512,
            moe=MoESpec(num_experts=8, router_topk=2, moe_ffn_hidden_size=48),
            source="autotune test model",
        ),
    ]
    return {s.name: s for s in specs}


_CATALOG: dict[str, ModelSpec] = _build_catalog()

ALIASES: dict[str, str] = {
    "qwen3-235b-a22b": "qwen3-235b",
    "llama3-1-405b": "llama3.1-405b",
    "llama31-405b": "llama3.1-405b",
    "gpt3": "gpt3-175b",
    "glm-4.5": "glm4.5",
    "glm-4.5-air": "glm4.5-air",
    "glm45-air": "glm4.5-air",
    "glm45": "glm4.5",
    "kimi-k2-instruct": "kimi-k2",
    "moonlight": "moonlight-16b-a3b",
    "olmoe": "olmoe-1b-7b",
    "nemotron-4-340b": "nemotron4-340b",
    "deepseek-v2-236b": "deepseek-v2",
}


def model_names() -> list[str]:
    return list(_CATALOG)


def aliases_of(name: str) -> list[str]:
    return [alias for alias, target in ALIASES.items() if target == name]


def get_model(name: str) -> ModelSpec:
    """Look up a catalog model by name or alias (case-insensitive)."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key in _CATALOG:
        return _CATALOG[key]
    close = difflib.get_close_matches(key, list(_CATALOG) + list(ALIASES), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise UnknownNameError(
        f"unknown model '{name}': {hint}run `autotune models` for the catalog, or pass a path to an HF config.json"
    )
