"""The configs we search over, with Megatron's own knob names.

`ParallelConfig` holds the knobs, `Workload` what is trained, `JobConfig` both plus the world
size, from which every derived size is computed (never stored, so never inconsistent).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from autotune.errors import ConfigError

_FROZEN = ConfigDict(frozen=True, extra="forbid")

RecomputeGranularity = Literal["selective", "full"]
Precision = Literal["bf16", "fp8"]


class ParallelConfig(BaseModel):
    """One point of the search space. Field names are Megatron's (`--tensor-model-parallel-size` ...)."""

    model_config = _FROZEN

    tensor_model_parallel_size: int = Field(default=1, gt=0)
    pipeline_model_parallel_size: int = Field(default=1, gt=0)
    virtual_pipeline_model_parallel_size: int | None = Field(default=None, description="None: no interleaving")
    context_parallel_size: int = Field(default=1, gt=0)
    expert_model_parallel_size: int = Field(default=1, gt=0)
    expert_tensor_parallel_size: int = Field(default=1, gt=0)
    micro_batch_size: int = Field(default=1, gt=0)
    sequence_parallel: bool = False
    use_distributed_optimizer: bool = True
    recompute_granularity: RecomputeGranularity | None = None
    # How layers are split over pipeline stages (megatron/core/transformer/transformer_config.py).
    account_for_embedding_in_pipeline_split: bool = False
    account_for_loss_in_pipeline_split: bool = False
    num_layers_in_first_pipeline_stage: int | None = Field(default=None, gt=0)
    num_layers_in_last_pipeline_stage: int | None = Field(default=None, gt=0)
    pipeline_model_parallel_layout: str | None = Field(default=None, description="explicit layout, e.g. 'Et|(tt|)*30L'")

    @model_validator(mode="after")
    def _vpp_not_one(self) -> "ParallelConfig":
        if self.virtual_pipeline_model_parallel_size is not None and self.virtual_pipeline_model_parallel_size < 1:
            raise ConfigError(
                f"virtual_pipeline_model_parallel_size must be >= 1 or null, "
                f"got {self.virtual_pipeline_model_parallel_size}"
            )
        return self

    @property
    def tp(self) -> int:
        return self.tensor_model_parallel_size

    @property
    def pp(self) -> int:
        return self.pipeline_model_parallel_size

    @property
    def vpp(self) -> int:
        """Model chunks per pipeline rank (1 without interleaving)."""
        return self.virtual_pipeline_model_parallel_size or 1

    @property
    def cp(self) -> int:
        return self.context_parallel_size

    @property
    def ep(self) -> int:
        return self.expert_model_parallel_size

    @property
    def etp(self) -> int:
        return self.expert_tensor_parallel_size

    @property
    def pipeline_split(self) -> str:
        """A short name for how layers are split over stages."""
        if self.pipeline_model_parallel_layout:
            return "layout"
        if self.num_layers_in_first_pipeline_stage or self.num_layers_in_last_pipeline_stage:
            return "uneven"
        if self.account_for_embedding_in_pipeline_split or self.account_for_loss_in_pipeline_split:
            return "account_embedding_loss"
        return "even"

    def min_gpus(self) -> int:
        """Smallest world size: the dense (TP*CP) and expert (EP*ETP) meshes share each PP stage's GPUs."""
        return self.pp * max(self.tp * self.cp, self.ep * self.etp)

    def canonical_key(self) -> str:
        """A stable, human-readable identity: equal keys mean the same run."""
        parts = [
            f"tp{self.tp}", f"pp{self.pp}", f"vpp{self.vpp}", f"cp{self.cp}", f"ep{self.ep}", f"etp{self.etp}",
            f"mbs{self.micro_batch_size}", f"sp{int(self.sequence_parallel)}",
            f"do{int(self.use_distributed_optimizer)}", f"rc-{self.recompute_granularity or 'none'}",
        ]
        if self.pipeline_split == "account_embedding_loss":
            parts.append(f"acc{int(self.account_for_embedding_in_pipeline_split)}"
                         f"{int(self.account_for_loss_in_pipeline_split)}")
        elif self.pipeline_split == "uneven":
            parts.append(f"first{self.num_layers_in_first_pipeline_stage or '-'}"
                         f"last{self.num_layers_in_last_pipeline_stage or '-'}")
        elif self.pipeline_split == "layout":
            parts.append(f"layout[{self.pipeline_model_parallel_layout}]")
        return ".".join(parts)

    def short_name(self) -> str:
        """Compact label for dashboards and tables."""
        s = f"TP{self.tp}·PP{self.pp}"
        if self.vpp > 1:
            s += f"·VPP{self.vpp}"
        if self.cp > 1:
            s += f"·CP{self.cp}"
        if self.ep > 1:
            s += f"·EP{self.ep}"
        if self.etp > 1:
            s += f"·ETP{self.etp}"
        s += f"·MBS{self.micro_batch_size}"
        if self.recompute_granularity:
            s += f"·RC-{self.recompute_granularity}"
        return s


