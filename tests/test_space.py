"""Search-space files, enumeration, and agreement between the vectorised and per-config engines."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from autotune import constraints as C
from autotune.cluster import ClusterSpec
from autotune.config import Workload
from autotune.errors import ConfigError, SpecFileError
from autotune.model_catalog import get_model
from autotune.space import enumerate_space, parse_space, resolve_values, validate_space_for
from autotune.space_files import SPACES_DIR, default_space, load_space_file

SMALL = {
    "name": "small",
    "knobs": {
        "tensor_model_parallel_size": {"values": [1, 2, 4, 8]},
        "pipeline_model_parallel_size": {"values": [1, 2, 3, 4]},
        "virtual_pipeline_model_parallel_size": {"values": [1, 2, 3]},
        "context_parallel_size": {"values": [1, 2, 4]},
        "expert_model_parallel_size": {"values": [1, 2, 4, 8]},
        "expert_tensor_parallel_size": {"values": [1, 2]},
        "micro_batch_size": {"values": [1, 2, 4]},
        "sequence_parallel": {"values": [True, False]},
        "use_distributed_optimizer": {"values": [True, False]},
        "recompute_granularity": {"values": [None, "full"]},
        "pipeline_split": {"values": ["even", "account_embedding_loss", "uneven"]},
    },
}


def test_default_spaces_load():
    for path in SPACES_DIR.glob("*.yaml"):
        assert load_space_file(path).knobs
    assert default_space(get_model("qwen3-235b")).name == "moe"
    assert default_space(get_model("llama3-70b")).name == "dense"


def test_generators():
    model, cluster = get_model("qwen3-235b"), ClusterSpec.build(256)
    space = parse_space({"name": "g", "knobs": {
        "tensor_model_parallel_size": {"powers_of_two": {"min": 2, "max": 8}},
        "expert_model_parallel_size": {"divisors": {"of": "num_experts", "max": 32}},
        "pipeline_model_parallel_size": {"divisors": {"of": "num_gpus", "max": 16}},
    }})
    assert resolve_values("tensor_model_parallel_size", space.knobs["tensor_model_parallel_size"], model, cluster) == [2, 4, 8]
    assert resolve_values("expert_model_parallel_size", space.knobs["expert_model_parallel_size"], model, cluster) == [1, 2, 4, 8, 16, 32]
    assert resolve_values("pipeline_model_parallel_size", space.knobs["pipeline_model_parallel_size"], model, cluster) == [1, 2, 4, 8, 16]


@pytest.mark.parametrize("data,match", [
    ({"name": "x", "knobs": {"tensor_parallel": {"values": [1]}}}, r"knobs: unknown knob 'tensor_parallel'"),
    ({"name": "x", "knobs": {"micro_batch_size": {"values": [0]}}}, r"knob 'micro_batch_size' needs positive integers"),
    ({"name": "x", "knobs": {"sequence_parallel": {"values": ["yes"]}}}, r"knob 'sequence_parallel' needs true/false"),
    ({"name": "x", "knobs": {"recompute_granularity": {"values": ["some"]}}}, r"recompute_granularity.*null, selective or full"),
    ({"name": "x", "knobs": {"pipeline_split": {"values": ["zigzag"]}}}, r"pipeline_split.*even, account_embedding_loss, uneven"),
    ({"name": "x", "knobs": {"micro_batch_size": {"values": []}}}, r"knobs.micro_batch_size: values must not be empty"),
    ({"name": "x", "knobs": {"micro_batch_size": {"values": [1], "powers_of_two": {"max": 4}}}}, r"exactly one of"),
    ({"name": "x", "knobs": {"micro_batch_size": {"powers_of_two": {"maxx": 4}}}}, r"knobs.micro_batch_size.powers_of_two.maxx"),
    ({"name": "x", "knobs": {"sequence_parallel": {"powers_of_two": {"max": 4}}}}, r"takes explicit values only"),
    ({"name": "x", "knobs": {"context_parallel_size": {"divisors": {"of": "num_heads"}}}}, r"knobs.context_parallel_size.divisors.of"),
    ({"knobs": {}}, r"space: name: Field required"),
    ({"name": "x", "knobs": {}, "extra": 1}, r"extra: Extra inputs are not permitted"),
    ([1, 2], r"a space must be a mapping"),
])
def test_bad_space_names_the_key(data, match):
    with pytest.raises(SpecFileError, match=match):
        parse_space(data)


def test_bad_yaml_file(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("name: x\nknobs: [\n")
    with pytest.raises(SpecFileError, match="not valid YAML at line"):
        load_space_file(bad)
    with pytest.raises(SpecFileError, match="space file not found"):
        load_space_file(tmp_path / "missing.yaml")


def test_dense_space_must_allow_ep_1():
    space = parse_space({"name": "x", "knobs": {"expert_model_parallel_size": {"values": [2]}}})
    with pytest.raises(ConfigError, match="must include 1 for the dense model"):
        validate_space_for(space, get_model("llama3-8b"))


def _brute_force(space, model, cluster, workload):
    """The naive engine: every combination as one config, judged one by one."""
    names = list(space.knobs)
    from autotune.space import _DEFAULTS  # the same defaults the enumerator uses
    from autotune.pipeline import balanced_uneven_split

    values = [resolve_values(k, space.knobs[k], model, cluster) for k in names]
    pruned: dict[str, int] = {}
    feasible = set()
    total = 0
    for combo in itertools.product(*values):
        total += 1
        d = {**_DEFAULTS, **dict(zip(names, combo))}
        split = d.pop("pipeline_split")
        vpp = d.pop("virtual_pipeline_model_parallel_size")
        extra = {}
        if split == "account_embedding_loss":
            extra = dict(account_for_embedding_in_pipeline_split=True, account_for_loss_in_pipeline_split=True)
        knobs_override = {}
        if split == "uneven":
            fl = balanced_uneven_split(model.num_layers, d["pipeline_model_parallel_size"], vpp,
                                           model.mtp_num_layers)
            if fl is None:
                knobs_override = dict(first=-1, last=-1)
            else:
                extra = dict(num_layers_in_first_pipeline_stage=fl[0], num_layers_in_last_pipeline_stage=fl[1])
        from autotune.config import ParallelConfig

        p = ParallelConfig(**d, **extra, virtual_pipeline_model_parallel_size=vpp if vpp > 1 else None)
        knobs = C.Knobs.of(p)
        if split == "uneven":
            knobs = C.Knobs(**{**knobs.__dict__, "split": C.SPLIT_UNEVEN, **knobs_override})
        ctx = C.context_for(model, cluster, workload)
        failed = next((r.name for r in C.RULES if not bool(r.ok(knobs, ctx))), None)
        if failed:
            pruned[failed] = pruned.get(failed, 0) + 1
        else:
            feasible.add(p.canonical_key())
    return total, pruned, feasible


@pytest.mark.parametrize("model_name,n", [("tiny-moe", 8), ("tiny-dense", 16), ("tiny-moe", 16)])
def test_staged_enumeration_equals_brute_force(model_name, n):
    """The staged evaluator's counts and feasible set equal judging every combination one by one."""
    model, cluster = get_model(model_name), ClusterSpec.build(n, gpus_per_node=n)
    workload = Workload(seq_length=96, global_batch_size=32)
    space = parse_space(SMALL)
    result = enumerate_space(space, model, cluster, workload)
    total, pruned, feasible = _brute_force(space, model, cluster, workload)
    assert result.num_candidates == total
    assert result.pruned_by_rule == pruned
    assert {result.parallel_config(i).canonical_key() for i in range(result.num_feasible)} == feasible
    assert result.num_feasible + sum(result.pruned_by_rule.values()) == result.num_candidates


