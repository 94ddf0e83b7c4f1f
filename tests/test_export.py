"""best.yaml, Megatron-LM flags and Megatron Bridge overrides (autotune/export.py)."""

from __future__ import annotations

import os

import pytest
import yaml

from autotune import export
from autotune.cluster import ClusterSpec
from autotune.config import JobConfig, ParallelConfig, Workload
from autotune.errors import ConfigError, SpecFileError


def _job(precision="bf16", **knobs) -> JobConfig:
    return JobConfig(num_gpus=256, parallel=ParallelConfig(**knobs),
                     workload=Workload(seq_length=4096, global_batch_size=2048, precision=precision))


FULL = dict(tensor_model_parallel_size=2, pipeline_model_parallel_size=4, virtual_pipeline_model_parallel_size=3,
            context_parallel_size=2, expert_model_parallel_size=8, expert_tensor_parallel_size=1,
            micro_batch_size=1, sequence_parallel=True, use_distributed_optimizer=True, recompute_granularity="full",
            num_layers_in_first_pipeline_stage=5, num_layers_in_last_pipeline_stage=6)


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_megatron_args_carry_every_knob():
    args = export.megatron_args(_job("fp8", **FULL))
    assert _flag(args, "--tensor-model-parallel-size") == "2"
    assert _flag(args, "--pipeline-model-parallel-size") == "4"
    assert _flag(args, "--num-virtual-stages-per-pipeline-rank") == "3"
    assert _flag(args, "--context-parallel-size") == "2"
    assert _flag(args, "--expert-model-parallel-size") == "8"
    assert _flag(args, "--expert-tensor-parallel-size") == "1"
    assert _flag(args, "--recompute-granularity") == "full"
    assert _flag(args, "--recompute-method") == "uniform" and _flag(args, "--recompute-num-layers") == "1"
    assert _flag(args, "--decoder-first-pipeline-num-layers") == "5"
    assert _flag(args, "--decoder-last-pipeline-num-layers") == "6"
    assert _flag(args, "--micro-batch-size") == "1" and _flag(args, "--global-batch-size") == "2048"
    assert _flag(args, "--seq-length") == "4096" and _flag(args, "--fp8-format") == "hybrid"
    for switch in ("--sequence-parallel", "--use-distributed-optimizer", "--bf16"):
        assert switch in args


def test_megatron_args_leave_out_what_is_off():
    args = export.megatron_args(_job(use_distributed_optimizer=False))
    for absent in ("--sequence-parallel", "--use-distributed-optimizer", "--recompute-granularity",
                   "--num-virtual-stages-per-pipeline-rank", "--fp8-format", "--account-for-embedding-in-pipeline-split",
                   "--decoder-first-pipeline-num-layers"):
        assert absent not in args


def test_megatron_args_selective_recompute_and_account_split():
    args = export.megatron_args(_job(pipeline_model_parallel_size=2, recompute_granularity="selective",
                                     account_for_embedding_in_pipeline_split=True,
                                     account_for_loss_in_pipeline_split=True))
    assert _flag(args, "--recompute-granularity") == "selective" and "--recompute-method" not in args
    assert "--account-for-embedding-in-pipeline-split" in args and "--account-for-loss-in-pipeline-split" in args


def test_bridge_overrides():
    over = dict(o.split("=", 1) for o in export.bridge_overrides(_job(**FULL)))
    assert over["model.tensor_model_parallel_size"] == "2"
    assert over["model.virtual_pipeline_model_parallel_size"] == "3"
    assert over["model.sequence_parallel"] == "true"
    assert over["model.recompute_granularity"] == "full" and over["model.recompute_method"] == "uniform"
    assert over["model.num_layers_in_first_pipeline_stage"] == "5"
    assert over["train.micro_batch_size"] == "1" and over["train.global_batch_size"] == "2048"
    assert over["ddp.use_distributed_optimizer"] == "true"
    assert dict(o.split("=", 1) for o in export.bridge_overrides(_job()))["model.recompute_granularity"] == "null"


