"""Everything `autotune explain` reports about one config: rule verdicts, predicted speed and memory,
and (when only memory fails) the single changes that would make it fit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from autotune import constraints
from autotune.cluster import ClusterSpec
from autotune.config import JobConfig
from autotune.cost import predict as predict_cost
from autotune.memory import MemoryEstimate, estimate_memory
from autotune.memory_fixes import MemoryFix, memory_fixes
from autotune.model_spec import ModelSpec


def predicted_fields(model: ModelSpec, cluster: ClusterSpec, job: JobConfig) -> dict[str, Any]:
    """The `predicted` object for one config (same fields as in `autotune space --json`, plus the breakdown and
    the per-stage micro-batch times)."""
    cost = predict_cost(model, cluster, job)
    mem = estimate_memory(model, cluster, job)
    return {"tokens_per_s_per_gpu": round(cost.tokens_per_s_per_gpu, 1), "step_time_s": round(cost.step_time_s, 4),
            "mfu": round(cost.mfu, 4), "peak_memory_gib": round(mem.peak_memory_gib, 2),
            "fits_memory": mem.peak_memory_gib <= cluster.gpu.usable_memory_gib,
            "breakdown_s": {k: round(v, 4) for k, v in cost.breakdown_s.items()},
            "stage_microbatch_s": {k: round(v, 5) for k, v in cost.stage_microbatch_s.items()},
            "stage_layers": cost.stage_layers}


@dataclass(frozen=True)
class Explanation:
    job: JobConfig
    results: list[constraints.RuleResult]
    predicted: dict[str, Any] | None  # only for feasible configs
    memory: MemoryEstimate | None  # None when a non-memory rule fails (the estimate would be meaningless)
    fixes: list[MemoryFix] = field(default_factory=list)

    @property
    def feasible(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failed(self) -> list[str]:
        return [r.rule.name for r in self.results if not r.passed]

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "config": self.job.to_megatron_dict(), "feasible": self.feasible, "predicted": self.predicted,
            "rules": [{"name": r.rule.name, "passed": r.passed, "message": r.message,
                       "explanation": r.rule.explanation, "fix": r.rule.fix, "source": r.rule.source}
                      for r in self.results],
            "memory": self.memory.to_dict() if self.memory is not None else None,
            "memory_fixes": [{"change": f.change, "peak_memory_gib": f.peak_memory_gib} for f in self.fixes],
        }


def explain_config(model: ModelSpec, cluster: ClusterSpec, job: JobConfig,
                   allow_cross_node_tp: bool = False) -> Explanation:
    results = constraints.check_all(model, cluster, job, allow_cross_node_tp=allow_cross_node_tp)
    failed = {r.rule.name for r in results if not r.passed}
    memory = estimate_memory(model, cluster, job) if not failed - {"memory"} else None
    fixes = memory_fixes(model, cluster, job, allow_cross_node_tp=allow_cross_node_tp) if failed == {"memory"} else []
    predicted = predicted_fields(model, cluster, job) if not failed else None
    return Explanation(job=job, results=results, predicted=predicted, memory=memory, fixes=fixes)
