"""The winner of a search as files a user can launch from: best.yaml, Megatron-LM flags, Megatron Bridge overrides.

best.yaml keeps the seed guides' `parallelism:` / `training:` shape (JobConfig.to_yaml_dict) and adds
where the numbers came from: `measured` (a real trial) or only `predicted` (the cost and memory
models), named by `source`. Flags are derived from the config every time, never stored alone, so a
re-export after a flag-name fix needs no new search.

Megatron-LM flag names follow megatron/training/arguments.py (Megatron-LM core_r0.16): VPP is
`--num-virtual-stages-per-pipeline-rank` (the older `--virtual-pipeline-model-parallel-size` is gone),
uneven stages are `--decoder-first-pipeline-num-layers` / `--decoder-last-pipeline-num-layers`.
Bridge overrides are Hydra-style `section.field=value` keys of megatron.bridge ConfigContainer
(`model.*` is the GPTProvider/TransformerConfig, `train.*`, `dataset.*`, `ddp.*`, `optimizer.*`;
Megatron-Bridge @ 067f987 src/megatron/bridge/training/config.py). FP8 exports per-tensor current
scaling (Megatron `fp8_recipe="tensorwise"`, Bridge `bf16_with_fp8_current_scaling_mixed`), the recipe
of the H100 perf tables the cost model is fitted on. Both exports turn on the overlaps the cost model
assumes (cost.RunOptions): grad-reduce and param-gather overlap, and TP comm overlap with SP. Those
settings come from autotune.run_settings, which the trial runner reads too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml

from autotune.atomic import write_text_atomic
from autotune.cluster import ClusterSpec
from autotune.config import JobConfig
from autotune.errors import ConfigError, SpecFileError
from autotune.run_settings import run_settings_for

BEST_FILE = "best.yaml"
Source = Literal["measured", "predicted"]
FORMATS = ("yaml", "megatron-args", "bridge")
_TOP_KEYS = ("model", "cluster", "source", "parallelism", "training", "measured", "predicted", "study",
             "megatron_args", "bridge_overrides")


def megatron_args(job: JobConfig, mtp_num_layers: int = 0) -> list[str]:
    """Megatron-LM command-line flags (pretrain_gpt.py) for this config, as an argv list. `mtp_num_layers`:
    the model's multi-token-prediction layers, which the estimates count (flag omitted when 0)."""
    p, w = job.parallel, job.workload
    args = [
        "--tensor-model-parallel-size", str(p.tp), "--pipeline-model-parallel-size", str(p.pp),
        "--context-parallel-size", str(p.cp), "--expert-model-parallel-size", str(p.ep),
        "--expert-tensor-parallel-size", str(p.etp),
    ]
    if p.virtual_pipeline_model_parallel_size and p.vpp > 1:
        args += ["--num-virtual-stages-per-pipeline-rank", str(p.vpp)]
    if p.sequence_parallel:
        args.append("--sequence-parallel")
    if p.use_distributed_optimizer:
        args.append("--use-distributed-optimizer")
    args += _overlap_flags(job)
    if p.ep * p.etp > 1:  # core's default is allgather; the cost and memory models assume alltoall
        args += ["--moe-token-dispatcher-type", "alltoall"]
    if p.recompute_granularity == "selective":
        args += ["--recompute-granularity", "selective"]
    elif p.recompute_granularity == "full":
        # uniform over every layer, one layer per checkpoint: what the memory model charges.
        args += ["--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "1"]
    if p.account_for_embedding_in_pipeline_split:
        args.append("--account-for-embedding-in-pipeline-split")
    if p.account_for_loss_in_pipeline_split:
        args.append("--account-for-loss-in-pipeline-split")
    if p.num_layers_in_first_pipeline_stage is not None:
        args += ["--decoder-first-pipeline-num-layers", str(p.num_layers_in_first_pipeline_stage)]
    if p.num_layers_in_last_pipeline_stage is not None:
        args += ["--decoder-last-pipeline-num-layers", str(p.num_layers_in_last_pipeline_stage)]
    if p.pipeline_model_parallel_layout is not None:
        args += ["--pipeline-model-parallel-layout", p.pipeline_model_parallel_layout]
    if mtp_num_layers:
        args += ["--mtp-num-layers", str(mtp_num_layers)]
    args += ["--micro-batch-size", str(p.micro_batch_size), "--global-batch-size", str(w.global_batch_size),
             "--seq-length", str(w.seq_length), "--bf16"]
    run = run_settings_for(job)
    if run.fp8_format is not None:
        args += ["--fp8-format", run.fp8_format, "--fp8-recipe", run.fp8_recipe]
        if run.fp8_param_gather:
            args.append("--fp8-param-gather")
    return args


def _overlap_flags(job: JobConfig) -> list[str]:
    """The overlaps the cost model assumes (cost.RunOptions defaults, as in NVIDIA's perf recipes)."""
    run = run_settings_for(job)
    named = [("--overlap-grad-reduce", run.overlap_grad_reduce), ("--overlap-param-gather", run.overlap_param_gather),
             ("--tp-comm-overlap", run.tp_comm_overlap)]
    return [flag for flag, on in named if on]


def bridge_overrides(job: JobConfig, mtp_num_layers: int = 0) -> list[str]:
    """Megatron Bridge recipe overrides (`key=value`) for this config (`mtp_num_layers` as in megatron_args)."""
    p, w = job.parallel, job.workload
    run = run_settings_for(job)
    out = {
        "model.tensor_model_parallel_size": p.tp, "model.pipeline_model_parallel_size": p.pp,
        "model.virtual_pipeline_model_parallel_size": p.virtual_pipeline_model_parallel_size,
        "model.context_parallel_size": p.cp, "model.expert_model_parallel_size": p.ep,
        "model.expert_tensor_parallel_size": p.etp, "model.sequence_parallel": p.sequence_parallel,
        "model.recompute_granularity": p.recompute_granularity,
    }
    if p.recompute_granularity == "full":
        out.update({"model.recompute_method": "uniform", "model.recompute_num_layers": 1})
    if p.account_for_embedding_in_pipeline_split:
        out["model.account_for_embedding_in_pipeline_split"] = True
    if p.account_for_loss_in_pipeline_split:
        out["model.account_for_loss_in_pipeline_split"] = True
    if p.num_layers_in_first_pipeline_stage is not None:
        out["model.num_layers_in_first_pipeline_stage"] = p.num_layers_in_first_pipeline_stage
    if p.num_layers_in_last_pipeline_stage is not None:
        out["model.num_layers_in_last_pipeline_stage"] = p.num_layers_in_last_pipeline_stage
    if p.pipeline_model_parallel_layout is not None:
        out["model.pipeline_model_parallel_layout"] = repr(p.pipeline_model_parallel_layout)
    if mtp_num_layers:
        out["model.mtp_num_layers"] = mtp_num_layers
    out.update({
        # Bridge asserts model.seq_length == dataset.seq_length (training/config.py, ConfigContainer.validate).
        "model.seq_length": w.seq_length, "dataset.seq_length": w.seq_length,
        "train.micro_batch_size": p.micro_batch_size,
        "train.global_batch_size": w.global_batch_size,
        "ddp.use_distributed_optimizer": p.use_distributed_optimizer,
        "ddp.overlap_grad_reduce": run.overlap_grad_reduce, "ddp.overlap_param_gather": run.overlap_param_gather,
        # Bridge applies its CommOverlapConfig last (training/comm_overlap.py), so TP overlap is set there.
        "comm_overlap.tp_comm_overlap": run.tp_comm_overlap,
        **({"model.moe_token_dispatcher_type": "alltoall"} if p.ep * p.etp > 1 else {}),
        "optimizer.use_distributed_optimizer": p.use_distributed_optimizer,
        # Bridge's precision recipe with fp8="hybrid", fp8_recipe="tensorwise" (the run settings above).
        "mixed_precision": "bf16_with_fp8_current_scaling_mixed" if run.fp8_format else "bf16_mixed",
    })
    return [f"{k}={_hydra(v)}" for k, v in out.items()]


def _hydra(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def best_document(*, model_name: str, cluster: ClusterSpec, job: JobConfig, source: Source,
                  predicted: dict[str, Any] | None, measured: dict[str, Any] | None,
                  study: dict[str, Any] | None = None, mtp_num_layers: int = 0) -> dict[str, Any]:
    """The content of best.yaml. `mtp_num_layers`: the model's MTP layers, exported with the config because the
    estimates count them."""
    if source == "measured" and not measured:
        raise ConfigError("a best config with source 'measured' needs its measurement")
    return {
        "model": model_name,
        "cluster": {"num_gpus": cluster.num_gpus, "gpu_type": cluster.gpu.name, "gpus_per_node": cluster.gpus_per_node},
        "source": source,
        **job.to_yaml_dict(),
        "measured": measured,
        "predicted": predicted,
        "study": study,
        "megatron_args": megatron_args(job, mtp_num_layers),
        "bridge_overrides": bridge_overrides(job, mtp_num_layers),
    }


def write_yaml_atomic(path: Path, data: dict[str, Any]) -> None:
    """Dump with yaml.safe_dump and write atomically."""
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=120))