# Bridge-only fields, not in megatron-core: Megatron-Bridge @ 067f987df03b8355b03192d88d70f1709fedf51a,
# src/megatron/bridge/models/gpt_provider.py (GPTModelProvider.seq_length, line 160),
# src/megatron/bridge/training/config.py (TrainingConfig.micro_batch_size/global_batch_size via
# Megatron-LM @ d98e8a6 megatron/training/config/training_config.py lines 11, 15; GPTDatasetConfig.seq_length,
# line 231) and
# src/megatron/bridge/training/mixed_precision.py (@register bf16_mixed, line 185;
# bf16_with_fp8_current_scaling_mixed, line 285: fp8="hybrid", fp8_recipe="tensorwise").
# src/megatron/bridge/training/comm_overlap.py (CommOverlapConfig.tp_comm_overlap, line 384).
BRIDGE_ONLY = {"model.seq_length", "train.micro_batch_size", "train.global_batch_size", "dataset.seq_length",
               "comm_overlap.tp_comm_overlap"}
BRIDGE_PRECISIONS = {"bf16_mixed", "bf16_with_fp8_current_scaling_mixed"}


@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_bridge_override_keys_are_real_megatron_fields(precision):
    """Every `model.*`, `ddp.*`, `optimizer.*` key is a field of the real megatron-core dataclass that
    Bridge's ConfigContainer section subclasses, so a typo cannot reach a user's launch."""
    pytest.importorskip("megatron.core")
    import dataclasses

    from megatron.core.distributed import DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig
    from megatron.core.transformer import TransformerConfig

    sections = {"model": TransformerConfig, "ddp": DistributedDataParallelConfig, "optimizer": OptimizerConfig}
    jobs = [_job(precision, **FULL), _job(precision, pipeline_model_parallel_size=2,
                                          account_for_embedding_in_pipeline_split=True,
                                          account_for_loss_in_pipeline_split=True),
            _job(precision, pipeline_model_parallel_size=2, pipeline_model_parallel_layout="Et|tL")]
    for job in jobs:
        over = dict(o.split("=", 1) for o in export.bridge_overrides(job))
        for key in over:
            if key in BRIDGE_ONLY or key == "mixed_precision":
                continue
            section, name = key.split(".", 1)
            assert name in {f.name for f in dataclasses.fields(sections[section])}, key
        assert over["model.seq_length"] == over["dataset.seq_length"] == "4096"
        assert over["mixed_precision"] in BRIDGE_PRECISIONS
        assert (over["mixed_precision"] == "bf16_with_fp8_current_scaling_mixed") == (precision == "fp8")


def test_overlap_flags_follow_megatron_lm_rules():
    """What the cost model assumes (cost.RunOptions), within what Megatron-LM's validate_args accepts:
    param-gather overlap only with the distributed optimizer, TP comm overlap only with SP."""
    full = export.megatron_args(_job(**FULL))
    assert {"--overlap-grad-reduce", "--overlap-param-gather", "--tp-comm-overlap"} <= set(full)
    plain = export.megatron_args(_job(tensor_model_parallel_size=2, sequence_parallel=False,
                                      use_distributed_optimizer=False))
    assert "--overlap-grad-reduce" in plain
    assert "--overlap-param-gather" not in plain and "--tp-comm-overlap" not in plain
    over = dict(o.split("=", 1) for o in export.bridge_overrides(_job(**FULL)))
    assert over["ddp.overlap_grad_reduce"] == over["ddp.overlap_param_gather"] == "true"
    assert over["comm_overlap.tp_comm_overlap"] == "true"
    assert dict(o.split("=", 1) for o in export.bridge_overrides(_job()))["comm_overlap.tp_comm_overlap"] == "false"


def test_expert_parallel_exports_name_the_alltoall_dispatcher():
    """Megatron Core's default dispatcher is allgather (TransformerConfig.moe_token_dispatcher_type);
    the cost model prices EP as alltoall, so the export must say so."""
    from megatron.core.transformer import TransformerConfig

    assert TransformerConfig.__dataclass_fields__["moe_token_dispatcher_type"].default == "allgather"
    assert _flag(export.megatron_args(_job(**FULL)), "--moe-token-dispatcher-type") == "alltoall"
    assert "--moe-token-dispatcher-type" not in export.megatron_args(_job())
    over = dict(o.split("=", 1) for o in export.bridge_overrides(_job(**FULL)))
    assert over["model.moe_token_dispatcher_type"] == "alltoall"


def test_fp8_megatron_args_name_the_current_scaling_recipe():
    from megatron.core.enums import Fp8Recipe

    args = export.megatron_args(_job("fp8", use_distributed_optimizer=True))
    assert _flag(args, "--fp8-format") == "hybrid" and _flag(args, "--fp8-recipe") == Fp8Recipe.tensorwise.value
    assert "--fp8-param-gather" in args
    assert "--fp8-param-gather" not in export.megatron_args(_job("fp8", use_distributed_optimizer=False))
    assert "--fp8-recipe" not in export.megatron_args(_job()) and "--fp8-param-gather" not in export.megatron_args(_job())


