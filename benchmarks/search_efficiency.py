"""How many trials each search strategy needs to land within 2% of the best config, on a simulated oracle.

    python benchmarks/search_efficiency.py [--seeds 400] [--tpe-seeds 50] [--max-trials 100] [--write]

No GPU is involved. The feasible space and its predicted speeds come from autotune (enumerate_space +
rank_space). The oracle's true speed of a config is its prediction times a hidden, seeded, structured
error: a multiplicative term per parallel mesh (TP, PP, CP, EP, ETP; sd 6%), because the cost model's
communication terms misjudge a whole mesh, times one term per value of every knob (sd 2% each: e.g. all
MBS=4 configs run 3% faster than predicted, all selective-recompute ones 2% slower), times a small
per-config term (sd 1%); the total is clipped to +-15%. The target is the oracle's best feasible config;
a strategy "lands" on the first trial whose true speed is within 2% of it. Strategies:

- ours: autotune's PriorSampler (autotune/search_sampler.py) with its defaults, fed the oracle's measurements;
- top-k: the cost model's ranking in order, no learning (what ours reduces to without measurements);
- random: uniform over the feasible set, without repeats;
- tpe: plain Optuna TPE over the knobs (one categorical per knob, the space's values). An infeasible
  suggestion counts as a wasted trial (a real run would fail to launch or OOM) and is told as speed 0 so
  TPE learns to avoid it; a repeated suggestion also counts (plain Optuna does not deduplicate);
- grid: NeMo AutoConfigurator's order: its nested loops over TP, PP, CP, EP, MBS (ascending, outermost
  first), the remaining knobs in enumeration order, run in that order over the feasible set (simplified:
  AutoConfigurator also narrows the TP/PP ranges by model size; here the grid is the whole feasible set).

A strategy that has not landed after --max-trials counts as max-trials + 1 ("> N" in the table).
Reports, per scenario and strategy, the median with a bootstrap 95% interval, the 90th percentile and how
often it landed. Trial counts are small integers with a long tail, so a median over few oracles is coarse:
with the cost model of commit 144d1ca the mixtral median read 5.5 over 50 held-out oracles and 4 over 50
tuning ones, and 4 on both over 400, hence 400 by default. TPE, 0.3 s per oracle and seldom landing
within 100 trials, runs on the first --tpe-seeds of them.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autotune.cluster import ClusterSpec  # noqa: E402
from autotune.config import Workload  # noqa: E402
from autotune.cost_ranking import rank_space  # noqa: E402
from autotune.model_catalog import get_model  # noqa: E402
from autotune.search_sampler import Observation, PriorSampler  # noqa: E402
from autotune.space import enumerate_space, resolve_values  # noqa: E402
from autotune.space_files import default_space  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "search_efficiency.md"
NEAR_BEST = 0.98  # "within 2% of the oracle's best"
MESH_ERROR_SD = 0.06
KNOB_ERROR_SD = 0.02
CONFIG_ERROR_SD = 0.01
MAX_ERROR = 0.15
# (space column, Megatron knob name); the order of the first five is AutoConfigurator's loop order.
KNOBS = (("tp", "tensor_model_parallel_size"), ("pp", "pipeline_model_parallel_size"),
         ("cp", "context_parallel_size"), ("ep", "expert_model_parallel_size"), ("mbs", "micro_batch_size"),
         ("etp", "expert_tensor_parallel_size"), ("vpp", "virtual_pipeline_model_parallel_size"),
         ("sp", "sequence_parallel"), ("dist_opt", "use_distributed_optimizer"),
         ("recompute", "recompute_granularity"), ("split", "pipeline_split"))
MESH = ("tp", "pp", "cp", "ep", "etp")


@dataclass(frozen=True, kw_only=True)
class Scenario:
    model: str
    num_gpus: int
    global_batch_size: int
    seq_length: int = 4096

    @property
    def label(self) -> str:
        return f"{self.model} @ {self.num_gpus} GPUs (seq {self.seq_length}, GBS {self.global_batch_size})"


SCENARIOS = (Scenario(model="qwen3-235b", num_gpus=256, global_batch_size=1024),
             Scenario(model="llama3-70b", num_gpus=64, global_batch_size=256),
             Scenario(model="mixtral-8x7b", num_gpus=64, global_batch_size=256))


@dataclass
class Space:
    """The feasible set of one scenario, with its predictions and each knob's column."""

    pred: np.ndarray  # predicted tokens/s/GPU
    peak: np.ndarray  # predicted peak GiB
    capacity_gib: float
    columns: dict[str, np.ndarray]  # knob column -> per-config value code
    values: dict[str, list]  # knob column -> the values a knob-wise sampler may suggest (codes)
    index_of: dict[tuple, int]  # knob codes in KNOBS order -> feasible index

    @property
    def mesh(self) -> np.ndarray:
        return np.stack([self.columns[c] for c in MESH], axis=1)


