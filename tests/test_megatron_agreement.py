"""Our validity verdict must equal Megatron Core's own, config by config.

Megatron's verdict comes from running its real code (tests/megatron_verdict.py) in one subprocess
that pretends to be rank 0 of N via torch's fake process group. Our side uses only the rules that
Megatron enforces (Rule.megatron); autotune's policy rules (topology, de-duplication, ETP on dense
models, FP8 hardware) are tested on their own elsewhere.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from autotune import constraints
from autotune.cluster import ClusterSpec
from autotune.config import JobConfig, ParallelConfig, Workload
from autotune.model_catalog import get_model
from autotune.space import enumerate_space
from autotune.space_files import default_space

REPO = Path(__file__).resolve().parent.parent

MEGATRON_RULES = tuple(r for r in constraints.RULES if r.megatron)


def _random_parallel(rng: random.Random, moe: bool) -> dict:
    split = rng.choice(["even", "even", "account", "uneven", "layout"])
    pp = rng.choice([1, 2, 2, 3, 4])
    p = dict(
        tensor_model_parallel_size=rng.choice([1, 2, 4, 8]),
        pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=rng.choice([None, None, 2, 3]),
        context_parallel_size=rng.choice([1, 1, 2, 4]),
        expert_model_parallel_size=rng.choice([1, 2, 4, 8] if moe else [1, 1, 1, 2]),
        expert_tensor_parallel_size=rng.choice([1, 2, 4]) if moe else 1,
        micro_batch_size=rng.choice([1, 2, 4]),
        sequence_parallel=rng.random() < 0.6,
        recompute_granularity=rng.choice([None, "selective", "full"]),
    )
    if split == "account":
        p["account_for_embedding_in_pipeline_split"] = True
        p["account_for_loss_in_pipeline_split"] = rng.random() < 0.7
    elif split == "uneven":
        p["num_layers_in_first_pipeline_stage"] = rng.choice([None, 1, 2, 3])
        p["num_layers_in_last_pipeline_stage"] = rng.choice([1, 2, 3])
    elif split == "layout":
        p["pipeline_model_parallel_layout"] = rng.choice(
            ["Ett|tt|tt|tL", "Et|tt|tt|tL", "Ettt|tttL", "E|tt|tt|ttL", "Ett|(t|)*4L", "Et*3|t*3L"])
        p["virtual_pipeline_model_parallel_size"] = None
    return p


def _draws(n_random: int, n_feasible: int, seed: int = 20261121) -> list[dict]:
    rng = random.Random(seed)
    items = []
    for _ in range(n_random):
        moe = rng.random() < 0.5
        items.append(dict(
            model="tiny-moe" if moe else "tiny-dense", num_gpus=rng.choice([1, 2, 4, 8, 16]),
            parallel=_random_parallel(rng, moe),
            workload=dict(seq_length=rng.choice([64, 96, 100]), global_batch_size=rng.choice([8, 12, 16, 32])),
        ))
    # Configs our engine calls feasible, so that the valid side is well covered too.
    for name, n in (("tiny-dense", 8), ("tiny-moe", 8), ("tiny-moe", 16)):
        model, cluster = get_model(name), ClusterSpec.build(n, gpus_per_node=n)
        workload = Workload(seq_length=64, global_batch_size=32)
        result = enumerate_space(default_space(model), model, cluster, workload)
        for i in rng.sample(range(result.num_feasible), n_feasible):
            items.append(dict(model=name, num_gpus=n,
                              parallel=result.parallel_config(i).model_dump(exclude_defaults=True),
                              workload=workload.model_dump()))
    items += _near_misses(rng)
    return items


def _near_misses(rng: random.Random) -> list[dict]:
    """Feasible configs with one thing broken that only Megatron's later checks catch (the model
    build, the micro-batch calculator, the CP batch split, the interleaved schedule), so that those
    checks are exercised on invalid configs too, not only on valid ones."""
    out = []
    cases = [
        # (model, N, parallel, workload)
        ("tiny-dense", 8, dict(tensor_model_parallel_size=2), dict(seq_length=64, global_batch_size=6)),
        ("tiny-dense", 8, dict(pipeline_model_parallel_size=2), dict(seq_length=64, global_batch_size=12)),
        ("tiny-dense", 4, dict(context_parallel_size=2), dict(seq_length=66, global_batch_size=8)),
        ("tiny-dense", 4, dict(context_parallel_size=4), dict(seq_length=100, global_batch_size=8)),
        ("tiny-dense", 4, dict(context_parallel_size=2), dict(seq_length=68, global_batch_size=8)),
        ("tiny-dense", 8, dict(pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=2),
         dict(seq_length=64, global_batch_size=4)),
        ("tiny-dense", 8, dict(pipeline_model_parallel_size=4, virtual_pipeline_model_parallel_size=2),
         dict(seq_length=64, global_batch_size=6)),
        ("tiny-dense", 8, dict(pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=2),
         dict(seq_length=64, global_batch_size=8)),
        # 6 micro-batches over PP4: the last group of 2 is shorter than PP (schedules.py RuntimeError)
        ("tiny-dense", 8, dict(pipeline_model_parallel_size=4, virtual_pipeline_model_parallel_size=2),
         dict(seq_length=64, global_batch_size=12)),
        ("tiny-moe", 16, dict(expert_model_parallel_size=16), dict(seq_length=64, global_batch_size=32)),
        ("tiny-moe", 16, dict(expert_model_parallel_size=8, expert_tensor_parallel_size=2),
         dict(seq_length=64, global_batch_size=24)),
        ("tiny-moe", 8, dict(pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=3,
                             expert_model_parallel_size=4), dict(seq_length=64, global_batch_size=6)),
        ("tiny-moe", 8, dict(pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=3,
                             expert_model_parallel_size=4), dict(seq_length=64, global_batch_size=8)),
    ]
    for model, n, parallel, workload in cases:
        out.append(dict(model=model, num_gpus=n, parallel=parallel, workload=workload))
    # Multi-token prediction: Megatron's layout checks on 'm' (PipelineParallelLayerLayout.validate_layer_layout)
    # and the MTP block it builds on the last stage or on the rank a layout names.
    mtp = dict(mtp_num_layers=1)
    for model, n, gbs, layout, pp in (
        ("tiny-moe", 4, 16, None, 2), ("tiny-dense", 4, 16, None, 4),
        ("tiny-moe", 4, 16, "Et|tt|tt|tmL", 2),  # valid: with the loss
        ("tiny-dense", 3, 12, "Ett|ttt|ttt||m|L", 3),  # valid: the last chunk of a middle rank (standalone MTP)
        ("tiny-dense", 2, 8, "Etttt|tttt|m|L", 2),  # valid: the last chunk of the first rank
        ("tiny-moe", 4, 16, "Et|tt|tt|tL", 2),  # no 'm' for the model's MTP layer
        ("tiny-moe", 4, 16, "Et|tt|ttm|tL", 2),  # a decoder layer after the MTP layer
        ("tiny-dense", 4, 16, "Etttt|ttttm||L", 2),  # 'm' in the first virtual stage of its rank
    ):
        parallel = dict(pipeline_model_parallel_size=pp)
        if layout:
            parallel["pipeline_model_parallel_layout"] = layout
        out.append(dict(model=model, num_gpus=n, parallel=parallel, model_update=mtp,
                        workload=dict(seq_length=64, global_batch_size=gbs)))
    out.append(dict(model="tiny-dense", num_gpus=4, parallel=dict(pipeline_model_parallel_size=2,
                    pipeline_model_parallel_layout="Etttt|ttttmL"),
                    workload=dict(seq_length=64, global_batch_size=16)))  # 'm' in a model without MTP
    return out


def _ours(item: dict) -> tuple[bool, list[str]]:
    model = get_model(item["model"]).model_copy(update=item.get("model_update", {}))
    cluster = ClusterSpec.build(item["num_gpus"], gpus_per_node=item["num_gpus"])
    job = JobConfig(num_gpus=item["num_gpus"], parallel=ParallelConfig(**item["parallel"]),
                    workload=Workload(**item["workload"]))
    failed = [r.rule.name for r in constraints.check_all(model, cluster, job, rules=MEGATRON_RULES) if not r.passed]
    return not failed, failed


@pytest.mark.timeout(600)
def test_verdicts_equal_megatron_core(tmp_path):
    items = _draws(n_random=70, n_feasible=8)
    (tmp_path / "in.json").write_text(json.dumps(items))
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "megatron_verdict.py"), str(tmp_path / "in.json"),
         str(tmp_path / "out.json")],
        cwd=REPO, capture_output=True, text=True, timeout=540, env={**_env(), "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    megatron = json.loads((tmp_path / "out.json").read_text())
    assert len(megatron) == len(items) >= 50
    disagreements = []
    for item, theirs in zip(items, megatron):
        ok, failed = _ours(item)
        if ok != theirs["ok"]:
            disagreements.append(f"{item}: ours={'ok' if ok else failed} megatron={theirs}")
    assert not disagreements, "\n".join(disagreements)
    n_valid = sum(m["ok"] for m in megatron)
    # Both verdicts must be well represented, or the agreement proves little, and Megatron's later
    # checks (not only its config and process-group checks) must have refused some configs.
    assert n_valid >= 15 and len(items) - n_valid >= 15, (n_valid, len(items))
    late = {m["stage"] for m in megatron if not m["ok"]} - {"transformer_config", "initialize_model_parallel"}
    assert {"num_microbatches_calculator", "get_batch_on_this_cp_rank", "interleaved_schedule"} <= late, late


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
