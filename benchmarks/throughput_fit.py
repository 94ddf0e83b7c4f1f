"""Fitting the cost-model constants on the published rows (mean absolute log error of tokens/s/GPU).

Used by accuracy_throughput.py: one all-rows fit (coordinate descent alternated with Nelder-Mead) and one
leave-one-out fit per row, each starting from the all-rows constants.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autotune import constraints as C  # noqa: E402
from autotune.cost import CostConstants, combine  # noqa: E402
from autotune.cost_terms import step_work  # noqa: E402
from throughput_rows import Row  # noqa: E402

# Held at their value in START, not fitted: every published MoE row forced balanced routing, so no row
# carries information about expert load imbalance. 0.2 is an assumed prior for real (unforced) routing.
FIXED = {"expert_load_cv"}
NAMES = [f.name for f in CostConstants.__dataclass_fields__.values() if f.name not in FIXED]
# Physical bounds. Flash attention: FlashAttention-3 (Shah et al. 2024, arXiv 2407.08608) reaches ~740 of
# H100's 989 bf16 TFLOP/s in the forward pass and less in the backward, so 0.75 of peak is its ceiling.
UPPER = {"gemm_efficiency": 1.0, "fp8_gemm_efficiency": 1.0, "attention_efficiency": 0.75,
         "network_efficiency": 1.0}
# The EP exchange cannot beat the link: its time is at least the nominal bytes at the achieved bandwidth
# (no published row overlaps it with compute; the Qwen3 FP8 recipe sets moe_a2a_overlap=False).
LOWER: dict[str, float] = {"moe_dispatch_overhead": 1.0}
START = CostConstants(gemm_efficiency=0.8, fp8_gemm_efficiency=0.7, gemm_memory_weight=1.0, attention_efficiency=0.5,
                      layer_overhead_s=3e-4, moe_token_passes=5.0, moe_dispatch_overhead=1.0, network_efficiency=1.0,
                      expert_load_cv=0.2)


class Fitter:
    """Precomputes each row's physical work once; predicting with new constants is then cheap."""

    def __init__(self, rows: list[Row]):
        self.rows = rows
        self.work = []
        for r in rows:
            knobs = C.Knobs.batch_of(r.parallel)
            self.work.append(step_work(r.model, r.cluster, r.workload, knobs,
                                       grad_reduce_in_fp32=r.judging.memory_options.grad_reduce_in_fp32,
                                       moe_dispatcher=r.moe_dispatcher))
        self.target = np.log([r.published_tokens_per_s_per_gpu for r in rows])

    def predict(self, c: CostConstants, idx) -> np.ndarray:
        out = []
        for i in idx:
            r = self.rows[i]
            step = combine(self.work[i], r.model, r.cluster, r.workload, c, r.run_options)["step_time_s"][0]
            out.append(r.workload.global_batch_size * r.workload.seq_length / (step * r.num_gpus))
        return np.asarray(out)

    def loss(self, c: CostConstants, idx) -> float:
        # Mean absolute log error: tracks MAPE and does not let the two Qwen3 regression rows dominate.
        return float(np.mean(np.abs(np.log(self.predict(c, idx)) - self.target[idx])))

    def fit(self, idx, start: CostConstants = START, max_evals: int = 4000) -> CostConstants:
        """Coordinate descent in log space: each constant keeps its own multiplicative step, which grows
        (x2) while moves succeed and halves when neither direction helps, down to ~x1.005."""
        cur = start.to_dict()
        best = self.loss(CostConstants(**cur), idx)
        steps = {name: math.log(2.0) for name in NAMES}
        evals = 0
        while max(steps.values()) > 0.005 and evals < max_evals:
            for name in NAMES:
                if steps[name] <= 0.005:
                    continue
                moved = False
                for sign in (1, -1):
                    trial = dict(cur)
                    trial[name] = min(UPPER.get(name, 1e3), max(LOWER.get(name, 1e-9),
                                                               cur[name] * math.exp(sign * steps[name])))
                    if trial[name] == cur[name]:
                        continue
                    val = self.loss(CostConstants(**trial), idx)
                    evals += 1
                    if val < best - 1e-12:
                        cur, best, moved = trial, val, True
                        break
                steps[name] = min(steps[name] * 2, math.log(4.0)) if moved else steps[name] / 2
        return CostConstants(**cur)

    def fit_global(self, idx, start: CostConstants = START, rounds: int = 3) -> CostConstants:
        """Coordinate descent alternated with Nelder-Mead in log space. Constants that trade off against
        each other (the two GEMM terms, or the EP exchange against the MoE token work) lie along a valley that
        coordinate descent, one constant at a time, leaves early; the simplex moves along it."""
        c = self.fit(idx, start)
        for _ in range(rounds):
            x = self._nelder_mead(lambda v: self.loss(self._from_log(c, v), idx),
                                  np.log([c.to_dict()[n] for n in NAMES]))
            c = self.fit(idx, self._from_log(c, x))
        return c

    @staticmethod
    def _from_log(base: CostConstants, v) -> CostConstants:
        d = base.to_dict()
        for name, x in zip(NAMES, v):
            d[name] = min(UPPER.get(name, 1e3), max(LOWER.get(name, 1e-9), math.exp(float(x))))
        return CostConstants(**d)

    @staticmethod
    def _nelder_mead(fun, x0: np.ndarray, step: float = 0.3, max_iter: int = 3000, tol: float = 1e-7) -> np.ndarray:
        """Standard Nelder-Mead (reflect 1, expand 2, contract 0.5, shrink 0.5) from a simplex of `step` moves."""
        pts = [x0] + [x0 + step * e for e in np.eye(len(x0))]
        vals = [fun(p) for p in pts]
        for _ in range(max_iter):
            order = np.argsort(vals)
            pts, vals = [pts[i] for i in order], [vals[i] for i in order]
            if vals[-1] - vals[0] < tol:
                break
            centre = np.mean(pts[:-1], axis=0)
            reflected = centre + (centre - pts[-1])
            f_r = fun(reflected)
            if f_r < vals[0]:
                expanded = centre + 2 * (centre - pts[-1])
                f_e = fun(expanded)
                pts[-1], vals[-1] = (expanded, f_e) if f_e < f_r else (reflected, f_r)
            elif f_r < vals[-2]:
                pts[-1], vals[-1] = reflected, f_r
            else:
                contracted = centre + 0.5 * (pts[-1] - centre)
                f_c = fun(contracted)
                if f_c < vals[-1]:
                    pts[-1], vals[-1] = contracted, f_c
                else:
                    pts = [pts[0]] + [pts[0] + 0.5 * (p - pts[0]) for p in pts[1:]]
                    vals = [vals[0]] + [fun(p) for p in pts[1:]]
        return pts[int(np.argmin(vals))]