def build_space(sc: Scenario) -> Space:
    model = get_model(sc.model)
    cluster = ClusterSpec.build(sc.num_gpus)
    space = default_space(model)
    result = enumerate_space(space, model, cluster, Workload(seq_length=sc.seq_length,
                                                             global_batch_size=sc.global_batch_size))
    ranked = rank_space(result)
    k = result.knobs
    columns = {c: np.asarray(getattr(k, c)).astype(np.int64) for c, _ in KNOBS}
    # The values a knob-wise sampler draws from: the space's own values, in the space's codes.
    values = {}
    for c, name in KNOBS:
        knob = space.knobs.get(name) if name != "pipeline_split" else space.knobs.get("pipeline_split")
        seen = sorted(set(columns[c].tolist()))
        if knob is None:
            values[c] = seen
        elif c in ("tp", "pp", "cp", "ep", "etp", "vpp", "mbs"):
            values[c] = [int(v) for v in resolve_values(name, knob, model, cluster)]
        else:  # booleans and enums: codes as stored in the columns (every code appears among the feasible)
            values[c] = sorted(set(seen) | ({0, 1} if c in ("sp", "dist_opt") else set()))
    rows = np.stack([columns[c] for c, _ in KNOBS], axis=1)
    index_of = {tuple(r): i for i, r in enumerate(rows.tolist())}
    return Space(pred=np.asarray(ranked.tokens_per_s_per_gpu, float), peak=np.asarray(ranked.peak_memory_gib, float),
                 capacity_gib=cluster.gpu.usable_memory_gib, columns=columns, values=values, index_of=index_of)


def hidden_truth(space: Space, seed: int) -> np.ndarray:
    """The oracle: prediction x structured error (per mesh, per knob value, per config), clipped to +-15%."""
    rng = np.random.default_rng(seed)
    _, mesh_id = np.unique(space.mesh, axis=0, return_inverse=True)
    mesh_id = mesh_id.reshape(-1)
    log_err = rng.normal(0, MESH_ERROR_SD, mesh_id.max() + 1)[mesh_id]
    for c, _ in KNOBS:
        codes, inv = np.unique(space.columns[c], return_inverse=True)
        log_err = log_err + rng.normal(0, KNOB_ERROR_SD, len(codes))[inv.reshape(-1)]
    log_err = log_err + rng.normal(0, CONFIG_ERROR_SD, len(space.pred))
    factor = np.clip(np.exp(log_err), 1 - MAX_ERROR, 1 + MAX_ERROR)
    return space.pred * factor


def trials_to_land(sequence, good: np.ndarray, max_trials: int) -> int:
    """1-based number of the first trial in `sequence` (indices; -1 for a wasted trial) that is good."""
    for n, i in enumerate(sequence, 1):
        if n > max_trials:
            break
        if i >= 0 and good[i]:
            return n
    return max_trials + 1


