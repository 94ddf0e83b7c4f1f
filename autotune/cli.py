"""The `autotune` command line. It parses, wires and maps errors to exit codes; no logic lives here."""

from __future__ import annotations

import json
import sys
from enum import Enum
from typing import Optional

import typer

try:  # typer >= 0.24 vendors its own click; older releases use the click package
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException, UsageError

from autotune import constraints, render
from autotune.cluster import DEFAULT_GPU_TYPE, ClusterSpec
from autotune.config import JobConfig, ParallelConfig, Workload
from autotune.errors import AutotuneError, ConfigError
from autotune.model_catalog import aliases_of, get_model, model_names
from autotune.resolve import resolve_model
from autotune.space import enumerate_space, validate_space_for
from autotune.space_files import default_space, load_space_file
from autotune.cost_constants import load_fit_record
from autotune.cost_ranking import rank_space
from autotune.explain import explain_config

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Find the fastest Megatron Core parallelism config that fits.",
)

DEFAULT_SEQ_LEN = 4096
DEFAULT_GLOBAL_BATCH = 1024
DEFAULT_TRIALS = 20
# `search --backend cpu` defaults: sized so the README's CPU demo runs real trials in a few minutes.
CPU_DEFAULTS = {"seq_length": 64, "global_batch_size": 8, "num_trials": 4}


class Recompute(str, Enum):
    none = "none"
    selective = "selective"
    full = "full"


class Precision(str, Enum):
    bf16 = "bf16"
    fp8 = "fp8"


class PipelineSplit(str, Enum):
    even = "even"
    account_embedding_loss = "account_embedding_loss"


# Shared options. `--gpus` is parsed as text so that 0, negatives and non-numbers get our message.
MODEL_OPT = typer.Option(..., "--model", "-m", help="catalog name (see `autotune models`) or path to an HF config.json")
GPUS_OPT = typer.Option(..., "--gpus", "-n", help="number of GPUs of the training job")
GPU_TYPE_OPT = typer.Option(DEFAULT_GPU_TYPE, "--gpu-type", help="a100-40gb, a100-80gb, h100-80gb, h200-141gb, b200, gb200")
GPN_OPT = typer.Option(None, "--gpus-per-node", help="override the GPU type's default GPUs per node")
SEQ_OPT = typer.Option(DEFAULT_SEQ_LEN, "--seq-len", help="sequence length")
GBS_OPT = typer.Option(DEFAULT_GLOBAL_BATCH, "--global-batch-size", help="sequences per optimizer step")
PREC_OPT = typer.Option(Precision.bf16, "--precision", help="bf16 or fp8")
JSON_OPT = typer.Option(False, "--json", help="machine-readable output on stdout")
XTP_OPT = typer.Option(False, "--allow-cross-node-tp", help="allow TP groups larger than one NVLink domain")
# The knobs of one config, shared by `explain` and `estimate` (Megatron's names in the help).
TP_OPT = typer.Option(1, "--tp", help="tensor_model_parallel_size")
PP_OPT = typer.Option(1, "--pp", help="pipeline_model_parallel_size")
VPP_OPT = typer.Option(None, "--vpp", help="virtual_pipeline_model_parallel_size")
CP_OPT = typer.Option(1, "--cp", help="context_parallel_size")
EP_OPT = typer.Option(1, "--ep", help="expert_model_parallel_size")
ETP_OPT = typer.Option(1, "--etp", help="expert_tensor_parallel_size")
MBS_OPT = typer.Option(1, "--mbs", help="micro_batch_size")
SP_OPT = typer.Option(None, "--sp/--no-sp", help="sequence_parallel (default: on when TP > 1)")
RECOMPUTE_OPT = typer.Option(Recompute.none, "--recompute")
NO_DIST_OPT_OPT = typer.Option(False, "--no-distributed-optimizer")


def _gpus(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise ConfigError(f"--gpus must be a positive integer, got '{text}'") from None
    if n <= 0:
        raise ConfigError(f"--gpus must be a positive integer, got {n}")
    return n


def _setup(model: str, gpus: str, gpu_type: str, gpus_per_node: Optional[int], seq_len: int, global_batch_size: int,
           precision: Precision):
    spec = resolve_model(model)
    cluster = ClusterSpec.build(_gpus(gpus), gpu_type, gpus_per_node)
    if seq_len <= 0 or global_batch_size <= 0:
        raise ConfigError(f"--seq-len and --global-batch-size must be positive, got {seq_len} and {global_batch_size}")
    workload = Workload(seq_length=seq_len, global_batch_size=global_batch_size, precision=precision.value)
    return spec, cluster, workload


def _parallel_from_flags(tp: int, pp: int, vpp: Optional[int], cp: int, ep: int, etp: int, mbs: int,
                         sp: Optional[bool], recompute: Recompute, no_dist_opt: bool, **split) -> ParallelConfig:
    """The knobs `explain` and `estimate` share. `--vpp 1` means no interleaving; SP defaults to TP > 1."""
    return ParallelConfig(
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=None if vpp == 1 else vpp, context_parallel_size=cp,
        expert_model_parallel_size=ep, expert_tensor_parallel_size=etp, micro_batch_size=mbs,
        sequence_parallel=(tp > 1) if sp is None else sp, use_distributed_optimizer=not no_dist_opt,
        recompute_granularity=None if recompute is Recompute.none else recompute.value, **split)


def _print_json(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, indent=None, separators=(",", ":")) + "\n")


