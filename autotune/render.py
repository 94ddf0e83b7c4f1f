"""Human-facing tables for the CLI (rich). JSON shapes live with the objects they describe."""

from __future__ import annotations

from typing import Iterable

from rich.console import Console
from rich.table import Table

from autotune.cluster import ClusterSpec
from autotune.config import JobConfig, Workload
from autotune.constraints import RuleResult
from autotune.model_spec import ModelSpec
from autotune.params import count_parameters
from autotune.space import SpaceResult


def _b(n: float) -> str:
    return f"{n / 1e9:,.2f}B" if n >= 1e9 else f"{n / 1e6:,.2f}M"


def models_table(specs: Iterable[ModelSpec], aliases: dict[str, list[str]]) -> Table:
    t = Table(title="Model catalog", show_lines=False)
    for col in ("name", "aliases", "layers", "hidden", "heads/groups", "experts (top-k)", "total", "active", "attention"):
        t.add_column(col, justify="right" if col not in ("name", "aliases", "attention") else "left")
    for s in specs:
        c = count_parameters(s)
        moe = f"{s.moe.num_experts} ({s.moe.router_topk})" if s.moe else "-"
        t.add_row(s.name, ", ".join(aliases.get(s.name, [])), str(s.num_layers), str(s.hidden_size),
                  f"{s.num_attention_heads}/{s.num_query_groups}", moe, _b(c.total), _b(c.active),
                  "MLA" if s.mla else ("MHA" if s.num_query_groups == s.num_attention_heads else "GQA"))
    return t


def assumptions_line(model: ModelSpec, cluster: ClusterSpec, workload: Workload, space_name: str | None = None) -> str:
    parts = [
        f"model={model.name}", f"gpus={cluster.num_gpus}", f"gpu_type={cluster.gpu.name}",
        f"gpus_per_node={cluster.gpus_per_node}", f"nvlink_domain={cluster.nvlink_domain_size}",
        f"seq_length={workload.seq_length}", f"global_batch_size={workload.global_batch_size}",
        f"precision={workload.precision}",
    ]
    if space_name:
        parts.append(f"space={space_name}")
    return "assumed: " + " ".join(parts)


def pruning_table(result: SpaceResult) -> Table:
    t = Table(title=f"{result.num_candidates:,} candidates -> {result.num_feasible:,} feasible")
    t.add_column("rule")
    t.add_column("pruned", justify="right")
    t.add_column("share", justify="right")
    for name, count in sorted(result.pruned_by_rule.items(), key=lambda kv: -kv[1]):
        t.add_row(name, f"{count:,}", f"{count / max(result.num_candidates, 1):.1%}")
    return t


def configs_table(jobs: list[JobConfig], title: str) -> Table:
    t = Table(title=title)
    cols = ("#", "TP", "PP", "VPP", "CP", "EP", "ETP", "DP", "EDP", "MBS", "micro-batches", "SP", "dist-opt",
            "recompute", "pp split")
    for c in cols:
        t.add_column(c, justify="right")
    for i, j in enumerate(jobs, 1):
        p = j.parallel
        split = p.pipeline_split
        if split == "uneven":
            split = f"first {p.num_layers_in_first_pipeline_stage}/last {p.num_layers_in_last_pipeline_stage}"
        t.add_row(str(i), str(p.tp), str(p.pp), str(p.vpp if p.vpp > 1 else "-"), str(p.cp), str(p.ep), str(p.etp),
                  str(j.data_parallel_size), str(j.expert_data_parallel_size), str(p.micro_batch_size),
                  str(j.num_microbatches), "on" if p.sequence_parallel else "off",
                  "on" if p.use_distributed_optimizer else "off", p.recompute_granularity or "none", split)
    return t


def rules_table(results: list[RuleResult]) -> Table:
    t = Table(title="Validity rules", show_lines=True)
    t.add_column("rule")
    t.add_column("verdict")
    t.add_column("why / what is wrong")
    t.add_column("fix")
    for r in results:
        verdict = "[green]pass[/]" if r.passed else "[red]FAIL[/]"
        why = r.rule.explanation if r.passed else f"{r.message}\n[dim]{r.rule.explanation}[/]"
        t.add_row(r.rule.name, verdict, why, "" if r.passed else r.rule.fix)
    return t


def predicted_table(rows: list[dict], compare_to_first: bool = False) -> Table:
    """Predicted speed and memory, one row per config of the config table printed before it (same #).

    compare_to_first adds each config's predicted speed relative to row 1 (the predicted best of a ranking).
    """
    t = Table(title="predicted (cost model: autotune/cost.py; memory: autotune/memory.py)")
    cols = ("#", "tokens/s/GPU") + (("vs #1",) if compare_to_first else ()) + ("step time s", "MFU", "peak GiB", "fits")
    for col in cols:
        t.add_column(col, justify="right")
    for n, r in enumerate(rows, 1):
        vs = (f"{r['tokens_per_s_per_gpu'] / rows[0]['tokens_per_s_per_gpu'] - 1:+.1%}",) if compare_to_first else ()
        t.add_row(str(n), f"{r['tokens_per_s_per_gpu']:,.0f}", *vs, f"{r['step_time_s']:.3f}", f"{r['mfu']:.1%}",
                  f"{r['peak_memory_gib']:.1f}", "yes" if r["fits_memory"] else "[red]no[/]")
    return t