@pytest.mark.parametrize("model_name,n,gbs", [("qwen3-235b", 256, 8192), ("llama3-70b", 64, 128),
                                              ("deepseek-v3", 1024, 8192), ("mixtral-8x7b", 64, 256)])
def test_every_feasible_config_satisfies_every_rule(model_name, n, gbs):
    """Property: each feasible config passes every rule when judged alone, and its degrees multiply
    out to the GPU count on both the dense and the expert mesh."""
    model, cluster = get_model(model_name), ClusterSpec.build(n)
    workload = Workload(seq_length=4096, global_batch_size=gbs)
    result = enumerate_space(default_space(model), model, cluster, workload)
    assert result.num_feasible > 0
    rng = np.random.default_rng(0)
    for i in rng.choice(result.num_feasible, size=min(300, result.num_feasible), replace=False):
        job = result.job(int(i))
        assert C.violations(model, cluster, job) == []
        p = job.parallel
        assert p.tp * p.pp * p.cp * job.data_parallel_size == n
        assert p.pp * p.ep * p.etp * job.expert_data_parallel_size == n
        assert job.num_microbatches * p.micro_batch_size * job.data_parallel_size == gbs
        assert p.min_gpus() <= n


def test_megatron_dicts_match_job_dicts():
    model, cluster = get_model("tiny-moe"), ClusterSpec.build(8, gpus_per_node=8)
    result = enumerate_space(parse_space(SMALL), model, cluster, Workload(seq_length=96, global_batch_size=32))
    fast = result.megatron_dicts()
    assert [result.job(i).to_megatron_dict() for i in range(result.num_feasible)] == fast


def test_json_contract_shape():
    model, cluster = get_model("tiny-moe"), ClusterSpec.build(8, gpus_per_node=8)
    d = enumerate_space(parse_space(SMALL), model, cluster, Workload(seq_length=96, global_batch_size=32)).to_json_dict()
    assert set(d) >= {"num_candidates", "num_feasible", "pruned_by_rule", "feasible"}
    assert d["num_feasible"] == len(d["feasible"])
    for cfg in d["feasible"]:
        assert {"tensor_model_parallel_size", "pipeline_model_parallel_size", "virtual_pipeline_model_parallel_size",
                "context_parallel_size", "expert_model_parallel_size", "expert_tensor_parallel_size",
                "micro_batch_size", "sequence_parallel", "use_distributed_optimizer", "recompute_granularity",
                "data_parallel_size", "expert_data_parallel_size"} <= set(cfg)
