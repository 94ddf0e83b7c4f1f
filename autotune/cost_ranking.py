"""Ranks the feasible configs of an enumerated space by predicted speed, with predicted peak memory.

Joins the cost model (cost.predict_batch) and the memory model (memory.peak_memory_gib_batch) over a
SpaceResult's arrays; `autotune space` / `explain` print what this returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from autotune.cost import CostConstants, RunOptions, predict_batch
from autotune.memory import MemoryOptions, peak_memory_gib_batch
from autotune.space import SpaceResult

PREDICTED_FIELDS = ("tokens_per_s_per_gpu", "step_time_s", "mfu", "peak_memory_gib")


@dataclass(frozen=True, kw_only=True)
class RankedSpace:
    """Predictions for every feasible config (arrays in the SpaceResult's order) and the ranking."""

    tokens_per_s_per_gpu: np.ndarray
    step_time_s: np.ndarray
    mfu: np.ndarray
    peak_memory_gib: np.ndarray
    fits_memory: np.ndarray  # peak memory <= the GPU's memory
    order: np.ndarray  # indices, configs that fit first, then fastest first

    def predicted(self, i: int) -> dict[str, Any]:
        """The `predicted` object of one config in `autotune space --json`."""
        return {"tokens_per_s_per_gpu": round(float(self.tokens_per_s_per_gpu[i]), 1),
                "step_time_s": round(float(self.step_time_s[i]), 4), "mfu": round(float(self.mfu[i]), 4),
                "peak_memory_gib": round(float(self.peak_memory_gib[i]), 2), "fits_memory": bool(self.fits_memory[i])}


def rank_space(result: SpaceResult, constants: CostConstants | None = None, *,
               memory_options: MemoryOptions | None = None) -> RankedSpace:
    """Scores every feasible config of `result`.

    Pass the `memory_options` given to enumerate_space (SpaceResult does not record them), so that the
    predicted peak memory and `fits_memory` use the same gradient dtype and recompute modules as the
    memory rule that built the space; the gradient dtype also sets the DP reduction volume.
    """
    opts = memory_options or MemoryOptions()
    pred = predict_batch(result.model, result.cluster, result.workload, result.knobs, constants,
                         RunOptions(grad_reduce_in_fp32=opts.grad_reduce_in_fp32))
    mem = peak_memory_gib_batch(result.model, result.cluster, result.workload, result.knobs, options=opts)
    fits = mem <= result.cluster.gpu.usable_memory_gib
    # lexsort: last key is primary. Fitting configs first, then fastest; ties keep enumeration order.
    order = np.lexsort((np.arange(result.num_feasible), -pred["tokens_per_s_per_gpu"], ~fits))
    return RankedSpace(tokens_per_s_per_gpu=pred["tokens_per_s_per_gpu"], step_time_s=pred["step_time_s"],
                       mfu=pred["mfu"], peak_memory_gib=mem, fits_memory=fits, order=order)
