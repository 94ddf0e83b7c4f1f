"""Which feasible config to measure next: the analytic ranking as a prior, corrected by measurements.

Why not Optuna's TPE or a GP over the raw knobs: the space is a categorical over up to hundreds of thousands
of valid combinations whose knobs interact through hard divisibility rules, and a search gets tens of
trials. TPE over independent knob distributions proposes mostly invalid or already-ruled-out points. We
already hold a good prior (the cost model ranks every valid config), so the sampler models only the cost
model's *error*, which is structured:

    log(measured / predicted) = e_mesh + e_tp + e_pp + ... + e_mbs + e_recompute + ... + e_config

one term per parallel mesh (TP, PP, CP, EP, ETP; the communication terms misjudge a whole mesh, prior sd
`mesh_error_sd`), one per value of every knob (all MBS=4 configs run a little faster than predicted,
all full-recompute ones slower; sd `knob_error_sd`) and one per config (sd `config_error_sd`). That is a
Gaussian process over the candidates with an additive categorical kernel, k(i, j) = sum over terms of
sd^2 [same value], and its posterior after n measurements is an n x n solve. Then:

1. the first `num_seeds` trials are the top predicted configs (the "enqueued" analytic best);
2. after that, the candidate with the highest upper confidence bound of log speed,
   log(predicted) + posterior mean + `beta` x posterior sd: a measured config teaches about every config
   that shares its mesh or a knob value, and a config unlike anything measured keeps its prior doubt;
3. memory: predicted peaks are scaled by the largest observed/predicted ratio, and an OOM at predicted
   peak p proves the ratio is above capacity/p; configs whose corrected peak exceeds the GPU are never drawn.

An observation without a candidate index (a trial from an earlier session of the study) still teaches
through its mesh terms. `window` skips candidates predicted more than exp(window) slower than the best
allowed one (they cannot win; skipping them keeps a draw to milliseconds on 50k candidates).

benchmarks/search_efficiency.py counts the trials this needs to land within 2% of the best on a simulated
oracle, against the plain analytic order, random search, plain TPE and a grid; results in
benchmarks/results/search_efficiency.md. Three seeds before learning beat one: the cost model's top few
are usually near the best, and the posterior needs a few points before its mesh terms mean anything.

Pure numpy; no optuna import, so the strategy is testable and benchmarkable on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True, kw_only=True)
class Observation:
    """One finished trial, as the sampler needs it."""

    mesh: tuple[int, int, int, int, int]  # (tp, pp, cp, ep, etp)
    status: str  # trial runner status
    predicted_tokens_per_s_per_gpu: float
    predicted_peak_memory_gib: float
    measured_tokens_per_s_per_gpu: float | None = None
    measured_peak_memory_gib: float | None = None


class PriorSampler:
    """Draws candidate indices of a ranked space; `key_of(i)` gives the canonical key used for 'never twice'."""

    def __init__(self, *, predicted_tokens: np.ndarray, predicted_peak_gib: np.ndarray, mesh: np.ndarray,
                 capacity_gib: float, key_of: Callable[[int], str], knobs: np.ndarray | None = None,
                 num_seeds: int = 3, beta: float = 1.0, mesh_error_sd: float = 0.12, knob_error_sd: float = 0.03,
                 config_error_sd: float = 0.02, noise_sd: float = 0.01, window: float = 0.7,
                 use_memory_measurements: bool = True, seed: int = 0):
        """`mesh` is (N, 5) of (tp, pp, cp, ep, etp); `knobs` optionally (N, K) of the other knobs' values
        (vpp, mbs, recompute, ...; any integer codes), so their error terms are learned too."""
        self.pred = np.asarray(predicted_tokens, dtype=float)
        self.peak = np.asarray(predicted_peak_gib, dtype=float)
        self.capacity_gib = capacity_gib
        self.key_of = key_of
        self.num_seeds = num_seeds
        self.beta = beta
        self.noise_sd = noise_sd
        self.window = window
        self.config_error_sd = config_error_sd
        self.use_memory_measurements = use_memory_measurements
        self.rng = np.random.default_rng(seed)
        self._mesh_rows, self._mesh_id = np.unique(np.asarray(mesh, dtype=np.int64).reshape(len(self.pred), -1),
                                                   axis=0, return_inverse=True)
        self._mesh_id = self._mesh_id.reshape(-1)
        self._mesh_index = {tuple(int(x) for x in r): i for i, r in enumerate(self._mesh_rows)}
        # Error terms: the mesh, each mesh degree, each other knob. Codes are compact per column.
        mesh_arr = np.asarray(mesh, dtype=np.int64).reshape(len(self.pred), -1)
        extra = np.zeros((len(self.pred), 0), np.int64) if knobs is None else \
            np.asarray(knobs, dtype=np.int64).reshape(len(self.pred), -1)
        self._term_values: list[np.ndarray] = []  # per term: the sorted distinct raw values (mesh: none)
        codes = [self._mesh_id]
        for col in np.concatenate([mesh_arr, extra], axis=1).T:
            vals, inv = np.unique(col, return_inverse=True)
            self._term_values.append(vals)
            codes.append(inv.reshape(-1))
        self._codes = np.stack(codes, axis=1)  # (N, 1 + 5 + K)
        self._term_var = np.array([mesh_error_sd ** 2] + [knob_error_sd ** 2] * (self._codes.shape[1] - 1))
        self._num_mesh_terms = 1 + mesh_arr.shape[1]
        self._obs_codes: list[np.ndarray] = []  # per completed observation: its codes (-1: unknown)
        self._obs_index: list[int] = []  # its candidate index, -1 when unknown
        self._obs_y: list[float] = []  # log(measured / predicted)
        self.order = np.lexsort((np.arange(len(self.pred)), -self.pred))  # fastest first
        self.tried_keys: set[str] = set()
        self.excluded = np.zeros(len(self.pred), dtype=bool)  # tried or drawn-and-rejected
        self.observations: list[Observation] = []
        self.num_drawn = 0

    # --- what the measurements teach -------------------------------------------------------------
    def memory_ratio(self) -> float:
        """Observed/predicted peak memory, at least 1 unless measured lower; OOMs give lower bounds."""
        if not self.use_memory_measurements:
            return 1.0
        ratios = [o.measured_peak_memory_gib / o.predicted_peak_memory_gib for o in self.observations
                  if o.status == "completed" and o.measured_peak_memory_gib and o.predicted_peak_memory_gib > 0]
        # A config predicted to need as much as one that ran out of memory runs out too: strictly above.
        bounds = [self.capacity_gib / o.predicted_peak_memory_gib * (1 + 1e-9) for o in self.observations
                  if o.status == "oom" and o.predicted_peak_memory_gib > 0]
        return max(ratios + bounds) if ratios or bounds else 1.0

    def speed_correction(self) -> np.ndarray:
        """Per-candidate factor on the predicted speed, per measured mesh (else the median ratio): a plain
        summary of what was measured, for people; the draw itself uses `posterior`."""
        per_mesh: dict[int, list[float]] = {}
        for o in self.observations:
            if o.status == "completed" and o.measured_tokens_per_s_per_gpu and o.predicted_tokens_per_s_per_gpu > 0:
                mid = self._mesh_index.get(tuple(o.mesh))
                ratio = o.measured_tokens_per_s_per_gpu / o.predicted_tokens_per_s_per_gpu
                per_mesh.setdefault(-1 if mid is None else mid, []).append(math.log(ratio))
        if not per_mesh:
            return np.ones(len(self.pred))
        logs = [x for v in per_mesh.values() for x in v]
        factors = np.full(len(self._mesh_rows), math.exp(float(np.median(logs))))
        for mid, v in per_mesh.items():
            if mid >= 0:
                factors[mid] = math.exp(float(np.mean(v)))
        return factors[self._mesh_id]

    def allowed(self) -> np.ndarray:
        """Not yet tried, and fits after the memory correction."""
        return ~self.excluded & (self.peak * self.memory_ratio() <= self.capacity_gib)

    # --- drawing ---------------------------------------------------------------------------------
    def mark_tried(self, key: str, index: int | None = None) -> None:
        self.tried_keys.add(key)
        if index is not None:
            self.excluded[index] = True

    def observe(self, obs: Observation, index: int | None = None) -> None:
        """Record a finished trial; `index` (its candidate) when known, else it teaches through its mesh."""
        self.observations.append(obs)
        if not (obs.status == "completed" and obs.measured_tokens_per_s_per_gpu
                and obs.predicted_tokens_per_s_per_gpu > 0):
            return
        if index is not None:
            codes = self._codes[index]
        else:
            codes = np.full(self._codes.shape[1], -1, dtype=np.int64)
            mid = self._mesh_index.get(tuple(int(x) for x in obs.mesh))
            codes[0] = -1 if mid is None else mid
            for t, v in enumerate(obs.mesh[: self._num_mesh_terms - 1], start=1):
                pos = int(np.searchsorted(self._term_values[t - 1], v))
                known = pos < len(self._term_values[t - 1]) and self._term_values[t - 1][pos] == v
                codes[t] = pos if known else -1
        self._obs_codes.append(codes)
        self._obs_index.append(-1 if index is None else int(index))
        self._obs_y.append(math.log(obs.measured_tokens_per_s_per_gpu / obs.predicted_tokens_per_s_per_gpu))

    def posterior(self, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(mean, sd) of log(true / predicted speed) for the candidates `rows` (default: all)."""
        rows = np.arange(len(self.pred)) if rows is None else rows
        prior_var = float(self._term_var.sum()) + self.config_error_sd ** 2
        if not self._obs_y:
            return np.zeros(len(rows)), np.full(len(rows), math.sqrt(prior_var))
        oc, oi, y = np.stack(self._obs_codes), np.array(self._obs_index), np.array(self._obs_y)

        def cov(a_codes, a_index, b_codes, b_index):
            k = self.config_error_sd ** 2 * ((a_index[:, None] == b_index[None, :]) & (b_index[None, :] >= 0))
            for t, var in enumerate(self._term_var):  # one term at a time: (rows x n), never (rows x n x terms)
                k = k + var * ((a_codes[:, t, None] == b_codes[None, :, t]) & (b_codes[None, :, t] >= 0))
            return k

        k_oo = cov(oc, oi, oc, oi) + self.noise_sd ** 2 * np.eye(len(y))
        k_ro = cov(self._codes[rows], rows, oc, oi)
        chol = np.linalg.cholesky(k_oo)
        alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, y))
        v = np.linalg.solve(chol, k_ro.T)
        return k_ro @ alpha, np.sqrt(np.maximum(prior_var - (v * v).sum(axis=0), 1e-12))

    def next_index(self) -> int | None:
        """The next candidate to measure, or None when every candidate is tried or ruled out."""
        while True:
            allowed = self.allowed()
            if not allowed.any():
                return None
            if self.num_drawn < self.num_seeds:
                i = int(next(j for j in self.order if allowed[j]))
            else:
                # Only candidates that could still win: the UCB cannot lift a config by more than a few
                # prior sds, so anything predicted far below the best allowed is skipped (speed, not result).
                logp = np.log(np.maximum(self.pred, 1e-12))
                rows = np.flatnonzero(allowed & (logp >= logp[allowed].max() - self.window))
                mean, sd = self.posterior(rows)
                ucb = logp[rows] + mean + self.beta * sd
                i = int(rows[int(np.argmax(ucb + 1e-9 * self.rng.random(len(rows))))])  # random tie-break
            self.excluded[i] = True
            if self.key_of(i) in self.tried_keys:  # measured in an earlier session of this study
                continue
            self.num_drawn += 1
            self.tried_keys.add(self.key_of(i))
            return i
