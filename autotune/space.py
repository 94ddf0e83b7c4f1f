"""Search spaces: which knob values to try, and the enumeration of every combination.

A space is data (YAML in search_spaces/). Each knob lists values or a generator resolved against the
model and GPU count. `enumerate_space` builds the full Cartesian product as numpy arrays, judges it
with the constraint engine in one vectorised pass, and keeps the feasible configs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autotune import constraints as C
from autotune.cluster import ClusterSpec
from autotune.config import JobConfig, ParallelConfig, Workload
from autotune.errors import ConfigError, SpecFileError
from autotune.memory import MemoryOptions
from autotune.model_spec import ModelSpec
from autotune.pipeline import balanced_uneven_split

_STRICT = ConfigDict(frozen=True, extra="forbid")


class PowersOfTwo(BaseModel):
    model_config = _STRICT
    min: int = Field(default=1, ge=1)
    max: int = Field(ge=1)


class Divisors(BaseModel):
    model_config = _STRICT
    of: Literal["num_gpus", "num_layers", "num_experts", "num_attention_heads", "num_query_groups"]
    max: int | None = Field(default=None, ge=1)


class Knob(BaseModel):
    """Exactly one of: explicit values, powers of two, or divisors of a model/cluster quantity."""

    model_config = _STRICT
    values: list[Any] | None = None
    powers_of_two: PowersOfTwo | None = None
    divisors: Divisors | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "Knob":
        given = [k for k in ("values", "powers_of_two", "divisors") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of values, powers_of_two, divisors (got {given or 'none'})")
        if self.values is not None and not self.values:
            raise ValueError("values must not be empty")
        return self


INT_KNOBS = (
    "tensor_model_parallel_size", "pipeline_model_parallel_size", "virtual_pipeline_model_parallel_size",
    "context_parallel_size", "expert_model_parallel_size", "expert_tensor_parallel_size", "micro_batch_size",
)
BOOL_KNOBS = ("sequence_parallel", "use_distributed_optimizer")
ALL_KNOBS = INT_KNOBS + BOOL_KNOBS + ("recompute_granularity", "pipeline_split")
SPLIT_VALUES = ("even", "account_embedding_loss", "uneven")


class SearchSpace(BaseModel):
    """Which values each knob may take. Knobs left out are fixed at Megatron's default."""

    model_config = _STRICT
    name: str
    description: str = ""
    knobs: dict[str, Knob]

    @field_validator("knobs")
    @classmethod
    def _known_knobs_and_values(cls, knobs: dict[str, Knob]) -> dict[str, Knob]:
        for key, knob in knobs.items():
            if key not in ALL_KNOBS:
                raise ValueError(f"unknown knob '{key}'; known knobs: {', '.join(ALL_KNOBS)}")
            if knob.values is None:
                if key not in INT_KNOBS:
                    raise ValueError(f"knob '{key}' takes explicit values only")
                continue
            for v in knob.values:
                _check_value(key, v)
        return knobs


def _check_value(key: str, v: Any) -> None:
    if key in INT_KNOBS:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"knob '{key}' needs positive integers, got {v!r}")
    elif key in BOOL_KNOBS:
        if not isinstance(v, bool):
            raise ValueError(f"knob '{key}' needs true/false, got {v!r}")
    elif key == "recompute_granularity":
        if v not in (None, "selective", "full"):
            raise ValueError(f"knob 'recompute_granularity' takes null, selective or full, got {v!r}")
    elif key == "pipeline_split" and v not in SPLIT_VALUES:
        raise ValueError(f"knob 'pipeline_split' takes {', '.join(SPLIT_VALUES)}, got {v!r}")


def parse_space(data: Any, origin: str = "space") -> SearchSpace:
    """Validate a space dict; errors name the offending key."""
    if not isinstance(data, dict):
        raise SpecFileError(f"{origin}: a space must be a mapping with 'name' and 'knobs'")
    try:
        return SearchSpace.model_validate(data)
    except ValidationError as exc:
        # A misspelt key also makes its intended key "missing"; report the misspelling.
        err = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
        where = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise SpecFileError(f"{origin}: {where + ': ' if where else ''}{msg}") from None