def ours(space: Space, true: np.ndarray, seed: int):
    others = np.stack([space.columns[c] for c, _ in KNOBS if c not in MESH], axis=1)
    s = PriorSampler(predicted_tokens=space.pred, predicted_peak_gib=space.peak, mesh=space.mesh, knobs=others,
                     capacity_gib=space.capacity_gib, key_of=str, seed=seed)
    mesh = space.mesh
    while (i := s.next_index()) is not None:
        yield i
        s.observe(Observation(mesh=tuple(int(x) for x in mesh[i]), status="completed",
                              predicted_tokens_per_s_per_gpu=float(space.pred[i]),
                              predicted_peak_memory_gib=float(space.peak[i]),
                              measured_tokens_per_s_per_gpu=float(true[i]),
                              measured_peak_memory_gib=float(space.peak[i])), index=i)


def random_search(space: Space, seed: int):
    yield from np.random.default_rng(seed).permutation(len(space.pred)).tolist()


def tpe(space: Space, true: np.ndarray, seed: int):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    while True:
        trial = study.ask()
        key = tuple(trial.suggest_categorical(c, space.values[c]) for c, _ in KNOBS)
        i = space.index_of.get(key, -1)
        study.tell(trial, float(true[i]) if i >= 0 else 0.0)
        yield i


def grid_order(space: Space) -> np.ndarray:
    cols = space.columns
    # np.lexsort sorts by the last key first: innermost loop last in the tuple reversed.
    return np.lexsort(tuple(cols[c] for c in reversed(("tp", "pp", "cp", "ep", "mbs"))))


def percentile_label(v: float, max_trials: int) -> str:
    return f"> {max_trials}" if v > max_trials else f"{v:g}"


def median_interval(counts: np.ndarray, max_trials: int, resamples: int = 2000) -> str:
    """Bootstrap 95% interval of the median (seeded, so the table is reproducible)."""
    rng = np.random.default_rng(0)
    medians = np.median(rng.choice(counts, size=(resamples, len(counts))), axis=1)
    lo, hi = np.percentile(medians, [2.5, 97.5])
    return f"{percentile_label(float(lo), max_trials)} - {percentile_label(float(hi), max_trials)}"


# Oracle seeds: the sampler's defaults were chosen on the TUNING oracles; the HELD-OUT ones were never
# looked at while tuning, so their row is the honest estimate.
SEED_SETS = {"tuning": 10_000, "held-out": 20_000}


