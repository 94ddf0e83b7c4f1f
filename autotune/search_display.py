"""What `autotune search` shows: the analytic summary, a live progress line, the final ranked table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from autotune import render
from autotune.search import AnalyticPhase, Progress
from autotune.study import TrialRecord


def print_analytic(con: Console, phase: AnalyticPhase, top: int = 10) -> None:
    req = phase.request
    con.print(render.assumptions_line(req.model, req.cluster, req.workload, req.space.name))
    con.print(f"study: {phase.name}  ({phase.folder})")
    con.print(render.pruning_table(phase.result))
    order = phase.top(top)
    con.print(render.configs_table([phase.result.job(i) for i in order],
                                   f"predicted fastest (top {len(order)} of {phase.result.num_feasible:,} feasible)"))
    t = Table(title="predicted (autotune/cost.py, autotune/memory.py)")
    for col in ("#", "tokens/s/GPU", "step s", "MFU", "peak GiB"):
        t.add_column(col, justify="right")
    for n, i in enumerate(order, 1):
        p = phase.ranked.predicted(i)
        t.add_row(str(n), f"{p['tokens_per_s_per_gpu']:,.0f}", f"{p['step_time_s']:.3f}", f"{p['mfu']:.1%}",
                  f"{p['peak_memory_gib']:.1f}")
    con.print(t)


def progress_line(p: Progress) -> str:
    best = (f"best {p.best.measured['tokens_per_s_per_gpu']:,.1f} tokens/s/GPU (trial {p.best.number})"
            if p.best is not None else "best -")
    return f"trials: {p.done} done, {p.running} running, {p.pruned} pruned, {p.failed} failed; {best}"


class LiveProgress:
    """A one-line live status under the event log (plain lines when not a terminal)."""

    def __init__(self, con: Console):
        self.con = con
        self.live = Live(console=con, refresh_per_second=4, transient=True) if con.is_terminal else None
        self._printed = 0

    def __enter__(self) -> "LiveProgress":
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live:
            self.live.__exit__(*exc)

    def __call__(self, p: Progress) -> None:
        for line in p.events[self._printed:]:
            self.con.print(line)
        self._printed = len(p.events)
        if self.live:
            self.live.update(progress_line(p))
        else:
            self.con.print(progress_line(p))


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
                  f"{pred:,.0f}" if pred else "-", f"{meas / pred:.3f}" if meas and pred else "-",
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
