"""The Megatron run settings a config is launched with, beyond its parallel knobs: overlaps and FP8 recipe.

One function, `run_settings_for(job)`, decides them. The export (Megatron-LM flags, Bridge overrides)
and the trial runner both derive from it, so what a user launches and what a trial measures cannot
drift apart. The defaults are those of NVIDIA's tuned perf recipes, which the cost model assumes too
(cost.RunOptions: grad-reduce / param-gather overlap and TP comm overlap on).

A trial may run less than this (no TP comm overlap without Transformer Engine userbuffers, no FP8 on
CPU); it records what it really ran as a RunSettings in its TrialResult.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from autotune.config import JobConfig

# FP8 recipe of the H100 perf tables the cost model is fitted on: per-tensor current scaling
# (Megatron `fp8_recipe="tensorwise"`, Bridge `bf16_with_fp8_current_scaling_mixed`), E4M3 forward
# and E5M2 backward (`fp8="hybrid"`).
FP8_FORMAT = "hybrid"
FP8_RECIPE = "tensorwise"


class RunSettings(BaseModel):
    """Megatron options of a run that the parallel config does not carry. Names are Megatron's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    overlap_grad_reduce: bool = Field(description="DDP overlaps the gradient reduce with the backward pass")
    overlap_param_gather: bool = Field(
        description="the distributed optimizer's parameter all-gather overlaps the next forward pass")
    tp_comm_overlap: bool = Field(description="Transformer Engine userbuffers overlap TP collectives with GEMMs")
    fp8_format: Literal["hybrid"] | None = Field(
        description="TransformerConfig.fp8 / --fp8-format; None: no FP8")
    fp8_recipe: Literal["tensorwise"] | None = Field(description="TransformerConfig.fp8_recipe / --fp8-recipe")
    fp8_param_gather: bool = Field(
        description="FP8 primary weights, gathered in FP8 (--fp8-param-gather; TransformerConfig.fp8_param)")


def tp_comm_overlap_allowed(job: JobConfig) -> bool:
    """Megatron-LM validate_args: --tp-comm-overlap only with --sequence-parallel (TE userbuffers)."""
    return job.parallel.tp > 1 and job.parallel.sequence_parallel


def run_settings_for(job: JobConfig) -> RunSettings:
    """The settings this config is exported and launched with."""
    dist_opt = job.parallel.use_distributed_optimizer
    fp8 = job.workload.precision == "fp8"
    return RunSettings(
        overlap_grad_reduce=True,
        # Megatron-LM validate_args: --overlap-param-gather needs the distributed optimizer.
        overlap_param_gather=dist_opt,
        tp_comm_overlap=tp_comm_overlap_allowed(job),
        fp8_format=FP8_FORMAT if fp8 else None,
        fp8_recipe=FP8_RECIPE if fp8 else None,
        # FP8 primary weights, as Bridge's FP8 recipes and the memory model assume (memory_fp8.py);
        # Megatron-LM allows them only with the distributed optimizer (arguments.py validate_args).
        fp8_param_gather=fp8 and dist_opt,
    )
