"""`autotune search`: analytic ranking first, then real trials chosen by the prior sampler and run on Ray.

    analytic_phase  enumerate + prune + rank (pure, laptop-fast), name and open the study
    run_trials      ask -> vet -> schedule on Ray -> tell, until --trials or --time-budget is spent
    write_best      best.yaml: the best measured config, or the best predicted one when none was measured

Backend `auto` runs real trials only when the GPUs are there (a local `nvidia-smi`, or a Ray cluster
given by --address, with at least --gpus GPUs); otherwise the search ends with the analytic ranking.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from autotune import constraints
from autotune.cluster import ClusterSpec
from autotune.config import JobConfig, Workload
from autotune.cost_ranking import RankedSpace, rank_space
from autotune.errors import ConfigError
from autotune.export import BEST_FILE, best_document, write_yaml_atomic
from autotune.interrupts import held_sigint
from autotune.model_spec import ModelSpec
from autotune.search_sampler import Observation, PriorSampler
from autotune.space import SearchSpace, SpaceResult, enumerate_space, validate_space_for
from autotune.study import (ATTR_CONFIG, ATTR_KEY, ATTR_MEASURED, ATTR_PREDICTED, ATTR_REASON, ATTR_STATUS,
                            TRIALS_FILE, TrialRecord, append_jsonl, check_study_name, close_interrupted,
                            open_study, records, study_dir, study_name)

BACKENDS = ("auto", "gpu", "cpu", "analytic")


@dataclass(frozen=True, kw_only=True)
class SearchRequest:
    """Everything `autotune search` was asked for."""

    model: ModelSpec
    cluster: ClusterSpec
    workload: Workload
    space: SearchSpace
    backend: str = "auto"
    num_trials: int = 20  # real trials to run in this session
    time_budget_s: float | None = None  # no new trial starts after this
    trial_time_limit_s: float = 900.0  # per trial; the trial runner kills the run after it
    address: str | None = None  # Ray cluster; None: embedded local Ray
    storage: str | None = None  # Optuna storage URL; None: a journal file in the study folder
    study_name: str | None = None
    out_root: Path = Path("results")
    resume: bool = False
    allow_cross_node_tp: bool = False
    warmup_iters: int = 2
    measured_iters: int = 3

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got '{self.backend}'")
        if self.num_trials < 0:
            raise ConfigError(f"--trials must be >= 0, got {self.num_trials}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ConfigError(f"--time-budget must be positive, got {self.time_budget_s}s")
        if self.trial_time_limit_s <= 0:
            raise ConfigError(f"--trial-timeout must be positive, got {self.trial_time_limit_s}")


def parse_duration(text: str) -> float:
    """'90s', '30m', '2h', '1h30m' or plain seconds -> seconds."""
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", t)
    if not parts or "".join(a + b for a, b in parts) != t:
        raise ConfigError(f"--time-budget takes a duration like 90s, 30m, 2h or 1h30m, got '{text}'")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


@dataclass
class AnalyticPhase:
    """The judged and ranked space, and the study it belongs to."""

    request: SearchRequest
    result: SpaceResult
    ranked: RankedSpace
    name: str
    folder: Path
    study: Any
    backend: str = "analytic"  # resolved
    note: str = ""  # why the backend resolved as it did

    def top(self, k: int) -> list[int]:
        return [int(i) for i in self.ranked.order[:k]]


def local_gpu_count() -> int:
    """GPUs `nvidia-smi -L` lists (0 without the tool); no torch import."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return 0
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def resolve_backend(req: SearchRequest, gpus_available: int | None) -> tuple[str, str]:
    """(backend, note). `gpus_available` None means: unknown until Ray is asked (--address)."""
    n = req.cluster.num_gpus
    if req.backend in ("analytic", "cpu"):
        return req.backend, ""
    if gpus_available is None:
        return "gpu", ""
    if gpus_available >= n:
        return "gpu", ""
    if req.backend == "gpu":
        raise ConfigError(f"--backend gpu needs {n} GPUs for a {n}-GPU trial, found {gpus_available}; "
                          f"pass --address of a Ray cluster with {n} GPUs, or --backend analytic")
    return "analytic", (f"real trials need {n} GPUs and {gpus_available} were found; ranked analytically. "
                        f"To measure: --address HOST:PORT of a Ray cluster with {n} GPUs (--backend gpu), "
                        f"or --backend cpu for CPU-sized models")