def resolve_values(key: str, knob: Knob, model: ModelSpec, cluster: ClusterSpec) -> list[Any]:
    if knob.values is not None:
        return list(dict.fromkeys(knob.values))
    if knob.powers_of_two is not None:
        lo, hi = knob.powers_of_two.min, knob.powers_of_two.max
        out, v = [], 1
        while v <= hi:
            if v >= lo:
                out.append(v)
            v *= 2
        return out
    d = knob.divisors
    assert d is not None
    target = {
        "num_gpus": cluster.num_gpus,
        "num_layers": model.num_layers,
        "num_experts": model.moe.num_experts if model.moe else 1,
        "num_attention_heads": model.num_attention_heads,
        "num_query_groups": model.num_query_groups,
    }[d.of]
    return [v for v in range(1, target + 1) if target % v == 0 and (d.max is None or v <= d.max)]


_SPLIT_CODES = {"even": C.SPLIT_EVEN, "account_embedding_loss": C.SPLIT_ACCOUNT, "uneven": C.SPLIT_UNEVEN}

_DEFAULTS = {
    "tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1, "virtual_pipeline_model_parallel_size": 1,
    "context_parallel_size": 1, "expert_model_parallel_size": 1, "expert_tensor_parallel_size": 1,
    "micro_batch_size": 1, "sequence_parallel": False, "use_distributed_optimizer": True,
    "recompute_granularity": None, "pipeline_split": "even",
}


@dataclass
class SpaceResult:
    """A judged space: counts, the pruning tally, and the feasible candidates as arrays."""

    model: ModelSpec
    cluster: ClusterSpec
    workload: Workload
    num_candidates: int
    pruned_by_rule: dict[str, int]
    knobs: C.Knobs  # feasible candidates only

    @property
    def num_feasible(self) -> int:
        return len(self.knobs.tp)

    def parallel_config(self, i: int) -> ParallelConfig:
        k = self.knobs
        split = int(k.split[i])
        return ParallelConfig(
            tensor_model_parallel_size=int(k.tp[i]), pipeline_model_parallel_size=int(k.pp[i]),
            virtual_pipeline_model_parallel_size=int(k.vpp[i]) if k.vpp[i] > 1 else None,
            context_parallel_size=int(k.cp[i]), expert_model_parallel_size=int(k.ep[i]),
            expert_tensor_parallel_size=int(k.etp[i]), micro_batch_size=int(k.mbs[i]),
            sequence_parallel=bool(k.sp[i]), use_distributed_optimizer=bool(k.dist_opt[i]),
            recompute_granularity={0: None, 1: "selective", 2: "full"}[int(k.recompute[i])],
            account_for_embedding_in_pipeline_split=split == C.SPLIT_ACCOUNT,
            account_for_loss_in_pipeline_split=split == C.SPLIT_ACCOUNT,
            num_layers_in_first_pipeline_stage=int(k.first[i]) if split == C.SPLIT_UNEVEN else None,
            num_layers_in_last_pipeline_stage=int(k.last[i]) if split == C.SPLIT_UNEVEN else None,
        )

    def job(self, i: int) -> JobConfig:
        return JobConfig(num_gpus=self.cluster.num_gpus, parallel=self.parallel_config(i), workload=self.workload)

    def jobs(self, limit: int | None = None) -> list[JobConfig]:
        n = self.num_feasible if limit is None else min(limit, self.num_feasible)
        return [self.job(i) for i in range(n)]

    def megatron_dicts(self, order: np.ndarray | None = None) -> list[dict[str, Any]]:
        """Feasible configs as Megatron-named dicts (same keys as JobConfig.to_megatron_dict).

        Built column-wise from the arrays: the full list can hold hundreds of thousands of configs,
        too many to route through one pydantic object each.
        """
        k = self.knobs
        idx = np.arange(self.num_feasible) if order is None else order
        n = self.cluster.num_gpus
        gbs = self.workload.global_batch_size
        tp, pp, vpp, cp, ep, etp, mbs = (getattr(k, a)[idx].tolist() for a in ("tp", "pp", "vpp", "cp", "ep", "etp", "mbs"))
        sp, do, rc, split = (getattr(k, a)[idx].tolist() for a in ("sp", "dist_opt", "recompute", "split"))
        first, last = k.first[idx].tolist(), k.last[idx].tolist()
        rc_name = {0: None, 1: "selective", 2: "full"}
        out = []
        for i in range(len(idx)):
            dp = n // (tp[i] * pp[i] * cp[i])
            d = {
                "tensor_model_parallel_size": tp[i], "pipeline_model_parallel_size": pp[i],
                "virtual_pipeline_model_parallel_size": vpp[i] if vpp[i] > 1 else None,
                "context_parallel_size": cp[i], "expert_model_parallel_size": ep[i],
                "expert_tensor_parallel_size": etp[i], "micro_batch_size": mbs[i],
                "use_distributed_optimizer": bool(do[i]), "sequence_parallel": bool(sp[i]),
                "recompute_granularity": rc_name[rc[i]],
            }
            if split[i] == C.SPLIT_ACCOUNT:
                d["account_for_embedding_in_pipeline_split"] = True
                d["account_for_loss_in_pipeline_split"] = True
            elif split[i] == C.SPLIT_UNEVEN:
                d["num_layers_in_first_pipeline_stage"] = first[i]
                d["num_layers_in_last_pipeline_stage"] = last[i]
            d["data_parallel_size"] = dp
            d["expert_data_parallel_size"] = n // (pp[i] * ep[i] * etp[i])
            d["num_microbatches"] = gbs // (mbs[i] * dp)
            out.append(d)
        return out

    def to_json_dict(self) -> dict[str, Any]:
        """The `autotune space --json` contract."""
        return {
            "num_candidates": self.num_candidates,
            "num_feasible": self.num_feasible,
            "pruned_by_rule": dict(self.pruned_by_rule),
            "feasible": self.megatron_dicts(),
        }