def load_best(path: Path) -> tuple[dict[str, Any], JobConfig]:
    """Read a best.yaml and rebuild its JobConfig; a missing or malformed file is a SpecFileError."""
    if path.is_dir():
        path = path / BEST_FILE
    if not path.is_file():
        raise SpecFileError(f"no {BEST_FILE} at {path}; run `autotune search` first or pass the study folder")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise SpecFileError(f"{path}: not valid YAML; re-run `autotune search` to rewrite it") from None
    if not isinstance(data, dict):
        raise SpecFileError(f"{path}: expected a mapping with {', '.join(_TOP_KEYS)}")
    unknown = set(data) - set(_TOP_KEYS)
    if unknown:
        raise SpecFileError(f"{path}: unknown keys {', '.join(sorted(unknown))}")
    cluster = data.get("cluster")
    if not isinstance(cluster, dict) or not isinstance(cluster.get("num_gpus"), int):
        raise SpecFileError(f"{path}: 'cluster.num_gpus' is missing")
    job = JobConfig.from_yaml_dict(data, num_gpus=cluster["num_gpus"])
    return data, job


def render_export(data: dict[str, Any], job: JobConfig, fmt: str) -> str:
    """best.yaml content (flags re-derived from the config) in one of FORMATS."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    # The model is stored by name only; its MTP layer count travels in the flags written with it.
    stored = data.get("megatron_args") or []
    mtp = int(stored[stored.index("--mtp-num-layers") + 1]) if "--mtp-num-layers" in stored[:-1] else 0
    if fmt == "megatron-args":
        return " ".join(megatron_args(job, mtp))
    if fmt == "bridge":
        return " ".join(bridge_overrides(job, mtp))
    fresh = {**data, **job.to_yaml_dict(), "megatron_args": megatron_args(job, mtp),
             "bridge_overrides": bridge_overrides(job, mtp)}
    return yaml.safe_dump({k: fresh.get(k) for k in _TOP_KEYS}, sort_keys=False, width=120)