def host_memory_gib() -> float:
    """Physical memory of this machine."""
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def check_cpu_trials_fit(phase: "AnalyticPhase", host_gib: float) -> None:
    """--backend cpu on this machine: refuse at once when even the leanest feasible config cannot fit in
    RAM, instead of letting every trial run out of memory. The GPU peak estimate stands in for a CPU
    rank's (fp32 weights + grads + Adam is 16 bytes/param against the GPU's 18, activations in fp32
    against bf16): an approximation, good enough to tell a CPU-sized model from a real one."""
    n = phase.request.cluster.num_gpus
    leanest = float(np.min(phase.ranked.peak_memory_gib)) if phase.result.num_feasible else 0.0
    if leanest * n > host_gib:
        raise ConfigError(
            f"--backend cpu: the leanest feasible config of {phase.request.model.name} needs about {leanest:.0f} GiB "
            f"per rank, {leanest * n:.0f} GiB for {n} ranks, and this machine has {host_gib:.0f} GiB; CPU trials "
            f"are for CPU-sized models (tiny-dense, tiny-moe), or pass --address of a Ray cluster with GPUs")


def analytic_phase(req: SearchRequest) -> AnalyticPhase:
    validate_space_for(req.space, req.model)
    resolved = "cpu" if req.backend == "cpu" else "gpu"
    name = check_study_name(req.study_name) if req.study_name else study_name(
        req.model, req.cluster, req.workload, req.space, req.allow_cross_node_tp, resolved)
    folder = study_dir(req.out_root, name)
    study = open_study(name, folder, req.storage)
    result = enumerate_space(req.space, req.model, req.cluster, req.workload, req.allow_cross_node_tp)
    ranked = rank_space(result)
    study.set_user_attr("model", req.model.name)
    study.set_user_attr("num_candidates", int(result.num_candidates))
    study.set_user_attr("num_feasible", int(result.num_feasible))
    return AnalyticPhase(request=req, result=result, ranked=ranked, name=name, folder=folder, study=study)


@dataclass
class Progress:
    """Counts for the live display."""

    done: int = 0
    running: int = 0
    pruned: int = 0
    failed: int = 0
    best: TrialRecord | None = None
    events: list[str] = field(default_factory=list)
    planned: int = 0  # trials this session may start (--trials)
    deadline: float | None = None  # clock() after which no trial starts (--time-budget)

    @property
    def finished(self) -> int:
        return self.done + self.pruned + self.failed


def clock() -> float:
    """The search's clock (monotonic: a wall-clock jump must not end or extend --time-budget)."""
    return time.monotonic()


def _mesh_of(d: dict[str, Any]) -> tuple[int, int, int, int, int]:
    return tuple(int(d.get(k, 1)) for k in ("tensor_model_parallel_size", "pipeline_model_parallel_size",
                                            "context_parallel_size", "expert_model_parallel_size",
                                            "expert_tensor_parallel_size"))  # type: ignore[return-value]


def _observation(rec: TrialRecord) -> Observation:
    m = rec.measured or {}
    return Observation(mesh=_mesh_of(rec.config), status=rec.status,
                       predicted_tokens_per_s_per_gpu=float(rec.predicted.get("tokens_per_s_per_gpu", 0) or 0),
                       predicted_peak_memory_gib=float(rec.predicted.get("peak_memory_gib", 0) or 0),
                       measured_tokens_per_s_per_gpu=m.get("tokens_per_s_per_gpu"),
                       measured_peak_memory_gib=m.get("peak_memory_gib"))


def make_sampler(phase: AnalyticPhase, past: list[TrialRecord], seed: int = 0) -> PriorSampler:
    k = phase.result.knobs
    mesh = np.stack([k.tp, k.pp, k.cp, k.ep, k.etp], axis=1)
    others = np.stack([k.vpp, k.mbs, k.sp, k.dist_opt, k.recompute, k.split], axis=1)
    sampler = PriorSampler(predicted_tokens=phase.ranked.tokens_per_s_per_gpu,
                           predicted_peak_gib=phase.ranked.peak_memory_gib, mesh=mesh, knobs=others,
                           capacity_gib=phase.request.cluster.gpu.usable_memory_gib,
                           key_of=lambda i: phase.result.parallel_config(i).canonical_key(),
                           # CPU peak RSS says nothing about GPU memory: only GPU runs correct the memory model.
                           use_memory_measurements=phase.backend == "gpu", seed=seed)
    for rec in past:  # an earlier session's trial: its candidate index is not kept, so it teaches by its mesh
        sampler.mark_tried(rec.config_key)
        sampler.observe(_observation(rec))
    return sampler


def _measured(result: Any, number: int) -> dict[str, Any] | None:
    if result.status != "completed":
        return None
    return {"tokens_per_s_per_gpu": round(result.tokens_per_s_per_gpu, 2), "step_time_s": round(result.step_time_s, 5),
            "peak_memory_gib": round(result.peak_memory_gib, 3) if result.peak_memory_gib is not None else None,
            "trial": number, "backend": result.backend}


