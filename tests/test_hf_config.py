"""HF config.json parsing: each supported family maps to the same architecture as the catalog."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autotune.errors import SpecFileError
from autotune.hf_config import PARSERS, load_hf_config
from autotune.model_catalog import get_model
from autotune.params import count_parameters
from autotune.resolve import resolve_model

DATA = Path(__file__).resolve().parent / "data" / "hf"
ARCH_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "kv_channels", "vocab_size",
               "tie_embeddings", "activation", "qk_layernorm", "add_qkv_bias", "moe", "mla")


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.iterdir() if p.is_dir()))
def test_hf_config_matches_catalog(name):
    parsed, catalog = load_hf_config(DATA / name / "config.json"), get_model(name)
    for field in ARCH_FIELDS:
        assert getattr(parsed, field) == getattr(catalog, field), field
    assert count_parameters(parsed).total == count_parameters(catalog).total


def test_folder_holding_config_json_is_accepted():
    assert load_hf_config(DATA / "llama3-8b").num_layers == 32


def test_resolve_model_takes_paths_and_names():
    assert resolve_model(str(DATA / "mixtral-8x7b" / "config.json")).moe.num_experts == 8
    assert resolve_model("mixtral-8x7b").name == "mixtral-8x7b"


def test_every_required_family_is_supported():
    assert {"llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "deepseek_v2", "deepseek_v3", "olmoe",
            "glm4_moe"} <= set(PARSERS)


def test_unsupported_model_type_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba", "hidden_size": 8}))
    with pytest.raises(SpecFileError, match=r"unsupported model_type 'mamba'; supported: .*deepseek_v3.*qwen3_moe"):
        load_hf_config(tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(SpecFileError, match="HF config not found"):
        load_hf_config(tmp_path / "nope" / "config.json")


def test_malformed_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SpecFileError, match="is not valid JSON"):
        load_hf_config(tmp_path / "config.json")


def test_json_that_is_not_an_object(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(SpecFileError, match="must hold a JSON object"):
        load_hf_config(tmp_path / "config.json")


def test_missing_required_field(tmp_path):
    cfg = json.loads((DATA / "llama3-8b" / "config.json").read_text())
    del cfg["num_hidden_layers"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SpecFileError, match="missing required field 'num_hidden_layers'"):
        load_hf_config(tmp_path / "config.json")


def test_invalid_value_names_the_field(tmp_path):
    cfg = json.loads((DATA / "llama3-8b" / "config.json").read_text())
    cfg["num_hidden_layers"] = -3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SpecFileError, match="bad value for num_layers"):
        load_hf_config(tmp_path / "config.json")


def test_config_is_never_executed(tmp_path):
    """auto_map / remote-code entries are data only: parsing must not import anything they name."""
    cfg = json.loads((DATA / "llama3-8b" / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.Config"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "evil.py").write_text("raise SystemExit('executed')\n")
    assert load_hf_config(tmp_path).num_layers == 32
