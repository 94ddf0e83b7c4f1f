"""How fast each search strategy finds a near-best config, on a simulated "true" speed.

    python benchmarks/search_efficiency.py [--model qwen3-235b] [--gpus 256] [--trials 20] [--repeats 20]

No GPU is involved. The feasible space and its predicted speeds come from autotune (enumerate_space +
rank_space); the "true" speed of a config is its prediction times a per-mesh error (log-normal, sigma
0.15: the cost model misjudges a whole TP/PP/CP/EP/ETP mesh) times a per-config error (sigma 0.03), and
configs whose predicted memory is within 10% of the GPU run out of memory with probability 1/2.
Strategies, each given the same trial budget:

- prior: autotune's PriorSampler (top predicted first, then sampling weighted by corrected speed);
- top-k: the analytic ranking in order, no learning;
- random: uniform over the feasible configs;
- tpe: Optuna TPE over the index of the feasible configs (one categorical-like integer).

Prints, per strategy, the mean and worst fraction of the true best speed reached after the budget.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autotune.cluster import ClusterSpec  # noqa: E402
from autotune.config import Workload  # noqa: E402
from autotune.cost_ranking import rank_space  # noqa: E402
from autotune.model_catalog import get_model  # noqa: E402
from autotune.search_sampler import Observation, PriorSampler  # noqa: E402
from autotune.space import enumerate_space  # noqa: E402
from autotune.space_files import default_space  # noqa: E402


def simulate_truth(pred, peak, mesh_id, capacity, rng):
    mesh_err = np.exp(rng.normal(0, 0.15, mesh_id.max() + 1))[mesh_id]
    true = pred * mesh_err * np.exp(rng.normal(0, 0.03, len(pred)))
    oom = (peak > 0.9 * capacity) & (rng.random(len(pred)) < 0.5)
    return np.where(oom, 0.0, true), oom


def run_prior(pred, peak, mesh, capacity, true, oom, trials, seed):
    s = PriorSampler(predicted_tokens=pred, predicted_peak_gib=peak, mesh=mesh, capacity_gib=capacity,
                     key_of=lambda i: str(i), seed=seed)
    best = 0.0
    for _ in range(trials):
        i = s.next_index()
        if i is None:
            break
        status = "oom" if oom[i] else "completed"
        s.observe(Observation(mesh=tuple(int(x) for x in mesh[i]), status=status,
                              predicted_tokens_per_s_per_gpu=float(pred[i]), predicted_peak_memory_gib=float(peak[i]),
                              measured_tokens_per_s_per_gpu=None if oom[i] else float(true[i]),
                              measured_peak_memory_gib=None if oom[i] else float(peak[i])))
        best = max(best, true[i])
    return best


def run_tpe(n, true, trials, seed):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(lambda t: float(true[t.suggest_int("i", 0, n - 1)]), n_trials=trials)
    return study.best_value


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen3-235b")
    ap.add_argument("--gpus", type=int, default=256)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    model = get_model(args.model)
    cluster = ClusterSpec.build(args.gpus)
    result = enumerate_space(default_space(model), model, cluster, Workload())
    ranked = rank_space(result)
    k = result.knobs
    mesh = np.stack([k.tp, k.pp, k.cp, k.ep, k.etp], axis=1)
    _, mesh_id = np.unique(mesh, axis=0, return_inverse=True)
    pred, peak, cap = ranked.tokens_per_s_per_gpu, ranked.peak_memory_gib, cluster.gpu.usable_memory_gib
    n = len(pred)
    print(f"{args.model} on {args.gpus} GPUs: {n:,} feasible configs, {args.trials} trials, {args.repeats} repeats")
    scores: dict[str, list[float]] = {"prior": [], "top-k": [], "random": [], "tpe": []}
    t0 = time.time()
    for r in range(args.repeats):
        rng = np.random.default_rng(1000 + r)
        true, oom = simulate_truth(pred, peak, mesh_id.reshape(-1), cap, rng)
        best = true.max()
        scores["prior"].append(run_prior(pred, peak, mesh, cap, true, oom, args.trials, r) / best)
        scores["top-k"].append(true[np.argsort(-pred, kind="stable")[: args.trials]].max() / best)
        scores["random"].append(true[rng.choice(n, args.trials, replace=False)].max() / best)
        scores["tpe"].append(run_tpe(n, true, args.trials, r) / best)
    print(f"{'strategy':<8} {'mean':>7} {'worst':>7}   (fraction of the true best speed found)")
    for name, v in scores.items():
        print(f"{name:<8} {np.mean(v):7.3f} {min(v):7.3f}")
    print(f"({time.time() - t0:.1f} s)")
    assert all(math.isfinite(x) for v in scores.values() for x in v)


if __name__ == "__main__":
    main()