def run_trials(phase: AnalyticPhase, on_event: Callable[[Progress], None] = lambda p: None,
               scheduler: Any = None, adjust_spec: Callable[[int, Any], Any] | None = None) -> list[TrialRecord]:
    """Real trials until --trials or --time-budget is spent. Returns every record of the study.

    `adjust_spec` is TEST ONLY: (trial number, TrialSpec) -> TrialSpec, applied just before a trial is
    scheduled, so tests can inject the trial runner's faults (crash, hang, memory cap) into a real search.
    The CLI never passes it.
    """
    import optuna
    from trial_runner.spec import TrialSpec

    from autotune.scheduler import RayScheduler

    req, study = phase.request, phase.study
    if phase.backend == "cpu" and req.address is None and scheduler is None:
        check_cpu_trials_fit(phase, host_memory_gib())
    close_interrupted(study)
    past = records(study)
    if past and not req.resume:
        raise ConfigError(f"study '{phase.name}' already has {len(past)} trials in {phase.folder}; pass --resume "
                          f"to continue it, or --study-name to start another")
    sampler = make_sampler(phase, past, seed=len(past))
    prog = Progress()
    sched = scheduler or RayScheduler(backend=phase.backend, address=req.address, num_ranks=req.cluster.num_gpus)
    jsonl = phase.folder / TRIALS_FILE
    running: list = []  # (TrialRecord, scheduler handle)
    asked: dict[int, Any] = {}  # optuna Trial objects of this session, by number
    candidate: dict[int, int] = {}  # candidate index of this session's trials, by number

    def finish(trial_number: int, rec: TrialRecord, state) -> None:
        for key, val in ((ATTR_STATUS, rec.status), (ATTR_MEASURED, rec.measured), (ATTR_REASON, rec.reason)):
            asked[trial_number].set_user_attr(key, val)
        if state is optuna.trial.TrialState.COMPLETE:
            study.tell(trial_number, rec.measured["tokens_per_s_per_gpu"])
        else:
            study.tell(trial_number, state=state)
        append_jsonl(jsonl, rec.to_dict())
        before = sampler.memory_ratio()
        sampler.observe(_observation(rec), index=candidate.get(trial_number))
        if sampler.memory_ratio() > before:
            prog.events.append(f"memory model corrected x{sampler.memory_ratio():.2f} from trial {trial_number}: "
                               f"{int((~sampler.allowed() & ~sampler.excluded).sum()):,} configs no longer fit")

    try:
        slots = max(1, sched.total_gpus() // req.cluster.num_gpus)
        if sched.total_gpus() < req.cluster.num_gpus:
            raise ConfigError(f"the Ray cluster has {sched.total_gpus()} GPUs, a trial needs {req.cluster.num_gpus}")
        auth = " (token auth on: `ray get-auth-token` prints the token)" if getattr(sched, "token_auth", False) else ""
        prog.events.append(f"Ray dashboard: {sched.dashboard_url}{auth}" if sched.dashboard_url else "Ray: connected")
        on_event(prog)
        deadline = clock() + req.time_budget_s if req.time_budget_s else None
        prog.planned, prog.deadline = req.num_trials, deadline
        started, exhausted, budget_spent = 0, False, False

        while True:
            if deadline is not None and not budget_spent and clock() >= deadline:
                budget_spent = True
                if started < req.num_trials and not exhausted:
                    prog.events.append(f"--time-budget spent after {started} trials: no new trial starts"
                                       + (f", waiting for {len(running)} running" if running else ""))
                    on_event(prog)
            can_start = (not exhausted and not budget_spent and started < req.num_trials and len(running) < slots)
            if can_start:
                i = sampler.next_index()
                if i is None:
                    exhausted = True
                    prog.events.append("every feasible candidate is tried or ruled out")
                    continue
                job = phase.result.job(i)
                # Unrounded: the sampler's memory correction compares these against the exact arrays.
                predicted = {**phase.ranked.predicted(i), "peak_memory_gib": float(phase.ranked.peak_memory_gib[i]),
                             "tokens_per_s_per_gpu": float(phase.ranked.tokens_per_s_per_gpu[i])}
                with held_sigint():  # asked, it is in `running` before Ctrl-C can land
                    trial = study.ask()
                    asked[trial.number] = trial
                    candidate[trial.number] = i
                    for key, val in ((ATTR_KEY, job.parallel.canonical_key()), (ATTR_CONFIG, job.to_megatron_dict()),
                                     (ATTR_PREDICTED, predicted)):
                        trial.set_user_attr(key, val)
                    rec = TrialRecord(number=trial.number, config_key=job.parallel.canonical_key(),
                                      config=job.to_megatron_dict(), status="running", predicted=predicted)
                    broken = constraints.violations(phase.request.model, req.cluster, job, req.allow_cross_node_tp)
                    if broken:  # never reaches a GPU
                        reason = "; ".join(f"{v.rule}: {v.message}" for v in broken)
                        finish(trial.number, replace(rec, status="pruned", reason=reason),
                               optuna.trial.TrialState.PRUNED)
                        prog.pruned += 1
                        on_event(prog)
                        continue
                    spec = TrialSpec(model=phase.request.model, job=job, backend=phase.backend,
                                     time_limit_s=req.trial_time_limit_s, warmup_iters=req.warmup_iters,
                                     measured_iters=req.measured_iters)
                    if adjust_spec is not None:  # test-only fault injection
                        spec = adjust_spec(trial.number, spec)
                    label = job.parallel.short_name()
                    running.append((rec, sched.submit(trial.number, spec, label, req.cluster.gpus_per_node,
                                                      phase.folder / "trials" / f"{trial.number:04d}")))
                started += 1
                prog.running = len(running)
                prog.events.append(f"trial {trial.number} started: {label}")
                on_event(prog)
                continue
            if not running:
                break
            finished = sched.wait_any([h for _, h in running])
            with held_sigint():  # a finished trial leaves `running` only once the study and trials.jsonl have it
                for handle, result in finished:
                    rec = next(r for r, h in running if h is handle)
                    measured = _measured(result, rec.number)
                    done = replace(rec, status=result.status, measured=measured,
                                   reason=None if measured else (result.error or result.status))
                    finish(rec.number, done,
                           optuna.trial.TrialState.COMPLETE if measured else optuna.trial.TrialState.FAIL)
                    running = [(r, h) for r, h in running if h is not handle]
                    if measured:
                        prog.done += 1
                        best = prog.best.measured["tokens_per_s_per_gpu"] if prog.best else None
                        if best is None or measured["tokens_per_s_per_gpu"] > best:
                            prog.best = done
                    else:
                        prog.failed += 1
                    prog.running = len(running)
                    prog.events.append(f"trial {rec.number} {result.status}" + (
                        f": {measured['tokens_per_s_per_gpu']:,.1f} tokens/s/GPU" if measured else ""))
                    on_event(prog)
    finally:
        # Ctrl-C or an error: what is in flight is recorded as interrupted, then stopped. A further
        # Ctrl-C waits until that is done, so it can neither lose a record nor orphan a trial's ranks.
        with held_sigint():
            for rec, _ in running:
                finish(rec.number, replace(rec, status="interrupted", reason="search stopped"),
                       optuna.trial.TrialState.FAIL)
            for _, handle in running:
                sched.cancel(handle)
            if scheduler is None:
                sched.shutdown()
    return records(study)


def write_best(phase: AnalyticPhase, recs: list[TrialRecord]) -> dict[str, Any]:
    """best.yaml in the study folder: the fastest measured config, else the fastest predicted one."""
    req = phase.request
    measured = [r for r in recs if r.measured and r.status == "completed"]
    if measured:
        best = max(measured, key=lambda r: r.measured["tokens_per_s_per_gpu"])
        job = JobConfig.from_yaml_dict(_yaml_shape(best.config, req.workload), num_gpus=req.cluster.num_gpus)
        source, predicted, meas = "measured", best.predicted, best.measured
    elif phase.result.num_feasible:
        i = phase.top(1)[0]
        job, source, predicted, meas = phase.result.job(i), "predicted", phase.ranked.predicted(i), None
    else:
        raise ConfigError(f"no feasible config for {req.model.name} on {req.cluster.num_gpus} GPUs; "
                          f"see the pruning table (`autotune space`) for the rule that rejects them")
    doc = best_document(model_name=req.model.name, cluster=req.cluster, job=job, source=source,
                        predicted=predicted, measured=meas,
                        study={"name": phase.name, "storage": req.storage or str(phase.folder / "study.journal"),
                               "backend": phase.backend}, mtp_num_layers=req.model.mtp_num_layers)
    write_yaml_atomic(phase.folder / BEST_FILE, doc)
    return doc


def _yaml_shape(config: dict[str, Any], workload: Workload) -> dict[str, Any]:
    """A to_megatron_dict() back into the parallelism/training shape."""
    training_keys = ("micro_batch_size", "use_distributed_optimizer", "sequence_parallel", "recompute_granularity")
    derived = ("data_parallel_size", "expert_data_parallel_size", "num_microbatches")
    par = {k: v for k, v in config.items() if k not in training_keys and k not in derived}
    tr = {k: config[k] for k in training_keys if k in config}
    tr.update(global_batch_size=workload.global_batch_size, seq_length=workload.seq_length,
              precision=workload.precision)
    return {"parallelism": par, "training": tr}