@app.command()
def models(as_json: bool = JSON_OPT) -> None:
    """List the model catalog."""
    from autotune.params import count_parameters

    specs = [get_model(n) for n in model_names()]
    if as_json:
        _print_json([{**s.to_dict(), "aliases": aliases_of(s.name),
                      "total_params": count_parameters(s).total, "active_params": count_parameters(s).active}
                     for s in specs])
        return
    render.console().print(render.models_table(specs, {s.name: aliases_of(s.name) for s in specs}))


@app.command()
def space(
    model: str = MODEL_OPT, gpus: str = GPUS_OPT, gpu_type: str = GPU_TYPE_OPT,
    gpus_per_node: Optional[int] = GPN_OPT, seq_len: int = SEQ_OPT, global_batch_size: int = GBS_OPT,
    precision: Precision = PREC_OPT,
    space_file: Optional[str] = typer.Option(None, "--space", help="search-space YAML (default: search_spaces/)"),
    top: int = typer.Option(20, "--top", help="feasible configs to show in the table"),
    allow_cross_node_tp: bool = XTP_OPT, as_json: bool = JSON_OPT,
) -> None:
    """Enumerate the search space and prune it with every validity rule."""
    if top < 0:
        raise ConfigError(f"--top must be >= 0, got {top}")
    spec, cluster, workload = _setup(model, gpus, gpu_type, gpus_per_node, seq_len, global_batch_size, precision)
    sp = load_space_file(space_file) if space_file else default_space(spec)
    validate_space_for(sp, spec)
    result = enumerate_space(sp, spec, cluster, workload, allow_cross_node_tp=allow_cross_node_tp)
    ranked = rank_space(result)
    if as_json:
        out = result.to_json_dict()
        for i, entry in enumerate(out["feasible"]):
            entry["predicted"] = ranked.predicted(i)
        _print_json(out)
        return
    con = render.console()
    con.print(render.assumptions_line(spec, cluster, workload, sp.name))
    con.print(render.pruning_table(result))
    order = ranked.order[:top]
    shown = [result.job(int(i)) for i in order]
    con.print(render.configs_table(shown, f"feasible configs, predicted fastest first (top {len(shown)} of "
                                          f"{result.num_feasible:,}; {int(ranked.fits_memory.sum()):,} fit in memory)"))
    con.print(render.predicted_table([ranked.predicted(int(i)) for i in order], compare_to_first=True))
    con.print(render.cost_model_error_line(load_fit_record(), cluster.gpu.name))


