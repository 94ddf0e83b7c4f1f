"""What one trial runs (`TrialSpec`) and what it reports (`TrialResult`).

Both are frozen pydantic models that round-trip through JSON, because they cross process
boundaries: the launcher writes the spec for torchrun's workers, rank 0 writes the result back,
and a Ray task returns it to the study. No torch or megatron import here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from autotune.atomic import write_text_atomic
from autotune.config import JobConfig
from autotune.errors import ConfigError
from autotune.model_spec import ModelSpec
from autotune.run_settings import RunSettings

_FROZEN = ConfigDict(frozen=True, extra="forbid")

Backend = Literal["cpu", "gpu"]
# node_lost: a Ray node running part of the trial died (set by autotune.scheduler, not by the runner).
TrialStatus = Literal[
    "completed", "oom", "timeout", "crashed", "launch_failed", "invalid_config", "nan_loss", "unsupported",
    "node_lost",
]
# Test-only faults, injected by the worker so the launcher's failure paths can be exercised for real.
Fault = Literal["hang", "crash", "nan"]


class TrialSpec(BaseModel):
    """One short training run of one config at one world size."""

    model_config = _FROZEN

    model: ModelSpec = Field(description="the architecture to build")
    job: JobConfig = Field(description="parallel config, workload and world size (num_gpus = number of ranks)")
    warmup_iters: int = Field(
        default=2, ge=1, description="untimed steps first; >= 1 because step 1 allocates buffers and runs lazy checks"
    )
    measured_iters: int = Field(default=3, gt=0, description="timed optimizer steps")
    backend: Backend = Field(default="gpu", description="cpu: gloo + local layer spec; gpu: nccl (+ TE if present)")
    seed: int = Field(default=1234, description="model init and mock-data seed")
    time_limit_s: float = Field(default=600.0, gt=0, description="the launcher kills the whole run after this")
    memory_cap_gib: float | None = Field(
        default=None, gt=0,
        description="per-rank address-space cap (RLIMIT_AS), for CPU oom tests; None: no cap. Not for GPU "
        "runs: CUDA maps far more address space than it uses",
    )
    learning_rate: float = Field(default=1e-3, gt=0, description="Adam lr; high enough that loss falls in a few steps")
    overlap_data_parallel_comm: bool = Field(
        default=True,
        description="overlap DDP's grad reduce and param all-gather with compute, as exported; False runs "
        "them after the backward / optimizer step instead (an A/B check that overlap changes no loss)",
    )
    fault: Fault | None = Field(
        default=None, description="TEST ONLY: make rank `fault_rank` hang, raise, or produce a NaN loss"
    )
    fault_rank: int = Field(default=0, ge=0, description="TEST ONLY: the rank that injects `fault`")

    @model_validator(mode="after")
    def _fault_rank_exists(self) -> "TrialSpec":
        if self.fault is not None and self.fault_rank >= self.job.num_gpus:
            raise ConfigError(
                f"fault_rank must be < num_gpus={self.job.num_gpus}, got fault_rank={self.fault_rank}"
            )
        return self

    @property
    def num_ranks(self) -> int:
        return self.job.num_gpus

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> "TrialSpec":
        return cls.model_validate_json(text)


class PhaseTimings(BaseModel):
    """Wall-clock seconds spent in each phase of a trial (rank 0's view; launch from the launcher)."""

    model_config = _FROZEN

    launch_s: float | None = Field(default=None, description="torchrun start to the worker's first line")
    init_s: float | None = Field(default=None, description="imports, process groups, model and optimizer build")
    warmup_s: float | None = Field(default=None, description="warm-up steps")
    measured_s: float | None = Field(default=None, description="timed steps")
    total_s: float | None = Field(default=None, description="launcher start to result, as the launcher saw it")


class Versions(BaseModel):
    model_config = _FROZEN

    torch: str | None = None
    megatron_core: str | None = None
    transformer_engine: str | None = None
    cuda: str | None = None


class TrialResult(BaseModel):
    """What one trial measured, or why it could not."""

    # A nan_loss result carries the NaN itself; pydantic would otherwise write it as null and
    # the result would no longer validate when read back.
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    status: TrialStatus
    config_key: str = Field(description="ParallelConfig.canonical_key() of the run")
    num_ranks: int = Field(gt=0)
    backend: Backend
    tokens_per_s_per_gpu: float | None = None
    step_time_s: float | None = Field(default=None, description="median measured step")
    step_time_min_s: float | None = None
    step_time_max_s: float | None = None
    peak_memory_gib: float | None = Field(default=None, description="max over ranks (GPU: reserved; CPU: peak RSS)")
    peak_memory_allocated_gib_per_rank: list[float] = Field(
        default_factory=list, description="GPU: torch.cuda.max_memory_allocated; CPU: peak RSS"
    )
    peak_memory_reserved_gib_per_rank: list[float] = Field(
        default_factory=list, description="GPU: torch.cuda.max_memory_reserved; CPU: peak RSS"
    )
    num_parameters_per_rank: list[int] = Field(default_factory=list, description="parameters held by each rank")
    losses: list[float] = Field(default_factory=list, description="loss per step, warm-up and measured")
    timings: PhaseTimings = Field(default_factory=PhaseTimings)
    versions: Versions = Field(default_factory=Versions)
    layer_spec: Literal["transformer_engine", "local"] | None = None
    dtype: str | None = Field(default=None, description="parameter dtype the run trained in")
    run_settings: RunSettings | None = Field(
        default=None,
        description="overlaps and FP8 recipe the run really trained with (may be less than the export: "
        "trial_runner.worker.trial_run_settings); None in results written before it was recorded",
    )
    error: str | None = Field(default=None, description="on failure: the error message")
    failing_rank: int | None = Field(default=None, description="on failure: the first rank that failed")
    log_tail: str | None = Field(default=None, description="on failure: the last lines of that rank's log")

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> "TrialResult":
        return cls.model_validate_json(text)

    def write_atomic(self, path: str | os.PathLike) -> None:
        """Write via a temp file and os.replace, so a reader never sees half a result."""
        write_text_atomic(Path(path), self.to_json())


def read_result(path: str | os.PathLike) -> TrialResult | None:
    """The result at `path`, or None when there is none (or it is not a valid result)."""
    try:
        return TrialResult.from_json(Path(path).read_text())
    except (OSError, ValueError, json.JSONDecodeError):
        return None
