"""TrialSpec / TrialResult: validation and JSON round-trips (pure, no torch)."""

from __future__ import annotations

import pytest

from trial_runner.spec import PhaseTimings, TrialResult, TrialSpec, Versions, read_result


def test_spec_round_trips_through_json(make_spec):
    spec = make_spec("tiny-moe", 2, expert_model_parallel_size=2, memory_cap_gib=3.5, fault="crash", fault_rank=1)
    assert TrialSpec.from_json(spec.to_json()) == spec


def test_spec_is_frozen_and_rejects_unknown_keys(make_spec):
    spec = make_spec()
    with pytest.raises(ValueError, match="frozen"):
        spec.seed = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="extra"):
        TrialSpec.model_validate({**spec.model_dump(), "bogus": 1})


def test_fault_rank_must_exist(make_spec):
    with pytest.raises(ValueError, match=r"fault_rank must be < num_gpus=2, got fault_rank=2"):
        make_spec(num_gpus=2, fault="hang", fault_rank=2)


def test_warmup_needs_at_least_one_step(make_spec):
    with pytest.raises(ValueError, match="warmup_iters"):
        make_spec(warmup_iters=0)


def test_result_round_trips_and_writes_atomically(tmp_path):
    result = TrialResult(
        status="completed", config_key="tp2.pp1", num_ranks=2, backend="cpu", tokens_per_s_per_gpu=10.5,
        step_time_s=0.2, step_time_min_s=0.1, step_time_max_s=0.3, peak_memory_gib=1.5,
        peak_memory_allocated_gib_per_rank=[1.0, 1.5], peak_memory_reserved_gib_per_rank=[1.2, 1.5],
        num_parameters_per_rank=[10, 10], losses=[7.0, 6.5],
        timings=PhaseTimings(launch_s=1, init_s=2, warmup_s=3, measured_s=4, total_s=11),
        versions=Versions(torch="2.13", megatron_core="0.16.1"), layer_spec="local", dtype="float32",
    )
    assert TrialResult.from_json(result.to_json()) == result
    path = tmp_path / "sub" / "result.json"
    result.write_atomic(path)
    assert read_result(path) == result
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]  # no temp file left behind


def test_read_result_is_none_for_missing_or_garbage(tmp_path):
    assert read_result(tmp_path / "absent.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    assert read_result(tmp_path / "bad.json") is None