@app.command()
def explain(
    model: str = MODEL_OPT, gpus: str = GPUS_OPT, gpu_type: str = GPU_TYPE_OPT,
    gpus_per_node: Optional[int] = GPN_OPT, seq_len: int = SEQ_OPT, global_batch_size: int = GBS_OPT,
    precision: Precision = PREC_OPT,
    tp: int = TP_OPT, pp: int = PP_OPT, vpp: Optional[int] = VPP_OPT, cp: int = CP_OPT, ep: int = EP_OPT,
    etp: int = ETP_OPT, mbs: int = MBS_OPT, sp: Optional[bool] = SP_OPT, recompute: Recompute = RECOMPUTE_OPT,
    no_dist_opt: bool = NO_DIST_OPT_OPT,
    pipeline_split: PipelineSplit = typer.Option(PipelineSplit.even, "--pipeline-split",
                                                 help="even, or account_embedding_loss"),
    first_stage_layers: Optional[int] = typer.Option(None, "--first-stage-layers",
                                                     help="num_layers_in_first_pipeline_stage"),
    last_stage_layers: Optional[int] = typer.Option(None, "--last-stage-layers",
                                                    help="num_layers_in_last_pipeline_stage"),
    pp_layout: Optional[str] = typer.Option(None, "--pp-layout", help="pipeline_model_parallel_layout, e.g. 'Et|(tt|)*30L'"),
    allow_cross_node_tp: bool = XTP_OPT, as_json: bool = JSON_OPT,
) -> None:
    """Judge one config against every rule, with explanations and fixes."""
    uneven = first_stage_layers is not None or last_stage_layers is not None
    chosen = [name for name, on in (("--pp-layout", pp_layout is not None), ("--first/--last-stage-layers", uneven),
                                    ("--pipeline-split account_embedding_loss",
                                     pipeline_split is PipelineSplit.account_embedding_loss)) if on]
    if len(chosen) > 1:
        raise ConfigError(f"contradictory flags: {' and '.join(chosen)} each set the pipeline split; keep one")
    spec, cluster, workload = _setup(model, gpus, gpu_type, gpus_per_node, seq_len, global_batch_size, precision)
    account = pipeline_split is PipelineSplit.account_embedding_loss
    parallel = _parallel_from_flags(
        tp, pp, vpp, cp, ep, etp, mbs, sp, recompute, no_dist_opt,
        account_for_embedding_in_pipeline_split=account, account_for_loss_in_pipeline_split=account,
        num_layers_in_first_pipeline_stage=first_stage_layers, num_layers_in_last_pipeline_stage=last_stage_layers,
        pipeline_model_parallel_layout=pp_layout,
    )
    job = JobConfig(num_gpus=cluster.num_gpus, parallel=parallel, workload=workload)
    report = explain_config(spec, cluster, job, allow_cross_node_tp=allow_cross_node_tp)
    if as_json:
        _print_json(report.to_json_dict())
        return
    con = render.console()
    con.print(render.assumptions_line(spec, cluster, workload))
    con.print(render.configs_table([job], "config"))
    con.print(render.rules_table(report.results))
    con.print("[green]feasible[/]" if report.feasible else f"[red]infeasible[/]: fails {', '.join(report.failed)}")
    if report.predicted is not None:
        con.print(render.predicted_table([report.predicted]))
        con.print(render.breakdown_table(report.predicted))
        stages = render.stage_table(report.predicted)
        if stages is not None:
            con.print(stages)
            con.print(render.stage_note(report.predicted))
        con.print(render.cost_model_error_line(load_fit_record(), cluster.gpu.name, ranking=False))
    if report.memory is not None:
        con.print(render.memory_table(report.memory))
    if "memory" in report.failed:
        con.print("changes that fit: " + ("; ".join(f"{f.change} ({f.peak_memory_gib:.1f} GiB)" for f in report.fixes)
                                          if report.fixes else "none found by a single change"))


@app.command()
def estimate(
    model: str = MODEL_OPT, gpus: str = GPUS_OPT, gpu_type: str = GPU_TYPE_OPT,
    gpus_per_node: Optional[int] = GPN_OPT, seq_len: int = SEQ_OPT, global_batch_size: int = GBS_OPT,
    precision: Precision = PREC_OPT,
    tp: int = TP_OPT, pp: int = PP_OPT, vpp: Optional[int] = VPP_OPT, cp: int = CP_OPT, ep: int = EP_OPT,
    etp: int = ETP_OPT, mbs: int = MBS_OPT, sp: Optional[bool] = SP_OPT, recompute: Recompute = RECOMPUTE_OPT,
    no_dist_opt: bool = NO_DIST_OPT_OPT,
    allow_cross_node_tp: bool = XTP_OPT, as_json: bool = JSON_OPT,
) -> None:
    """Per-GPU memory of one config, stage by stage (weights, grads, optimizer, activations, overhead)."""
    from autotune.memory import estimate_memory

    spec, cluster, workload = _setup(model, gpus, gpu_type, gpus_per_node, seq_len, global_batch_size, precision)
    parallel = _parallel_from_flags(tp, pp, vpp, cp, ep, etp, mbs, sp, recompute, no_dist_opt)
    job = JobConfig(num_gpus=cluster.num_gpus, parallel=parallel, workload=workload)
    broken = [r for r in constraints.check_all(spec, cluster, job, allow_cross_node_tp=allow_cross_node_tp)
              if not r.passed and r.rule.name != "memory"]
    if broken:
        r = broken[0]
        raise ConfigError(f"config breaks rule '{r.rule.name}': {r.message}; fix: {r.rule.fix}")
    est = estimate_memory(spec, cluster, job)
    if as_json:
        _print_json(est.to_dict())
        return
    con = render.console()
    con.print(render.assumptions_line(spec, cluster, workload))
    con.print(render.memory_table(est))


class Backend(str, Enum):
    auto = "auto"
    gpu = "gpu"
    cpu = "cpu"
    analytic = "analytic"


