"""Throughput accuracy of the cost model against published Megatron results, with leave-one-out fits.

Rows (every row whose model the tool can express; ../shared/refdata, cite per row):
- nemo_perf_h100.csv: NeMo / Megatron-Bridge H100 performance summaries (tokens/s/GPU as published).
- megatron_lm_scaling.csv: Megatron-LM README weak scaling on H100 (per-GPU TFLOP/s converted to
  tokens/s/GPU with Megatron's 2024 formula: full s^2, logits counted, no recompute).
- narayanan2021_table1.csv: arXiv 2104.04473 Table 1 on A100 (TFLOP/s converted with the paper's Eq. 3,
  which counts the full-recompute forward: 96.B.s.l.h^2.(1 + s/6h + V/16lh)).
- korthikanti2022.csv: arXiv 2205.05198 Table 5 iteration times on A100, full recompute and
  "present work" (sequence parallel + selective recompute) as two rows per model.
- korthikanti2022_table4.csv: the same paper's Table 4, forward + backward time of one 22B layer per
  recompute / sequence-parallel setting: an out-of-sample per-layer check (not fitted).

The constants of autotune/data/cost_constants.json are fitted here on the mean absolute log error over all
rows (coordinate descent alternated with Nelder-Mead for the all-rows fit; each leave-one-out fit starts from
it with coordinate descent); each row's reported prediction uses constants fitted WITHOUT it. A stricter
MAPE leaves out every release of the row's config at once (the same config re-run in several releases).
The rows and the settings each run used are in throughput_rows.py, the fit in throughput_fit.py.
Ranking: each row's model and GPU count get the default search space plus the published knob values,
judged under the settings its run used (`Judging`, named in the report): the gradient dtype of its
software and, for the A100 papers, only the knobs their Megatron-LM had. The alternatives are the
configs that fit with the tool's default memory headroom (RANK_HEADROOM); the hit rate with no headroom
is reported too. Every feasible config is scored; the published config's rank is reported
(1 = predicted fastest). A published config that only our memory model rejects is still ranked, and flagged.
Also printed, out of sample: Korthikanti et al.'s per-layer times (Table 4), Megatron-Bridge's matched
Llama3 70B SFT comparison of more PP and more TP against the tuned recipe, and data-parallel scaling
(Narayanan et al.'s Table 2 PTD rows, Korthikanti et al.'s 530B at 8-way DP) (throughput_checks.py), the
orders Narayanan et al. state for their own matched configs (paper_orderings.py), one model in two configs on
H100, A100 and GB200 from Megatron-LM's CI timings (functional_timings.py), and Megatron-Bridge's dense and
MoE GB200 rows, a GPU type outside the fit (throughput_checks.blackwell_check, moe_feature_groups).

Run:  .venv/bin/python benchmarks/accuracy_throughput.py [--write] [--no-rank] [--rank-only TEXT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autotune import constraints as C  # noqa: E402
from autotune.cost import CostConstants, predict, predict_batch  # noqa: E402
from autotune.cost_constants import CONSTANTS_PATH, load_cost_constants  # noqa: E402
from autotune.memory import peak_memory_gib_batch  # noqa: E402
from autotune.space import Knob, SearchSpace, enumerate_space, resolve_values  # noqa: E402
from autotune.space_files import default_space  # noqa: E402
from throughput_checks import (MATCHED_NOTE, LayerTimes, blackwell_check, layer_check_lines,  # noqa: E402
                               matched_check_lines, moe_feature_groups, scaling_check)
from functional_timings import pair_check  # noqa: E402
from paper_orderings import orderings_check  # noqa: E402
from throughput_fit import FIXED, NAMES, Fitter  # noqa: E402
from throughput_rows import Row, all_rows, gb200_dense_rows, gb200_moe_rows  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


# --- ranking -------------------------------------------------------------------------------------

def _space_with(row: Row) -> SearchSpace:
    space = default_space(row.model)
    p = row.parallel
    published = {
        "tensor_model_parallel_size": p.tp, "pipeline_model_parallel_size": p.pp,
        "virtual_pipeline_model_parallel_size": p.vpp, "context_parallel_size": p.cp,
        "expert_model_parallel_size": p.ep, "expert_tensor_parallel_size": p.etp,
        "micro_batch_size": p.micro_batch_size,
    }
    knobs = dict(space.knobs)
    cluster = row.cluster
    for key, value in published.items():
        if key in knobs:
            vals = resolve_values(key, knobs[key], row.model, cluster)
        else:
            vals = [1]
        if value not in vals:
            vals = sorted(set(vals) | {value})
        knobs[key] = Knob(values=vals)
    for key, vals in row.judging.pinned_knobs.items():
        knobs[key] = Knob(values=list(vals))
    return SearchSpace(name=space.name + "+published", knobs=knobs)


# The alternatives are the configs `autotune space` would offer: those that fit with the tool's default
# memory headroom (constraints.DEFAULT_MEMORY_HEADROOM). A config our memory model puts within 10% of the
# GPU's capacity is not one a recipe could count on (allocator fragmentation, the memory model's own error),
# and NVIDIA's recipes confirm it: Megatron-Bridge runs Llama3 70B on H100 as TP4 PP4 CP2 in BF16 but needs
# PP8 in FP8. The published config itself is ranked whatever our memory model says (it ran). The hit rate
# with no headroom (alternatives up to the GPU's full capacity) is reported too.
RANK_HEADROOM = C.DEFAULT_MEMORY_HEADROOM
FULL_CAPACITY = 0.0


def rank_row(row: Row, c: CostConstants, headroom: float = RANK_HEADROOM) -> dict:
    cluster = row.cluster
    opts = row.judging.memory_options
    res = enumerate_space(_space_with(row), row.model, cluster, row.workload, memory_headroom=headroom,
                          memory_options=opts)
    k = res.knobs
    pub = C.Knobs.of(row.parallel)
    match = np.ones(res.num_feasible, dtype=bool)
    exact = np.ones(res.num_feasible, dtype=bool)  # the assumed values of unpublished knobs too
    for name in ("tp", "pp", "vpp", "cp", "ep", "etp", "mbs", "sp", "dist_opt", "recompute", "split"):
        same = getattr(k, name) == getattr(pub, name)
        exact &= same
        if name not in row.unpublished:
            match &= same
    layout = row.parallel.pipeline_model_parallel_layout
    pub_mem = float(peak_memory_gib_batch(row.model, cluster, row.workload, pub, options=opts, layout=layout)[0])
    pub_fits = bool(match.any())
    if layout is not None:
        # The space enumerates no explicit layouts, so the published config is never in it: the memory rule
        # (which reads the layout's stages) says whether it would have been.
        pub_fits = not any(v.rule == "memory" for v in C.violations(
            row.model, cluster, row.job, memory_headroom=headroom, memory_options=opts))
    elif not pub_fits:
        # Rank it anyway when our memory model is the only rule it breaks (it ran, so the model is wrong).
        broken = [v.rule for v in C.violations(row.model, cluster, row.job, memory_headroom=headroom,
                                               memory_options=opts)]
        if broken != ["memory"]:
            return {"rank": None, "num_ranked": 0, "why": f"published config breaks {', '.join(broken)}"}
        k = C.Knobs(**{f: np.append(getattr(k, f), getattr(pub, f)) for f in vars(k)})
        match = np.zeros(len(k.tp), dtype=bool)
        match[-1] = True
        exact = match
    pred = predict_batch(row.model, cluster, row.workload, k, c, row.run_options)
    tps = pred["tokens_per_s_per_gpu"]
    if layout is not None:
        # predict_batch does not place layers by a layout: the published config is predicted alone (cost.predict
        # reads its stage layer counts) and ranked among the space.
        tps = np.append(tps, predict(row.model, cluster, row.job, c, row.run_options).tokens_per_s_per_gpu)
        match = np.zeros(len(tps), dtype=bool)
        match[-1] = True
        exact = match
    i_pub = int(np.flatnonzero(match)[np.argmax(tps[match])])  # several only when knobs are unpublished
    rank = 1 + int(np.sum(tps > tps[i_pub]))
    best = int(np.argmax(tps))

    def name(i: int) -> str:
        return res.parallel_config(i).short_name() if i < res.num_feasible else row.parallel.short_name()
    i_exact = int(np.flatnonzero(exact)[0]) if exact.any() else None
    strict_hit = i_exact is not None and (1 + int(np.sum(tps > tps[i_exact])) <= 5 or tps[best] / tps[i_exact] - 1 <= 0.03)
    return {"rank": rank, "num_ranked": len(tps), "pub_pred": float(tps[i_pub]), "best": name(best),
            "pub_cfg": name(i_pub), "strict_hit": strict_hit,
            "best_pred": float(tps[best]), "gap": float(tps[best] / tps[i_pub] - 1), "pub_fits": pub_fits,
            "pub_mem_gib": pub_mem}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="write the all-rows fit to autotune/data/cost_constants.json")
    ap.add_argument("--no-rank", action="store_true", help="skip the (slower) ranking over each row's space")
    ap.add_argument("--rank-only", metavar="TEXT", help="rank only rows whose source or model contains TEXT "
                    "(for iterating; the report file is not written)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = all_rows()
    fitter = Fitter(rows)
    everything = list(range(len(rows)))
    full = fitter.fit_global(everything)  # each leave-one-out fit starts here (coordinate descent)
    loo = []
    loo_constants = []
    for i in everything:
        rest = [j for j in everything if j != i]
        c_i = fitter.fit(rest, start=full)
        loo_constants.append(c_i)
        loo.append(float(fitter.predict(c_i, [i])[0]))
    in_sample = fitter.predict(full, everything)
    pub = np.exp(fitter.target)
    err = np.asarray(loo) / pub - 1
    config_constants = _leave_config_out(fitter, rows, full, loo_constants)
    err_config = np.asarray([fitter.predict(c, [i])[0] for i, c in enumerate(config_constants)]) / pub - 1
    h100 = np.asarray([r.is_h100 for r in rows])
    summary = {
        "rows": len(rows), "h100_rows": int(h100.sum()), "a100_rows": int((~h100).sum()),
        "loo_mape_h100": float(np.mean(np.abs(err[h100]))), "loo_mape_a100": float(np.mean(np.abs(err[~h100]))),
        "configs": len({_config_key(r) for r in rows}),
        "leave_config_out_mape_h100": float(np.mean(np.abs(err_config[h100]))),
        "leave_config_out_mape_a100": float(np.mean(np.abs(err_config[~h100]))),
        "in_sample_mape_h100": float(np.mean(np.abs(in_sample[h100] / pub[h100] - 1))),
        "in_sample_mape_a100": float(np.mean(np.abs(in_sample[~h100] / pub[~h100] - 1))),
    }
    def wanted(r: Row) -> bool:
        return not args.no_rank and (args.rank_only is None or args.rank_only in r.source or args.rank_only in r.model.name)
    ranks = [rank_row(r, loo_constants[i]) if wanted(r) else None for i, r in enumerate(rows)]
    lines = _table(rows, loo, err, ranks)

    def hits(rks: list) -> tuple[int, int, int]:
        tried = [rk for rk in rks if rk is not None]
        ok = sum(1 for rk in tried if rk["rank"] is not None and (rk["rank"] <= 5 or rk["gap"] <= 0.03))
        return ok, sum(1 for rk in tried if rk["rank"] is not None and rk["strict_hit"]), len(tried)
    ok, strict, tried = hits(ranks)
    if tried:
        summary["rank_hit_rate"] = ok / tried
        summary["rank_hits"] = f"{ok}/{tried}"
        summary["rank_hits_strict"] = f"{strict}/{tried}"
        ok0, strict0, _ = hits([rank_row(r, loo_constants[i], FULL_CAPACITY) if wanted(r) else None
                                for i, r in enumerate(rows)])
        summary["rank_hits_full_capacity"] = f"{ok0}/{tried}"
        # A config run once has its leave-one-out constants here too: its rank is already known.
        ok_config, _, _ = hits([(ranks[i] if config_constants[i] is loo_constants[i] else rank_row(r, config_constants[i]))
                                if wanted(r) else None for i, r in enumerate(rows)])
        summary["rank_hits_leave_config_out"] = f"{ok_config}/{tried}"
        summary["rank_hits_strict_full_capacity"] = f"{strict0}/{tried}"
    gb200 = gb200_dense_rows()
    blackwell = blackwell_check(gb200, full, [rank_row(r, full) for r in gb200])
    gb200_moe = gb200_moe_rows()
    blackwell_moe = blackwell_check(gb200_moe, full, [rank_row(r, full) for r in gb200_moe])
    moe_groups = moe_feature_groups(gb200_moe, full)
    orderings = orderings_check(full)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    report = _report(summary, full, lines, rows, ranks, layer_check_lines(LayerTimes(), full),
                     matched_check_lines(rows, full), scaling_check(full), orderings, pair_check(full), blackwell,
                     gb200_moe, blackwell_moe, moe_groups)
    print(report)
    if args.rank_only is None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "throughput_h100_a100.md").write_text(report)
    if args.write:
        CONSTANTS_PATH.write_text(json.dumps({
            "_comment": ("Fitted by benchmarks/accuracy_throughput.py --write: coordinate descent and Nelder-Mead on the "
                         "mean absolute log error of tokens/s/GPU over every published row it lists (nemo_perf_h100.csv, "
                         "megatron_lm_scaling.csv, narayanan2021_table1.csv, korthikanti2022.csv in shared/refdata). "
                         "Same constants for every model and GPU. expert_load_cv is not fitted but an assumed prior "
                         "(every published MoE row forced balanced routing, so no row measures imbalance); "
                         "moe_dispatch_overhead is bounded below by 1 (the EP exchange is not overlapped). The "
                         "rank_hits entries are a held-out check (each row ranked with its leave-one-out constants), "
                         "never a fitting target."),
            "fixed": sorted(FIXED),
            "fit": {**{k: v for k, v in summary.items() if k != "seconds"},
                    "fitted_gpu_types": sorted({r.cluster.gpu.name for r in rows}),
                    "out_of_sample": {"gb200": {"dense": blackwell[1], "moe": blackwell_moe[1] | moe_groups[1]},
                                      "narayanan2021_orderings": orderings[1]}},
            "constants": {k: float(f"{v:.4g}") for k, v in full.to_dict().items()},
        }, indent=2) + "\n")
        load_cost_constants.cache_clear()


def _config_key(r: Row) -> tuple:
    return (r.model.name, r.num_gpus, r.parallel.short_name(), r.workload.precision,
            r.workload.global_batch_size, r.workload.seq_length)


def _leave_config_out(fitter: Fitter, rows: list[Row], start: CostConstants,
                      loo_constants: list[CostConstants]) -> list[CostConstants]:
    """Per row, the constants fitted with every release of its config left out at once.

    Several software releases re-ran the same config (model, GPUs, parallel config, precision, batch,
    sequence), e.g. Llama3 70B TP4 PP8 VPP5 four times. Leaving out one release keeps its twins in the
    fit, which flatters the leave-one-out error of exactly those rows; this is the stricter check.
    """
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(_config_key(r), []).append(i)
    out = list(loo_constants)  # a config run once: leaving it out is leaving its one row out
    for members in groups.values():
        if len(members) == 1:
            continue
        c = fitter.fit([j for j in range(len(rows)) if j not in members], start=start)
        for i in members:
            out[i] = c
    return out


def _table(rows, loo, err, ranks) -> list[str]:
    head = ("| source | model | GPUs | GPU | published config | published tok/s/GPU | LOO predicted | error "
            "| judged as | rank of published | our top-1 (predicted tok/s/GPU) | note |")
    lines = [head, "|" + "---|" * 12]
    for r, p, e, rk in zip(rows, loo, err, ranks):
        if rk is None:
            rank, top = "-", "-"
        elif rk["rank"] is None:
            rank, top = "n/a", rk["why"]
        else:
            rank = f"{rk['rank']} / {rk['num_ranked']}" + (f" (as {rk['pub_cfg']})" if r.unpublished else "") + (
                "" if rk["pub_fits"] else
                                                           f" (we predict {rk['pub_mem_gib']:.0f} GiB: over the limit)")
            top = f"{rk['best']} ({rk['best_pred']:.0f}, +{100 * rk['gap']:.1f}%)"
        lines.append(f"| {r.source} | {r.model.name} | {r.num_gpus} | {r.gpu} | {r.parallel.short_name()} "
                     f"{r.workload.precision} gbs{r.workload.global_batch_size} s{r.workload.seq_length} | "
                     f"{r.published_tokens_per_s_per_gpu:.0f} | {p:.0f} | {100 * e:+.1f}% | {r.judging.name} | {rank} | {top} "
                     f"| {r.note} |")
    return lines


def _judging_lines(rows: list[Row]) -> str:
    seen = {r.judging.name: r.judging for r in rows}
    out = []
    for j in seen.values():
        pinned = ", ".join(f"{k}={v}" for k, v in j.pinned_knobs.items()) or "none"
        out.append(f"- **{j.name}**: grad_reduce_in_fp32={j.memory_options.grad_reduce_in_fp32}, memory headroom "
                   f"{RANK_HEADROOM:g} for the alternatives (the published config is ranked whatever our memory "
                   f"model says), TP comm overlap {j.tp_comm_overlap}, forced balanced MoE routing "
                   f"{j.force_balanced_routing}, pinned knobs: {pinned}. {j.why}.")
    return "\n".join(out)


# Why rows rank low (analysis of this model's misses; printed for each model that has a miss).
LOW_RANK_NOTES = {
    "qwen3-30b-a3b": (
        "Judged under its run's HybridEP dispatcher, the recipe's EP16 (two nodes) is predicted within 2% of its "
        "published speed; we put EP8 inside one node (TP2 PP1 EP8 MBS2) a few percent ahead: even deduplicated, "
        "every token crosses the 50 GB/s NIC about once per layer and direction, against 450 GB/s NVLink for EP8, "
        "but the MoE token work (permutation, expert activation: moe_token_passes) weighs more than the exchange. "
        "NVIDIA's own releases say the two are close: on the same 16 GPUs the 26.02.01 recipe (PP2 VPP12 EP8, "
        "DeepEP) ran at 9058 tok/s, the later EP16 HybridEP recipe at 8826-8960. "
        "EP8 at PP1 needs about 70 GiB in our memory model; NVIDIA used PP2 for EP8, so memory may be why. "
        "(The 26.02 row at 5113 tok/s is a software regression, the same config ran at 9058 in 26.02.01, and the "
        "25.11 row at 5275 likely another: both are predicted about 1.8x too fast and dominate the H100 MAPE.)"),
    "llama3-70b": (
        "Borderline, one row (24.07: TP4 PP4 VPP5 CP2, our best about 3.4% faster): we prefer the same TP4 CP2 on "
        "2 stages (PP2 VPP8), because the last stage also runs the 128k-vocabulary output layer and loss (more than "
        "a layer's worth), which weighs more on 20-layer stages than on 40-layer ones. The later PP8 recipes rank "
        "9 and within 3% of our best, though we underpredict them by 4-6% for the same reason. NVIDIA saw that "
        "imbalance after these runs: Megatron-Bridge commit 56ae11d (2026-08-07, 'llama3 70B H100 FP8-CS: set an "
        "explicit pipeline layout') moves one layer off the last stage ('Et*2|(t*2|)*34,t*3|(t*2|)*3,tL', "
        "perf_recipes/llama/h100/llama3.py), which we predict about 4% faster than the even PP8 split. The "
        "published data lean against our CP2 preference: the 24.07 CP2 recipe ran at 1524 tok/s, below the later "
        "PP8 runs (newer software, though), so our CP2 cost may be optimistic (the ring attention's per-step "
        "overheads beyond K/V traffic and output rescaling are not modelled)."),
    "llama3-8b": (
        "The 24.07 recipe split the 8k sequence over 2 GPUs (TP1 PP1 CP2); we predict that splitting the layers "
        "instead is faster and prefer TP2 with micro-batch 2 (about 5% faster). NVIDIA's later recipes for the "
        "same model on the same 8 GPUs dropped CP too (25.09 and 25.11: TP1 PP1 with Megatron-FSDP) and ran 15-18% "
        "faster (14079-14451 tok/s against 12273), on newer software; we rank that config first in those rows. "
        "Our memory model does not fit it beside the CP2 row (82 GiB: Megatron-FSDP also shards the weights and "
        "gradients, which we model as the distributed optimizer). No TP2 measurement is published."),
    "gpt-oss-120b": (
        "The recipe splits the 36 layers evenly over 4 stages, so the last stage also runs the untied "
        "201k-vocabulary output layer and its loss; that GEMM alone has about 4 times the forward FLOPs of one "
        "MoE decoder layer (2 s h V = 4.7 TFLOP per micro-batch, against about 1.2), and in our model it makes the "
        "last stage the slowest, which sets the pace of the whole pipeline. Configs that balance the stages are "
        "predicted 7-11% faster, most of it at the recipe's own micro-batch 1: the recipe's TP1 PP4 EP8 with VPP 2 "
        "and 8 layers on the first and last stages (about 8%), or TP1 PP2 VPP6 EP16 (about 9%). Our top pick adds "
        "micro-batch 4 with full recompute for a further 3%, which comes from the routed-expert GEMMs (our roofline, "
        "gemm_memory_weight, makes them memory-bound at micro-batch 1) and which NVIDIA's own data lean against: "
        "the 25.11 recipe at MBS 4 ran at 5630 tok/s, the later MBS 1 recipes at 5810-5993 (other software, "
        "though). The recipe sets no VPP (perf_recipes/gpt_oss/common.py: virtual_pipeline_model_parallel_size="
        "None) and recomputes layernorm and MoE activations to fit in 80 GB, so memory may also decide; its MBS 1 "
        "rows are predicted within 3%. No measurement of a balanced split is published for this model; for "
        "Llama3 70B NVIDIA pinned one after these rows (see llama3-70b)."),
    "llama2-7b": (
        "We prefer micro-batch 2 on two stages (TP1 PP2 VPP8, about 4% faster): the fixed per-layer time is paid per "
        "micro-batch, so doubling it halves that share, and under the 24.07 software's bf16 weights plus FP8 copy "
        "micro-batch 2 fits our 10% headroom only with the layers split over two GPUs. The recipe ran MBS 1; no "
        "measurement of the alternative is published."),
    "llama2-70b": (
        "We prefer the recipe's TP4 PP4 VPP20 at micro-batch 2 (about 7% faster), for the same reason as "
        "llama2-7b: the fixed per-layer time is paid per micro-batch. Unverified."),
    "gpt3-20b": (
        "PP1, DP32 and 4 micro-batches per step: the distributed optimizer moves 10B parameters' gradients and "
        "weights each step, hidden only behind the first forward / last backward; the prediction rests on how "
        "much of that crosses the NICs (hierarchically once per node, _dp_collective_s)."),
    "gpt3-175b": (
        "At GBS 256 on 128 GPUs we prefer TP8 PP8 VPP6 MBS4 (larger micro-batches, about 4% faster), near our "
        "error; the same recipe at GBS 2048 on 512 GPUs ranks first."),
    "nemotron3-22b": (
        "The recipe (NeMo 24.07) runs PP4 VPP10 with an even split, so the last of the 4 stages also holds the "
        "untied 256k-vocabulary output layer (bf16 under FP8) and its loss: in our model that weighs about as much "
        "as 4 of the stage's 10 decoder layers, and the whole pipeline moves at that stage's pace (without the "
        "output layer we would predict the recipe about 40% faster). We prefer PP1 (TP4, micro-batch 4), where "
        "every GPU runs its share of the output layer, and our memory model fits it. The recipe ran about 11% below "
        "even our prediction of it, so we do not underrate the recipe; no PP1 measurement is published to check "
        "the alternative. Dimensions from NeMo's Nemotron3Config22B (full multi-head attention)."),
    "llama2-13b": (
        "Borderline (our best about 3.3% faster): we prefer the same TP1 on 2 stages (PP2 VPP10), because the last "
        "of the recipe's 4 stages also runs the untied 32k-vocabulary output layer and loss, about 0.6 of a "
        "decoder layer in our model, which weighs more on 10-layer stages than on 20-layer ones (the same reason "
        "as the 24.07 llama3-70b row). No PP2 measurement is published."),
    "gpt-119B": (
        "Borderline: MBS and VPP are not published; the best MBS/VPP at the published TP8 PP4 is predicted a few "
        "percent behind our best (TP8 PP16 VPP2), within our error."),
    "A100 papers": (
        "Narayanan et al. 2021 and Korthikanti et al. 2022 set TP to the node size (8) first and used PP beyond "
        "it (Narayanan Sec. 3: tensor parallelism up to the server size). Without sequence parallelism TP8's "
        "forward all-reduces are not overlapped (2021-22 Megatron-LM), and with one data-parallel member per node "
        "each GPU's gradient all-reduce crosses its NIC in full, where TP2-4 split it over the node's NICs "
        "(hierarchically); so we predict TP2-4 with more pipeline stages about 5-15% faster for the 18B-175B rows. "
        "The per-layer check above now agrees within 3% (sequence parallelism saves 3% published, about 3% predicted), "
        "so the remaining gap is not the per-layer work that TP8 repeats. No measurement of the alternatives is "
        "published; for the 145B-175B rows the gap is near our error, for the 18B-39B rows our claim is "
        "unverified."),
    "gpt-32B": (
        "Borderline: the published TP8 PP1 (at any MBS) ranks near our top 5, a few percent behind our TP4 PP1 "
        "MBS2. We underpredict this row by about 20%, the largest H100 error outside the Qwen3 regression rows: "
        "a fifth of its step is the exposed gradient all-reduce in our model (DP 48 with one member per node, 4 "
        "micro-batches to hide it behind), and the run was faster than that allows."),
}


def _low_rank_lines(rows: list[Row], ranks: list) -> str:
    missed: dict[str, int] = {}
    for r, rk in zip(rows, ranks):
        if rk is None or rk["rank"] is None or rk["rank"] <= 5 or rk["gap"] <= 0.03:
            continue
        key = r.model.name if r.is_h100 else "A100 papers"
        missed[key] = missed.get(key, 0) + 1
    return "\n".join(f"- **{key}** ({n} row{'s' if n > 1 else ''}): {LOW_RANK_NOTES.get(key, 'not analysed yet')}"
                     for key, n in missed.items())


def _report(summary: dict, full: CostConstants, lines: list[str], rows: list[Row], ranks: list,
            layer_lines: list[str], matched_lines: list[str], scaling: tuple[list[str], str],
            orderings: tuple[list[str], dict], pair: tuple[list[str], str],
            blackwell: tuple[list[str], dict], gb200_moe: list[Row], blackwell_moe: tuple[list[str], dict],
            moe_groups: tuple[list[str], dict]) -> str:
    consts = "\n".join(f"- `{k}` = {v:.4g}" + (" (assumed prior, not fitted)" if k in FIXED else "")
                       for k, v in full.to_dict().items())
    return (
        "# Cost model throughput accuracy (generated by benchmarks/accuracy_throughput.py)\n\n"
        f"Rows: {summary['rows']} ({summary['h100_rows']} H100, {summary['a100_rows']} A100). "
        f"Leave-one-out MAPE: **H100 {100 * summary['loo_mape_h100']:.1f}%**, "
        f"**A100 {100 * summary['loo_mape_a100']:.1f}%** (in-sample: H100 {100 * summary['in_sample_mape_h100']:.1f}%, "
        f"A100 {100 * summary['in_sample_mape_a100']:.1f}%). The rows hold {summary['configs']} distinct configs "
        "(some re-run in several releases); leaving out every release of a row's config at once: "
        f"H100 {100 * summary['leave_config_out_mape_h100']:.1f}%, A100 {100 * summary['leave_config_out_mape_a100']:.1f}%.\n"
        + (f"Published config in our top 5 or within 3% of our predicted best: **{summary['rank_hits']}** rows "
           f"({summary['rank_hits_strict']} if unpublished knobs are held at the values assumed for the fit), "
           f"alternatives judged with the tool's default memory headroom {RANK_HEADROOM:g}; with no headroom "
           f"(alternatives up to the GPU's full capacity): {summary['rank_hits_full_capacity']} "
           f"({summary['rank_hits_strict_full_capacity']} strict). Ranked with the constants fitted without every "
           f"release of the row's config: {summary['rank_hits_leave_config_out']}.\n"
           if "rank_hits" in summary else "")
        + "\nRanking settings per row source (each row's space is enumerated under the settings its run used):\n"
        + _judging_lines(rows) + "\n"
        + f"\nConstants fitted on all rows ({len(NAMES)} fitted, {len(FIXED)} held):\n{consts}\n\n"
        + "Per-layer check, out of sample (korthikanti2022_table4.csv: one 22B layer, TP 8, s 2048, micro-batch 4, "
        + "A100; not used in the fit). The paper-era rows run without flash attention: the s x s scores are formed "
        + "in memory (cost.NONFLASH_*_BYTES_PER_SCORE, counted by hand, not fitted).\n\n"
        + "\n".join(layer_lines) + "\n\n"
        + "Matched alternatives, out of sample (Megatron-Bridge skills/nemo-mbridge-perf-memory-tuning/SKILL.md at "
        + "067f987: the Llama3 70B SFT recipe of the 26.06 row re-run on the same 32 H100 with more PP or more TP, "
        + "selective core_attn recompute in all three; not used in the fit):\n\n"
        + "\n".join(matched_lines) + "\n\n"
        + MATCHED_NOTE + "\n\n"
        + "Data-parallel scaling, out of sample (narayanan2021_table2.csv, the PTD rows; korthikanti2022.csv's 530B at "
        + "8-way data parallelism, from the paper's Sec. 6.3 and abstract; neither is fitted, the 280-GPU Korthikanti "
        + "rows are fitted rows, shown as the reference; constants fitted on all rows):\n\n"
        + "\n".join(scaling[0]) + "\n\n" + scaling[1] + "\n\n"
        + "Matched configs with a stated order, out of sample (paper_orderings.py: Narayanan et al. 2021 ran one model "
        + "in several configs on the same A100s and said in words which was fastest; configs from Megatron-LM's "
        + "examples/academic_paper_scripts/sc21 scripts, run settings as the Table 1 rows; constants fitted on all "
        + f"rows): ordered as the paper says in **{orderings[1]['agree']}/{orderings[1]['cases']}** figure and "
        + "batch-size cases.\n\n"
        + "\n".join(orderings[0]) + "\n\n"
        + "Two configs of one model on three GPU types, out of sample (benchmarks/data/megatron_lm_iteration_times.csv: "
        + "Megatron-LM's functional tests gpt3_7b_tp1_pp4_memory_speed and gpt3_7b_tp4_pp1_memory_speed, a GPT 7B on "
        + "8 GPUs at seq 8192, global batch 8, BF16; the median step time of each CI run whose golden values updated "
        + "both tests at once; not used in the fit; constants fitted on all rows):\n\n"
        + "\n".join(pair[0]) + "\n\n" + pair[1] + "\n\n"
        + "A GPU type outside the fit, out of sample (benchmarks/data/mbridge_gb200_dense_perf.csv: every dense-model "
        + "GB200 row of Megatron-Bridge's performance summaries; predicted and ranked with the constants fitted on the "
        + "H100 and A100 rows, GB200's datasheet figures in autotune/cluster.py): mean |error| "
        + f"**{100 * blackwell[1]['mape']:.1f}%** over {blackwell[1]['rows']} rows "
        + "(" + ", ".join(f"{k.removeprefix('mape_').upper()} {100 * v:.1f}%" for k, v in blackwell[1].items()
                          if k.startswith("mape_")) + "); "
        + f"published config in our top 5 or within 3% of our best: **{blackwell[1]['rank_hits']}**.\n\n"
        + "\n".join(blackwell[0]) + "\n\n"
        + _moe_gb200_text(gb200_moe, blackwell_moe, moe_groups)
        + "\n".join(lines) + "\n"
        + ("\nRows ranked low (not in our top 5 and more than 3% behind our best), and why:\n"
           + _low_rank_lines(rows, ranks) + "\n" if any(rk is not None for rk in ranks) else "")
    )


def _release_rise(rows: list[Row], before: str, after: str) -> dict[str, float]:
    """Published speed of each model's `after` row over its `before` row (same config and precision), minus 1."""
    speed = {(r.model.name, r.source.split()[1], r.workload.precision): r.published_tokens_per_s_per_gpu for r in rows}
    return {m: v / speed[(m, before, p)] - 1 for (m, rel, p), v in speed.items() if rel == after and (m, before, p) in speed}


