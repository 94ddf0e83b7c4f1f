"""Turn CLI-level names into specs: a catalog name or an HF config path into a ModelSpec."""

from __future__ import annotations

from pathlib import Path

from autotune.hf_config import load_hf_config, looks_like_path
from autotune.model_catalog import get_model
from autotune.model_spec import ModelSpec


def resolve_model(model: str) -> ModelSpec:
    """A catalog name or alias, or a path to an HF config.json (or a folder holding one)."""
    if looks_like_path(model) or Path(model).exists():
        return load_hf_config(model)
    return get_model(model)