class Workload(BaseModel):
    """What one training step processes."""

    model_config = _FROZEN

    seq_length: int = Field(default=4096, gt=0)
    global_batch_size: int = Field(default=1024, gt=0, description="sequences per optimizer step")
    precision: Precision = "bf16"


_PARALLELISM_KEYS = (
    "tensor_model_parallel_size", "pipeline_model_parallel_size", "virtual_pipeline_model_parallel_size",
    "context_parallel_size", "expert_model_parallel_size", "expert_tensor_parallel_size",
)
_SPLIT_KEYS = (
    "account_for_embedding_in_pipeline_split", "account_for_loss_in_pipeline_split",
    "num_layers_in_first_pipeline_stage", "num_layers_in_last_pipeline_stage", "pipeline_model_parallel_layout",
)
_TRAINING_KEYS = ("micro_batch_size", "use_distributed_optimizer", "sequence_parallel", "recompute_granularity")


class JobConfig(BaseModel):
    """A parallel config placed on a world size, with the workload it trains."""

    model_config = _FROZEN

    num_gpus: int = Field(gt=0)
    parallel: ParallelConfig
    workload: Workload

    @property
    def data_parallel_size(self) -> int:
        return self.num_gpus // (self.parallel.tp * self.parallel.pp * self.parallel.cp)

    @property
    def expert_data_parallel_size(self) -> int:
        return self.num_gpus // (self.parallel.pp * self.parallel.ep * self.parallel.etp)

    @property
    def num_microbatches(self) -> int:
        return self.workload.global_batch_size // (self.parallel.micro_batch_size * self.data_parallel_size)

    def to_yaml_dict(self) -> dict[str, Any]:
        """The seed guides' `parallelism:` / `training:` shape. Split knobs appear only when set."""
        p = self.parallel
        parallelism: dict[str, Any] = {k: getattr(p, k) for k in _PARALLELISM_KEYS}
        defaults = ParallelConfig()
        parallelism.update({k: getattr(p, k) for k in _SPLIT_KEYS if getattr(p, k) != getattr(defaults, k)})
        training = {
            "micro_batch_size": p.micro_batch_size,
            "global_batch_size": self.workload.global_batch_size,
            "seq_length": self.workload.seq_length,
            "use_distributed_optimizer": p.use_distributed_optimizer,
            "sequence_parallel": p.sequence_parallel,
            "recompute_granularity": p.recompute_granularity,
        }
        if self.workload.precision != "bf16":
            training["precision"] = self.workload.precision
        return {"parallelism": parallelism, "training": training}

    @classmethod
    def from_yaml_dict(cls, data: dict[str, Any], num_gpus: int) -> "JobConfig":
        if not isinstance(data, dict) or "parallelism" not in data or "training" not in data:
            raise ConfigError("a config needs 'parallelism:' and 'training:' sections")
        par, tr = dict(data["parallelism"] or {}), dict(data["training"] or {})
        unknown = (set(par) - set(_PARALLELISM_KEYS) - set(_SPLIT_KEYS)) | (
            set(tr) - set(_TRAINING_KEYS) - {"global_batch_size", "seq_length", "precision"}
        )
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
        parallel = ParallelConfig(**par, **{k: tr[k] for k in _TRAINING_KEYS if k in tr})
        workload = Workload(**{k: tr[k] for k in ("global_batch_size", "seq_length", "precision") if k in tr})
        return cls(num_gpus=num_gpus, parallel=parallel, workload=workload)

    def to_megatron_dict(self) -> dict[str, Any]:
        """Flat Megatron-named dict with the derived sizes, as `autotune space --json` prints it."""
        out: dict[str, Any] = {k: getattr(self.parallel, k) for k in _PARALLELISM_KEYS + _TRAINING_KEYS}
        defaults = ParallelConfig()
        out.update({k: getattr(self.parallel, k) for k in _SPLIT_KEYS
                    if getattr(self.parallel, k) != getattr(defaults, k)})
        out["data_parallel_size"] = self.data_parallel_size
        out["expert_data_parallel_size"] = self.expert_data_parallel_size
        out["num_microbatches"] = self.num_microbatches
        return out