def run(seeds: int, max_trials: int, seed_set: str = "held-out", tpe_seeds: int = 50) -> tuple[list[str], dict]:
    table: dict = {}
    for sc in SCENARIOS:
        t0 = time.time()
        space = build_space(sc)
        counts: dict[str, list[int]] = {"ours": [], "top-k": [], "random": [], "tpe": [], "grid": []}
        order = grid_order(space)
        ranked = np.lexsort((np.arange(len(space.pred)), -space.pred))
        for seed in range(seeds):
            true = hidden_truth(space, SEED_SETS[seed_set] + seed)
            good = true >= NEAR_BEST * true.max()
            counts["ours"].append(trials_to_land(ours(space, true, seed), good, max_trials))
            counts["top-k"].append(trials_to_land(ranked.tolist(), good, max_trials))
            counts["random"].append(trials_to_land(random_search(space, seed), good, max_trials))
            if seed < tpe_seeds:
                counts["tpe"].append(trials_to_land(tpe(space, true, seed), good, max_trials))
            counts["grid"].append(trials_to_land(order.tolist(), good, max_trials))
            if seed == 0:
                num_good = int(good.sum())
                top1_good = bool(good[int(np.argmax(space.pred))])
        table[sc] = dict(counts=counts, num_feasible=len(space.pred), num_good_seed0=num_good,
                         top1_good_seed0=top1_good, seconds=time.time() - t0)
        print(f"{sc.label}: {len(space.pred):,} feasible, {time.time() - t0:.1f} s", flush=True)
    lines = [f"| oracles | scenario | feasible | strategy | median trials | 95% interval of the median | p90 | "
             f"landed within {max_trials} |", "|---|---|---:|---|---:|---:|---:|---:|"]
    for sc, row in table.items():
        for name, v in row["counts"].items():
            arr = np.asarray(v)
            landed = int((arr <= max_trials).sum())
            lines.append(f"| {seed_set} | {sc.model} @ {sc.num_gpus} | {row['num_feasible']:,} | {name} | "
                         f"{percentile_label(float(np.median(arr)), max_trials)} | {median_interval(arr, max_trials)} | "
                         f"{percentile_label(float(np.percentile(arr, 90)), max_trials)} | {landed}/{len(arr)} |")
    return lines, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=400,
                    help="oracles (hidden errors) per scenario and oracle set (400: over 50 the median of a long-tailed "
                         "trial count moved by 1.5 trials between oracle sets)")
    ap.add_argument("--tpe-seeds", type=int, default=50,
                    help="how many of those oracles plain TPE runs on (0.3 s each; it seldom lands within 100 trials)")
    ap.add_argument("--max-trials", type=int, default=100, help="trials a strategy gets before it counts as failed")
    ap.add_argument("--write", action="store_true", help=f"also write {RESULTS.relative_to(RESULTS.parents[2])}")
    args = ap.parse_args()
    t0 = time.time()
    lines, table = run(args.seeds, args.max_trials, "held-out", args.tpe_seeds)
    tuning, _ = run(args.seeds, args.max_trials, "tuning", args.tpe_seeds)
    lines += tuning[2:]
    print("\n".join(lines))
    print(f"({time.time() - t0:.0f} s)")
    if args.write:
        header = [
            "# Search efficiency on a simulated oracle",
            "",
            "Generated by `python benchmarks/search_efficiency.py --write` (see its docstring for the oracle and "
            "the strategies). Trials until a strategy first measures a config within 2% of the oracle's best "
            f"feasible config; {args.seeds} seeded oracles per scenario and set ({min(args.tpe_seeds, args.seeds)} "
            f"for TPE), seq 4096; hidden error: per mesh sd "
            f"{MESH_ERROR_SD:.0%}, per knob value sd {KNOB_ERROR_SD:.0%}, per config sd {CONFIG_ERROR_SD:.0%}, "
            f"clipped to +-{MAX_ERROR:.0%}. TPE counts infeasible and repeated suggestions as wasted trials. "
            f"`> {args.max_trials}`: had not landed after {args.max_trials} trials.",
            "",
            "Caveat: the sampler's defaults (3 seeds, beta 1.0, mesh error sd 0.12) were picked by running this "
            "benchmark on the `tuning` oracles (seeds 10000+), so `ours` is tuned to this oracle's kind of error; "
            "the `held-out` oracles (seeds 20000+) were not used for tuning and are the honest estimate. The "
            "oracle's own parameters were fixed first and not changed. The number of oracles was raised from 50 to "
            "400 after the held-out mixtral median read 5.5 over 50 (and over 100) oracles against 4 on the tuning "
            "set; over 400 both sets read 4 (cost model of commit 144d1ca), so the 50-oracle figure was sampling "
            "noise; the interval column shows how much is left. After the cost model's refit (commit 425bd60) "
            "mixtral reads 5 on both sets, and 1-4 seeds or beta 0.7-1.5 all read 5 on the tuning set, so the "
            "defaults stayed. TPE and the grid seldom land within 100 trials (median over 100) because the knob "
            "product is "
            "mostly infeasible (TPE) and the grid starts at TP=1, PP=1 (AutoConfigurator narrows the ranges first).",
            "",
        ]
        notes = [""] + [f"- {sc.label}: {row['num_good_seed0']} configs within 2% of the best for held-out seed 0; the "
                        f"predicted best is {'' if row['top1_good_seed0'] else 'not '}among them."
                        for sc, row in table.items()]
        RESULTS.write_text("\n".join(header + lines + notes) + "\n")


if __name__ == "__main__":
    main()
