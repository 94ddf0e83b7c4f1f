"""Reading space YAML files (the only I/O on the pure side, kept out of space.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

from autotune.errors import SpecFileError
from autotune.model_spec import ModelSpec
from autotune.space import SearchSpace, parse_space

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"


def load_space_file(path: str | Path) -> SearchSpace:
    p = Path(path)
    if not p.is_file():
        raise SpecFileError(f"space file not found: {p}; pass a YAML file like search_spaces/dense.yaml")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise SpecFileError(f"{p}: not valid YAML{where}; fix the syntax") from None
    return parse_space(data, origin=str(p))


def default_space(model: ModelSpec) -> SearchSpace:
    return load_space_file(SPACES_DIR / ("moe.yaml" if model.is_moe else "dense.yaml"))
