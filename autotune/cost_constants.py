"""Loads the fitted cost-model constants (the only I/O of the cost model, kept out of cost.py).

The file autotune/data/cost_constants.json holds `constants` (CostConstants fields) and a `fit`
record saying how they were fitted; benchmarks/accuracy_throughput.py --write refits it.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from autotune.cost import CostConstants
from autotune.errors import SpecFileError

CONSTANTS_PATH = Path(__file__).resolve().parent / "data" / "cost_constants.json"


@functools.lru_cache(maxsize=4)
def _document(path: str | Path) -> dict:
    """The file, read and checked once per path: the constants and the fit record both come from it."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise SpecFileError(f"cost constants file not found: {p}; run benchmarks/accuracy_throughput.py --write") from None
    except json.JSONDecodeError as exc:
        raise SpecFileError(f"{p}: not valid JSON at line {exc.lineno}; fix the syntax") from None
    if not isinstance(data, dict) or not isinstance(data.get("constants"), dict):
        raise SpecFileError(f"{p}: expected an object with a 'constants' mapping")
    return data


@functools.lru_cache(maxsize=4)
def load_cost_constants(path: str | Path = CONSTANTS_PATH) -> CostConstants:
    return CostConstants.from_dict(_document(path)["constants"])


def load_fit_record(path: str | Path = CONSTANTS_PATH) -> dict:
    """The `fit` record beside the constants (how they were fitted and their measured error); {} if absent."""
    fit = _document(path).get("fit")
    return fit if isinstance(fit, dict) else {}
