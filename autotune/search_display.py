"""What `autotune search` shows: the analytic summary, a trial progress bar, the final ranked table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn)
from rich.table import Table

from autotune import render
from autotune import search as search_mod
from autotune.cost_constants import load_fit_record
from autotune.search import AnalyticPhase
from autotune.search import Progress as SearchProgress
from autotune.study import TrialRecord


def print_analytic(con: Console, phase: AnalyticPhase, top: int = 10) -> None:
    req = phase.request
    con.print(render.assumptions_line(req.model, req.cluster, req.workload, req.space.name))
    con.print(f"study: {phase.name}  ({phase.folder})")
    con.print(render.pruning_table(phase.result))
    order = phase.top(top)
    con.print(render.configs_table([phase.result.job(i) for i in order],
                                   f"predicted fastest (top {len(order)} of {phase.result.num_feasible:,} feasible)"))
    con.print(render.predicted_table([phase.ranked.predicted(i) for i in order], compare_to_first=True))
    con.print(render.cost_model_error_line(load_fit_record(), req.cluster.gpu.name))


def progress_line(p: SearchProgress) -> str:
    best = (f"best {p.best.measured['tokens_per_s_per_gpu']:,.1f} tokens/s/GPU (trial {p.best.number})"
            if p.best is not None else "best -")
    return f"trials: {p.done} done, {p.running} running, {p.pruned} pruned, {p.failed} failed; {best}"


def budget_left(p: SearchProgress) -> str:
    if p.deadline is None:
        return ""
    left = max(0.0, p.deadline - search_mod.clock())
    return f"time budget left {int(left // 60)}:{int(left % 60):02d}" if left else "time budget spent"


class LiveProgress:
    """Trial events as they happen, under them a progress bar of this session's trials with the counts
    and the best so far (plain lines when the output is not a terminal, e.g. CI logs)."""

    def __init__(self, con: Console):
        self.con = con
        self.bar = Progress(SpinnerColumn(), TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("{task.fields[status]}"), console=con,
                            transient=False) if con.is_terminal else None
        self._task = None
        self._printed = 0

    def __enter__(self) -> "LiveProgress":
        if self.bar:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar:
            self.bar.__exit__(*exc)

    def __call__(self, p: SearchProgress) -> None:
        for line in p.events[self._printed:]:
            self.con.print(line)
        self._printed = len(p.events)
        status = "; ".join(x for x in (progress_line(p).removeprefix("trials: "), budget_left(p)) if x)
        if self.bar is None:
            self.con.print(progress_line(p))
            return
        if self._task is None:
            self._task = self.bar.add_task("trials", total=p.planned or None, status=status)
        self.bar.update(self._task, completed=p.finished, status=status)


def _ratio(measured: float | None, predicted: float | None, backend: str | None) -> str:
    if backend == "cpu":  # a CPU run of the config against a GPU prediction: the ratio means nothing
        return "cpu"
    return f"{measured / predicted:.3f}" if measured and predicted else "-"


def results_table(recs: list[TrialRecord]) -> Table:
    """Every trial of the study, measured fastest first, then the rest by status."""
    def rank(r: TrialRecord):
        return (0, -r.measured["tokens_per_s_per_gpu"]) if r.measured else (1, r.number)

    t = Table(title="trials, measured fastest first")
    for col in ("#", "trial", "config", "status", "tokens/s/GPU", "predicted", "meas/pred", "peak GiB", "pred GiB",
                "note"):
        t.add_column(col, justify="left" if col in ("config", "status", "note") else "right")
    for n, r in enumerate(sorted(recs, key=rank), 1):
        m, p = r.measured or {}, r.predicted or {}
        meas, pred = m.get("tokens_per_s_per_gpu"), p.get("tokens_per_s_per_gpu")
        t.add_row(str(n), str(r.number), r.config_key, r.status, f"{meas:,.1f}" if meas else "-",
                  f"{pred:,.0f}" if pred else "-", _ratio(meas, pred, m.get("backend")),
                  f"{m['peak_memory_gib']:.2f}" if m.get("peak_memory_gib") else "-",
                  f"{p['peak_memory_gib']:.1f}" if p.get("peak_memory_gib") else "-",
                  (r.reason or "")[:60])
    return t


def run_search(req, con: Console, as_json: bool = False) -> dict[str, Any]:
    """The whole `autotune search` flow with its output; returns the --json summary."""
    from autotune.search import analytic_phase, local_gpu_count, resolve_backend, run_trials, write_best
    from autotune.study import records

    phase = analytic_phase(req)
    gpus = None if req.address else (local_gpu_count() if req.backend in ("auto", "gpu") else 0)
    phase.backend, phase.note = resolve_backend(req, gpus)
    if req.num_trials == 0 and phase.backend != "analytic":
        phase.backend, phase.note = "analytic", "--trials 0: ranked analytically"
    if not as_json:
        print_analytic(con, phase)
    if phase.backend == "analytic":
        recs = records(phase.study)
    else:
        if as_json:
            recs = run_trials(phase)
        else:
            with LiveProgress(con) as live:
                recs = run_trials(phase, on_event=live)
            con.print(results_table(recs))
            if phase.backend == "cpu":
                con.print(f"--backend cpu: measured columns are real Megatron Core runs on CPU (fp32, gloo); "
                          f"predicted columns are for {req.cluster.gpu.name}, so only the ranking is comparable")
    doc = write_best(phase, recs)
    best_path = phase.folder / "best.yaml"
    if not as_json:
        if phase.note:
            con.print(phase.note)
        con.print(f"best config ({doc['source']}): {best_path}")
        con.print("megatron args: " + " ".join(doc["megatron_args"]))
    return {"study": phase.name, "folder": str(phase.folder), "backend": phase.backend, "note": phase.note,
            "num_candidates": phase.result.num_candidates, "num_feasible": phase.result.num_feasible,
            "pruned_by_rule": dict(phase.result.pruned_by_rule),
            "top_predicted": [{**phase.result.job(i).to_megatron_dict(), "predicted": phase.ranked.predicted(i)}
                              for i in phase.top(10)],
            "trials": [r.to_dict() for r in recs], "best_file": str(best_path), "best": doc}