def _doc(job: JobConfig, source="predicted", measured=None) -> dict:
    return export.best_document(model_name="qwen3-235b", cluster=ClusterSpec.build(256), job=job, source=source,
                                predicted={"tokens_per_s_per_gpu": 1234.5, "peak_memory_gib": 60.0},
                                measured=measured)


def test_best_yaml_round_trips(tmp_path):
    job = _job(**FULL)
    path = tmp_path / "best.yaml"
    export.write_yaml_atomic(path, _doc(job))
    data, back = export.load_best(tmp_path)  # a study folder works as well as the file
    assert back == job
    assert data["source"] == "predicted" and data["measured"] is None
    assert data["cluster"] == {"num_gpus": 256, "gpu_type": "h100-80gb", "gpus_per_node": 8}
    assert data["parallelism"] == job.to_yaml_dict()["parallelism"]
    assert data["megatron_args"] == export.megatron_args(job)
    assert yaml.safe_load(export.render_export(data, back, "yaml")) == data


def test_measured_source_needs_a_measurement():
    with pytest.raises(ConfigError, match="needs its measurement"):
        _doc(_job(), source="measured")


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "best.yaml"
    export.write_yaml_atomic(path, _doc(_job()))
    before = path.read_text()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        export.write_yaml_atomic(path, _doc(_job(**FULL)))
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["best.yaml"]  # no temp file left behind


def test_render_formats(tmp_path):
    export.write_yaml_atomic(tmp_path / "best.yaml", _doc(_job(**FULL)))
    data, job = export.load_best(tmp_path / "best.yaml")
    assert export.render_export(data, job, "megatron-args").startswith("--tensor-model-parallel-size 2 ")
    assert "train.global_batch_size=2048" in export.render_export(data, job, "bridge").split()
    with pytest.raises(ConfigError, match="--format must be one of yaml, megatron-args, bridge, got 'toml'"):
        export.render_export(data, job, "toml")


def test_load_best_errors(tmp_path):
    with pytest.raises(SpecFileError, match="no best.yaml"):
        export.load_best(tmp_path)
    (tmp_path / "best.yaml").write_text("a: [")
    with pytest.raises(SpecFileError, match="not valid YAML"):
        export.load_best(tmp_path)
    (tmp_path / "best.yaml").write_text("- 1\n")
    with pytest.raises(SpecFileError, match="expected a mapping"):
        export.load_best(tmp_path)
    (tmp_path / "best.yaml").write_text(yaml.safe_dump({**_doc(_job()), "extra": 1}))
    with pytest.raises(SpecFileError, match="unknown keys extra"):
        export.load_best(tmp_path)
    doc = _doc(_job())
    del doc["cluster"]
    (tmp_path / "best.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(SpecFileError, match="cluster.num_gpus"):
        export.load_best(tmp_path)


def test_a_model_with_mtp_exports_its_mtp_layers_and_keeps_them_through_a_round_trip(tmp_path):
    # The estimates count DeepSeek-V3's MTP layer, so the exported run must build it: Megatron-LM's
    # --mtp-num-layers, Megatron Bridge's model.mtp_num_layers. A model without MTP gets neither.
    job = _job(**FULL)
    doc = export.best_document(model_name="deepseek-v3", cluster=ClusterSpec.build(256), job=job, source="predicted",
                               predicted={"tokens_per_s_per_gpu": 1.0}, measured=None, mtp_num_layers=1)
    assert _flag(doc["megatron_args"], "--mtp-num-layers") == "1"
    assert "model.mtp_num_layers=1" in doc["bridge_overrides"]
    assert "--mtp-num-layers" not in export.megatron_args(job)
    assert not any(o.startswith("model.mtp_num_layers") for o in export.bridge_overrides(job))
    export.write_yaml_atomic(tmp_path / "best.yaml", doc)
    data, back = export.load_best(tmp_path)
    assert "--mtp-num-layers 1" in export.render_export(data, back, "megatron-args")
    assert "model.mtp_num_layers=1" in export.render_export(data, back, "bridge").split()
    assert yaml.safe_load(export.render_export(data, back, "yaml")) == data