def breakdown_table(predicted: dict) -> Table:
    """Where one config's predicted step time goes (cost.BREAKDOWN_KEYS), largest term first."""
    step = predicted["step_time_s"]
    t = Table(title=f"where the {step:.3f} s step goes")
    t.add_column("term")
    for col in ("s/step", "share"):
        t.add_column(col, justify="right")
    for k, v in sorted(predicted["breakdown_s"].items(), key=lambda kv: -kv[1]):
        t.add_row(k, f"{v:.3f}", f"{v / step:.1%}")
    return t


def stage_table(predicted: dict) -> Table | None:
    """One micro-batch's forward + backward time per pipeline stage; None for a single stage.

    Every stage waits for the slowest one each micro-batch, so an unbalanced split (the last stage also runs
    the output layer and loss) shows here as the gap to the slowest.
    """
    times, layers = predicted["stage_microbatch_s"], predicted["stage_layers"]
    if len(times) < 2:
        return None
    slowest = max(times.values())
    t = Table(title="per stage, one micro-batch fwd+bwd")
    for col in ("stage", "decoder layers", "ms", "vs slowest"):
        t.add_column(col, justify="right")
    for name, seconds in times.items():
        t.add_row(name, str(layers[name]), f"{1e3 * seconds:.1f}",
                  "slowest" if seconds == slowest else f"{seconds / slowest - 1:+.1%}")
    return t


def stage_note(predicted: dict) -> str:
    """What the stage table means, and how to rebalance when the output layer's stage is the slowest."""
    times = predicted["stage_microbatch_s"]
    last = list(times)[-1]
    if times[last] < max(times.values()):
        return f"The slowest stage sets the pace of the pipeline; stage {last} also runs the output layer and the loss."
    return (f"The slowest stage sets the pace of the pipeline, and it is stage {last}, which also runs the output layer "
            "and the loss: moving layers off it (--pipeline-split account_embedding_loss, --last-stage-layers, "
            "--pp-layout) can balance the stages.")


def cost_model_error_line(fit: dict, gpu: str, ranking: bool = True) -> str:
    """How far the predicted speeds can be trusted on this GPU type, from the fit record of the packaged constants."""
    if "loo_mape_h100" not in fit:
        return ""
    line = (f"cost model error (benchmarks/accuracy_throughput.py): {fit['loo_mape_h100']:.1%} mean on "
            f"{fit['h100_rows']} published H100 runs, {fit['loo_mape_a100']:.1%} on {fit['a100_rows']} A100 runs, "
            f"each predicted without its own run (leave-one-out).")
    if gpu not in fit.get("fitted_gpu_types", [gpu]):
        checked = fit.get("out_of_sample", {}).get(gpu)
        if checked:
            # One check per model kind (dense, MoE): their errors differ too much to quote one figure.
            parts = [f"{c['rows']} {'MoE' if kind == 'moe' else kind}-model runs by {c['mape']:.1%}"
                     for kind, c in checked.items()]
            line += (f" No {gpu} run is in the fit; published {gpu} runs, predicted with these constants, are off "
                     f"on average: {' and '.join(parts)}.")
        else:
            line += (f" No {gpu} run is in the fit or checked: its speeds rest on datasheet figures, so read the "
                     "order of the configs more than their speeds.")
    ties = " Configs a few % apart are ties within that error; real trials (autotune search) decide between them."
    return line + (ties if ranking else "")


def memory_table(est) -> Table:
    """Per-stage memory of the most loaded GPU of each stage (autotune.memory.MemoryEstimate)."""
    t = Table(title=f"memory per GPU, most loaded GPU of each stage (GiB; peak {est.peak_memory_gib:.1f} "
                    f"of {est.capacity_gib:g})")
    for col in ("stage", "params", "weights", "grads", "optimizer", "activations", "overhead", "total"):
        t.add_column(col, justify="right")
    for s in est.stages:
        t.add_row(str(s.stage), f"{s.num_parameters:,}", f"{s.weights_gib:.2f}", f"{s.gradients_gib:.2f}",
                  f"{s.optimizer_gib:.2f}", f"{s.activations_gib:.2f}", f"{s.overhead_gib:.2f}", f"{s.total_gib:.2f}")
    return t


def console(stderr: bool = False) -> Console:
    c = Console(stderr=stderr, highlight=False, soft_wrap=False)
    if not c.is_terminal:
        c = Console(stderr=stderr, highlight=False, soft_wrap=False, width=160)  # pipes and CI logs
    return c