@app.command()
def search(
    model: str = MODEL_OPT, gpus: str = GPUS_OPT, gpu_type: str = GPU_TYPE_OPT,
    gpus_per_node: Optional[int] = GPN_OPT,
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help=f"sequence length (default {DEFAULT_SEQ_LEN}; "
                                          f"{CPU_DEFAULTS['seq_length']} with --backend cpu)"),
    global_batch_size: Optional[int] = typer.Option(
        None, "--global-batch-size", help=f"sequences per optimizer step (default {DEFAULT_GLOBAL_BATCH}; "
                                          f"{CPU_DEFAULTS['global_batch_size']} with --backend cpu)"),
    precision: Precision = PREC_OPT,
    space_file: Optional[str] = typer.Option(None, "--space", help="search-space YAML (default: search_spaces/)"),
    trials: Optional[int] = typer.Option(None, "--trials", help=f"real trials to run in this session (default "
                                         f"{DEFAULT_TRIALS}; {CPU_DEFAULTS['num_trials']} with --backend cpu)"),
    time_budget: Optional[str] = typer.Option(None, "--time-budget", help="no new trial after this, e.g. 30m, 2h"),
    trial_timeout: float = typer.Option(900.0, "--trial-timeout", help="seconds one trial may run"),
    backend: Backend = typer.Option(Backend.auto, "--backend",
                                    help="auto (GPUs if there are enough, else analytic), gpu, cpu or analytic"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster (auto or HOST:PORT); default: local Ray"),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna storage URL (default: a journal file)"),
    study_name: Optional[str] = typer.Option(None, "--study-name", help="default: model, cluster and a hash"),
    out: str = typer.Option("results", "--out", help="output root; the study writes to OUT/<study>/"),
    resume: bool = typer.Option(False, "--resume", help="continue a study that already has trials"),
    allow_cross_node_tp: bool = XTP_OPT, as_json: bool = JSON_OPT,
) -> None:
    """Rank every feasible config analytically, then measure the most promising ones with real trials."""
    from pathlib import Path

    from autotune.search import SearchRequest, parse_duration
    from autotune.search_display import run_search

    # CPU trials run tiny models on a few cores: a GPU-sized workload would take hours per trial.
    size = CPU_DEFAULTS if backend is Backend.cpu else {
        "seq_length": DEFAULT_SEQ_LEN, "global_batch_size": DEFAULT_GLOBAL_BATCH, "num_trials": DEFAULT_TRIALS}
    seq_len = size["seq_length"] if seq_len is None else seq_len
    global_batch_size = size["global_batch_size"] if global_batch_size is None else global_batch_size
    trials = size["num_trials"] if trials is None else trials
    spec, cluster, workload = _setup(model, gpus, gpu_type, gpus_per_node, seq_len, global_batch_size, precision)
    req = SearchRequest(
        model=spec, cluster=cluster, workload=workload,
        space=load_space_file(space_file) if space_file else default_space(spec), backend=backend.value,
        num_trials=trials, time_budget_s=parse_duration(time_budget) if time_budget else None,
        trial_time_limit_s=trial_timeout, address=address, storage=storage, study_name=study_name,
        out_root=Path(out), resume=resume, allow_cross_node_tp=allow_cross_node_tp)
    summary = run_search(req, render.console(), as_json=as_json)
    if as_json:
        _print_json(summary)


@app.command()
def export(
    study: str = typer.Option(..., "--study", help="a study folder (results/<study>/) or its best.yaml"),
    fmt: str = typer.Option("yaml", "--format", help="yaml, megatron-args or bridge"),
) -> None:
    """Print a search's best config as best.yaml, Megatron-LM flags, or Megatron Bridge overrides."""
    from pathlib import Path

    from autotune.export import load_best, render_export

    data, job = load_best(Path(study))
    sys.stdout.write(render_export(data, job, fmt).rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user mistakes become one line on stderr and exit code 2."""
    try:
        # With standalone_mode=False typer *returns* an exit code for Ctrl-C (130) instead of raising.
        rc = app(args=argv, standalone_mode=False, prog_name="autotune")
        if isinstance(rc, int) and rc != 0:
            if rc == 130:
                print("aborted", file=sys.stderr)
            return rc
    except AutotuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except UsageError as exc:
        if not exc.format_message():  # bare `autotune`: the help text was already printed
            return 2
        cmd = exc.ctx.command_path if exc.ctx else "autotune"
        print(f"error: {exc.format_message()} (see `{cmd} --help`)", file=sys.stderr)
        return 2
    except ClickException as exc:
        print(f"error: {exc.format_message()}", file=sys.stderr)
        return 2
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