def _moe_gb200_text(rows: list[Row], check: tuple[list[str], dict], groups: tuple[list[str], dict]) -> str:
    summary, split = check[1], groups[1]
    rise = _release_rise(rows, "26.04.01", "26.06")
    return (
        "MoE models on a GPU type outside the fit, out of sample (benchmarks/data/mbridge_gb200_moe_perf.csv: every "
        "GB200 pre-training row of DeepSeek-V3, GPT-OSS 120B, Qwen3-30B-A3B and Qwen3-235B-A22B in Megatron-Bridge's "
        "performance summaries, each predicted under its recipe's token dispatcher and pipeline layout, "
        "throughput_rows.GB200_MOE_DISPATCHERS; constants fitted on the H100 and A100 rows): mean |error| "
        f"**{100 * summary['mape']:.1f}%** over {summary['rows']} rows: {100 * split['no_ep_overlap']['mape']:.1f}% "
        f"on the {split['no_ep_overlap']['rows']} whose recipes ran none of the features in the second table, "
        f"{100 * split['ep_overlap']['mape']:.1f}% on the {split['ep_overlap']['rows']} that ran them; "
        f"published config in our top 5 or within 3% of our best: **{summary['rank_hits']}**.\n\n"
        + "\n".join(check[0]) + "\n\n" + "\n".join(groups[0]) + "\n\n"
        + "From 26.06 every one of these recipes overlaps the EP all-to-all with compute "
        "(overlap_moe_expert_parallel_comm, delay_wgrad_compute) and captures the whole iteration in CUDA graphs, "
        "with paged stash and a fused grouped MLP. The cost model has none of these; from 26.04.01 to 26.06, at the "
        "same config, the published speeds rose "
        + ", ".join(f"{100 * v:+.0f}% ({m})" for m, v in sorted(rise.items(), key=lambda kv: kv[1]))
        + ", and we under-predict those rows by about as much. GPT-OSS 120B in BF16 (26.02 to 26.04.01) is "
        "over-predicted by about half and we do not know why: its attention sinks and clamped-SwiGLU expert "
        "activation are not modelled, and its alternating sliding-window attention (also not modelled) would make "
        "it faster, not slower. Where the order is concerned, compare the rank column: for Qwen3-235B-A22B we "
        "prefer one pipeline stage over the published eight (the bubble, and the stage-to-stage sends between "
        "NVL72 domains), a choice only a measured trial can settle.\n\n")


if __name__ == "__main__":
    main()
