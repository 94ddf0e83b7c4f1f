"""Config schema: Megatron names, derived sizes, canonical keys and the seed YAML shape."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from autotune.config import JobConfig, ParallelConfig, Workload
from autotune.errors import ConfigError

SEED_YAML = """\
parallelism:
  tensor_model_parallel_size: 2
  pipeline_model_parallel_size: 8
  virtual_pipeline_model_parallel_size: 4
  context_parallel_size: 1
  expert_model_parallel_size: 32
  expert_tensor_parallel_size: 1
training:
  micro_batch_size: 1
  global_batch_size: 8192
  seq_length: 4096
  use_distributed_optimizer: true
  sequence_parallel: true
  recompute_granularity: null
"""


def test_seed_yaml_round_trips_exactly():
    job = JobConfig.from_yaml_dict(yaml.safe_load(SEED_YAML), num_gpus=256)
    assert yaml.safe_dump(job.to_yaml_dict(), sort_keys=False) == SEED_YAML


def test_derived_sizes():
    job = JobConfig.from_yaml_dict(yaml.safe_load(SEED_YAML), num_gpus=256)
    # dp = N / (TP*PP*CP) = 256/16; edp = N / (PP*EP*ETP) = 256/256; micro-batches = 8192 / (1*16)
    assert (job.data_parallel_size, job.expert_data_parallel_size, job.num_microbatches) == (16, 1, 512)


def test_min_gpus_is_pp_times_the_larger_mesh():
    p = ParallelConfig(tensor_model_parallel_size=2, pipeline_model_parallel_size=8, context_parallel_size=2,
                       expert_model_parallel_size=32, expert_tensor_parallel_size=1)
    assert p.min_gpus() == 8 * max(2 * 2, 32 * 1) == 256


def test_split_knobs_round_trip():
    p = ParallelConfig(pipeline_model_parallel_size=4, num_layers_in_first_pipeline_stage=3,
                       num_layers_in_last_pipeline_stage=3)
    job = JobConfig(num_gpus=4, parallel=p, workload=Workload())
    again = JobConfig.from_yaml_dict(yaml.safe_load(yaml.safe_dump(job.to_yaml_dict())), num_gpus=4)
    assert again == job
    assert job.to_yaml_dict()["parallelism"]["num_layers_in_first_pipeline_stage"] == 3


def test_fp8_precision_round_trips():
    job = JobConfig(num_gpus=8, parallel=ParallelConfig(), workload=Workload(precision="fp8"))
    assert JobConfig.from_yaml_dict(job.to_yaml_dict(), num_gpus=8) == job


def test_canonical_key_distinguishes_every_knob():
    base = ParallelConfig()
    variants = [
        base,
        base.model_copy(update={"tensor_model_parallel_size": 2}),
        base.model_copy(update={"pipeline_model_parallel_size": 2}),
        base.model_copy(update={"pipeline_model_parallel_size": 2, "virtual_pipeline_model_parallel_size": 2}),
        base.model_copy(update={"context_parallel_size": 2}),
        base.model_copy(update={"expert_model_parallel_size": 2}),
        base.model_copy(update={"expert_tensor_parallel_size": 2}),
        base.model_copy(update={"micro_batch_size": 2}),
        base.model_copy(update={"sequence_parallel": True}),
        base.model_copy(update={"use_distributed_optimizer": False}),
        base.model_copy(update={"recompute_granularity": "full"}),
        base.model_copy(update={"account_for_embedding_in_pipeline_split": True}),
        base.model_copy(update={"num_layers_in_first_pipeline_stage": 3}),
        base.model_copy(update={"pipeline_model_parallel_layout": "Et|tL"}),
    ]
    keys = [v.canonical_key() for v in variants]
    assert len(set(keys)) == len(keys)
    assert ParallelConfig().canonical_key() == ParallelConfig().canonical_key()


def test_configs_are_frozen():
    with pytest.raises(ValidationError):
        ParallelConfig().tensor_model_parallel_size = 4


def test_unknown_field_is_an_error():
    with pytest.raises(ValidationError, match="tensor_parallel"):
        ParallelConfig(tensor_parallel=2)


def test_unknown_yaml_key_is_an_error():
    data = yaml.safe_load(SEED_YAML)
    data["parallelism"]["tensor_paralel_size"] = 2
    with pytest.raises(ConfigError, match="unknown config keys: tensor_paralel_size"):
        JobConfig.from_yaml_dict(data, num_gpus=256)


def test_missing_sections_is_an_error():
    with pytest.raises(ConfigError, match="needs 'parallelism:' and 'training:'"):
        JobConfig.from_yaml_dict({"parallelism": {}}, num_gpus=8)


def test_bad_recompute_value():
    with pytest.raises(ValidationError, match="recompute_granularity"):
        ParallelConfig(recompute_granularity="partial")


def test_megatron_dict_has_derived_sizes():
    d = JobConfig.from_yaml_dict(yaml.safe_load(SEED_YAML), num_gpus=256).to_megatron_dict()
    assert d["data_parallel_size"] == 16 and d["expert_data_parallel_size"] == 1
    assert d["tensor_model_parallel_size"] == 2
