"""Changes that would make a config fit in GPU memory, for `autotune explain`.

Tried one at a time from the given config, cheapest first: distributed optimizer, recompute
(selective, then full), more TP, more PP, more EP, a smaller micro-batch. A change is listed when the
changed config passes every rule, the memory rule included (the GPU count stays fixed).
"""

from __future__ import annotations

from dataclasses import dataclass

from autotune import constraints
from autotune.cluster import ClusterSpec
from autotune.config import JobConfig
from autotune.memory import estimate_memory
from autotune.model_spec import ModelSpec


@dataclass(frozen=True, kw_only=True)
class MemoryFix:
    change: str  # e.g. "--tp 8"
    peak_memory_gib: float


def _candidates(job: JobConfig) -> list[tuple[str, dict]]:
    p = job.parallel
    out: list[tuple[str, dict]] = []
    if not p.use_distributed_optimizer:
        out.append(("use the distributed optimizer", {"use_distributed_optimizer": True}))
    if p.recompute_granularity is None:
        out.append(("--recompute selective", {"recompute_granularity": "selective"}))
    if p.recompute_granularity != "full":
        out.append(("--recompute full", {"recompute_granularity": "full"}))
    for flag, field, value in (("--tp", "tensor_model_parallel_size", p.tp),
                               ("--pp", "pipeline_model_parallel_size", p.pp),
                               ("--ep", "expert_model_parallel_size", p.ep)):
        v = value * 2
        while v <= job.num_gpus:
            extra = {"sequence_parallel": True} if field == "tensor_model_parallel_size" else {}
            out.append((f"{flag} {v}", {field: v, **extra}))
            v *= 2
    mbs = p.micro_batch_size // 2
    while mbs >= 1:
        out.append((f"--mbs {mbs}", {"micro_batch_size": mbs}))
        mbs //= 2
    return out


def memory_fixes(model: ModelSpec, cluster: ClusterSpec, job: JobConfig, allow_cross_node_tp: bool = False,
                 memory_headroom: float = constraints.DEFAULT_MEMORY_HEADROOM) -> list[MemoryFix]:
    """Single changes, in the order above, after which the config is feasible; the first per knob only."""
    fixes, done = [], set()
    for change, update in _candidates(job):
        flag = change.split(" ")[0]
        if flag in done:
            continue
        candidate = job.model_copy(update={"parallel": job.parallel.model_copy(update=update)})
        ctx_results = constraints.check_all(model, cluster, candidate, allow_cross_node_tp=allow_cross_node_tp,
                                            memory_headroom=memory_headroom)
        if all(r.passed for r in ctx_results):
            fixes.append(MemoryFix(change=change,
                                   peak_memory_gib=estimate_memory(model, cluster, candidate).peak_memory_gib))
            done.add(flag)
    return fixes