def enumerate_space(space: SearchSpace, model: ModelSpec, cluster: ClusterSpec, workload: Workload,
                    allow_cross_node_tp: bool = False, *, memory_headroom: float = C.DEFAULT_MEMORY_HEADROOM,
                    memory_options: MemoryOptions | None = None) -> SpaceResult:
    """Every combination of the space's values, judged by every rule.

    `memory_headroom` and `memory_options` (gradient dtype, recompute modules) go to the memory rule.
    """
    raw = {key: [_DEFAULTS[key]] for key in ALL_KNOBS}
    for key, knob in space.knobs.items():
        raw[key] = resolve_values(key, knob, model, cluster)
    values = {
        "tp": raw["tensor_model_parallel_size"], "pp": raw["pipeline_model_parallel_size"],
        "vpp": raw["virtual_pipeline_model_parallel_size"], "cp": raw["context_parallel_size"],
        "ep": raw["expert_model_parallel_size"], "etp": raw["expert_tensor_parallel_size"],
        "mbs": raw["micro_batch_size"], "sp": [int(v) for v in raw["sequence_parallel"]],
        "dist_opt": [int(v) for v in raw["use_distributed_optimizer"]],
        "recompute": [C.RECOMPUTE_CODES[v] for v in raw["recompute_granularity"]],
        "split": [_SPLIT_CODES[v] for v in raw["pipeline_split"]],
    }

    def derive_split(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pp, vpp, split = cols["pp"], cols["vpp"], cols["split"]
        first, last = np.zeros_like(pp), np.zeros_like(pp)
        uneven = split == C.SPLIT_UNEVEN
        # Uneven first/last counts depend only on (PP, VPP): compute them once per pair.
        for p_val, v_val in {(int(a), int(b)) for a, b in zip(pp[uneven], vpp[uneven])}:
            sel = uneven & (pp == p_val) & (vpp == v_val)
            fl = balanced_uneven_split(model.num_layers, p_val, v_val, model.mtp_num_layers)
            first[sel], last[sel] = fl if fl is not None else (-1, -1)
        account = (split == C.SPLIT_ACCOUNT).astype(np.int32)
        return {"first": first, "last": last, "emb_slot": account, "loss_slot": account}

    ctx = C.context_for(model, cluster, workload, allow_cross_node_tp=allow_cross_node_tp,
                        memory_headroom=memory_headroom, memory_options=memory_options)
    judged = C.evaluate_product(values, ctx, derive_split)
    return SpaceResult(model=model, cluster=cluster, workload=workload, num_candidates=judged.num_candidates,
                       pruned_by_rule=judged.pruned_by_rule, knobs=C.Knobs(**judged.columns))


def validate_space_for(space: SearchSpace, model: ModelSpec) -> None:
    """Cross-object checks a user should hear about before enumeration."""
    if not model.is_moe:
        for key in ("expert_model_parallel_size", "expert_tensor_parallel_size"):
            knob = space.knobs.get(key)
            if knob is not None and knob.values is not None and 1 not in knob.values:
                raise ConfigError(f"space '{space.name}': {key} must include 1 for the dense model {model.name}")
