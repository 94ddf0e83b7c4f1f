"""Read a Hugging Face `config.json` into a ModelSpec.

The JSON is parsed here, by field name: no transformers import and no remote code, so a config file
can never execute anything. Field mappings follow each family's HF configuration class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from autotune.errors import SpecFileError
from autotune.model_spec import MLASpec, MoESpec, ModelSpec


def _require(cfg: dict[str, Any], key: str, path: Path) -> Any:
    if key not in cfg or cfg[key] is None:
        raise SpecFileError(f"{path}: missing required field '{key}' for model_type '{cfg.get('model_type')}'")
    return cfg[key]


def _common(cfg: dict[str, Any], path: Path) -> dict[str, Any]:
    hidden = _require(cfg, "hidden_size", path)
    heads = _require(cfg, "num_attention_heads", path)
    return dict(
        name=str(path),
        num_layers=_require(cfg, "num_hidden_layers", path),
        hidden_size=hidden,
        ffn_hidden_size=_require(cfg, "intermediate_size", path),
        num_attention_heads=heads,
        num_query_groups=cfg.get("num_key_value_heads") or heads,
        kv_channels=cfg.get("head_dim") or hidden // heads,
        vocab_size=_require(cfg, "vocab_size", path),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position_embeddings=cfg.get("max_position_embeddings", 4096),
        activation="swiglu" if cfg.get("hidden_act", "silu") in ("silu", "swish") else "gelu",
        source=f"HF config.json at {path}",
    )


def _llama(cfg: dict[str, Any], path: Path) -> ModelSpec:
    return ModelSpec(**_common(cfg, path), add_qkv_bias=bool(cfg.get("attention_bias", False)))


def _qwen2(cfg: dict[str, Any], path: Path) -> ModelSpec:
    # Qwen2 always has a QKV bias; its HF config has no field for it.
    return ModelSpec(**_common(cfg, path), add_qkv_bias=True)


def _qwen3(cfg: dict[str, Any], path: Path) -> ModelSpec:
    return ModelSpec(**_common(cfg, path), qk_layernorm=True, add_qkv_bias=bool(cfg.get("attention_bias", False)))


def _moe(cfg: dict[str, Any], path: Path, experts_key: str, ffn_key: str, dense_layers: int = 0,
         shared: int = 0) -> MoESpec:
    return MoESpec(
        num_experts=_require(cfg, experts_key, path),
        router_topk=_require(cfg, "num_experts_per_tok", path),
        moe_ffn_hidden_size=_require(cfg, ffn_key, path),
        shared_expert_ffn_hidden_size=shared,
        num_dense_layers=dense_layers,
    )


def _mixtral(cfg: dict[str, Any], path: Path) -> ModelSpec:
    # Mixtral's experts use intermediate_size; there is no dense MLP.
    return ModelSpec(**_common(cfg, path), moe=_moe(cfg, path, "num_local_experts", "intermediate_size"))


def _qwen3_moe(cfg: dict[str, Any], path: Path) -> ModelSpec:
    if cfg.get("mlp_only_layers") or cfg.get("decoder_sparse_step", 1) != 1:
        raise SpecFileError(f"{path}: qwen3_moe with mlp_only_layers/decoder_sparse_step != 1 is not supported")
    return ModelSpec(**_common(cfg, path), qk_layernorm=True,
                     moe=_moe(cfg, path, "num_experts", "moe_intermediate_size"))


def _olmoe(cfg: dict[str, Any], path: Path) -> ModelSpec:
    return ModelSpec(**_common(cfg, path), qk_layernorm=True,
                     moe=_moe(cfg, path, "num_experts", "intermediate_size"))


def _deepseek(cfg: dict[str, Any], path: Path) -> ModelSpec:
    common = _common(cfg, path)
    moe_ffn = _require(cfg, "moe_intermediate_size", path)
    moe = None
    if cfg.get("n_routed_experts"):
        moe = _moe(cfg, path, "n_routed_experts", "moe_intermediate_size",
                   dense_layers=cfg.get("first_k_dense_replace", 0),
                   shared=(cfg.get("n_shared_experts") or 0) * moe_ffn)
    mla = MLASpec(
        q_lora_rank=cfg.get("q_lora_rank"),
        kv_lora_rank=_require(cfg, "kv_lora_rank", path),
        qk_head_dim=_require(cfg, "qk_nope_head_dim", path),
        qk_pos_emb_head_dim=_require(cfg, "qk_rope_head_dim", path),
        v_head_dim=_require(cfg, "v_head_dim", path),
    )
    common["kv_channels"] = mla.qk_head_dim
    return ModelSpec(**common, mla=mla, moe=moe, mtp_num_layers=cfg.get("num_nextn_predict_layers") or 0)


def _glm4_moe(cfg: dict[str, Any], path: Path) -> ModelSpec:
    moe_ffn = _require(cfg, "moe_intermediate_size", path)
    return ModelSpec(
        **_common(cfg, path),
        add_qkv_bias=bool(cfg.get("attention_bias", False)),
        qk_layernorm=bool(cfg.get("use_qk_norm", False)),
        mtp_num_layers=cfg.get("num_nextn_predict_layers") or 0,
        moe=_moe(cfg, path, "n_routed_experts", "moe_intermediate_size",
                 dense_layers=cfg.get("first_k_dense_replace", 0),
                 shared=(cfg.get("n_shared_experts") or 0) * moe_ffn),
    )


PARSERS: dict[str, Callable[[dict[str, Any], Path], ModelSpec]] = {
    "llama": _llama,
    "mistral": _llama,
    "mixtral": _mixtral,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
    "qwen3_moe": _qwen3_moe,
    "deepseek_v2": _deepseek,
    "deepseek_v3": _deepseek,
    "olmoe": _olmoe,
    "glm4_moe": _glm4_moe,
}


def looks_like_path(model: str) -> bool:
    return model.endswith(".json") or "/" in model or Path(model).is_dir()


def load_hf_config(path: str | Path) -> ModelSpec:
    """Parse `path` (a config.json or a folder holding one) into a ModelSpec."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise SpecFileError(f"HF config not found: {p}; pass a config.json or a folder that holds one")
    try:
        cfg = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpecFileError(f"{p} is not valid JSON ({exc}); pass an HF config.json") from None
    if not isinstance(cfg, dict):
        raise SpecFileError(f"{p} must hold a JSON object, got {type(cfg).__name__}")
    model_type = cfg.get("model_type")
    if model_type not in PARSERS:
        raise SpecFileError(
            f"{p}: unsupported model_type '{model_type}'; supported: {', '.join(sorted(PARSERS))}"
        )
    try:
        return PARSERS[model_type](cfg, p)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise SpecFileError(f"{p}: bad value for {where}: {first['msg']}") from None
