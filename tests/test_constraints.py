"""Each rule, one failing and one passing config, with the message it must give."""

from __future__ import annotations

import numpy as np
import pytest

from autotune import constraints as C
from autotune.cluster import ClusterSpec
from autotune.config import JobConfig, ParallelConfig, Workload
from autotune.model_catalog import get_model


def verdict(model: str, n: int, workload: Workload | None = None, gpu: str = "h100-80gb",
            gpus_per_node: int | None = None, **knobs) -> dict[str, str]:
    job = JobConfig(num_gpus=n, parallel=ParallelConfig(**knobs), workload=workload or Workload())
    cluster = ClusterSpec.build(n, gpu, gpus_per_node)
    spec = get_model(model) if isinstance(model, str) else model
    return {v.rule: v.message for v in C.violations(spec, cluster, job)}


ODD_FFN = get_model("tiny-dense").model_copy(update={"name": "odd-ffn", "ffn_hidden_size": 100})


CASES = [
    # (rule, model, gpus, knobs, message fragment, passing knobs)
    ("world_size_dense", "llama3-70b", 64, dict(tensor_model_parallel_size=8, pipeline_model_parallel_size=3),
     "64 GPUs not divisible by TP*PP*CP = 8*3*1 = 24", dict(tensor_model_parallel_size=8, pipeline_model_parallel_size=4)),
    ("world_size_expert", "qwen3-235b", 64, dict(expert_model_parallel_size=128, sequence_parallel=False),
     "64 GPUs not divisible by PP*EP*ETP = 1*128*1 = 128", dict(expert_model_parallel_size=64)),
    ("expert_parallel_needs_moe", "llama3-8b", 8, dict(expert_model_parallel_size=2), "is dense but EP=2",
     dict()),
    ("expert_tensor_parallel_needs_moe", "llama3-8b", 8, dict(expert_tensor_parallel_size=2), "is dense but ETP=2",
     dict()),
    ("attention_heads_tp", "tiny-dense", 16, dict(tensor_model_parallel_size=16, sequence_parallel=True),
     "num_attention_heads=8 not divisible by TP=16", dict(tensor_model_parallel_size=8, sequence_parallel=True)),
    ("query_groups_tp", "qwen3-235b", 256, dict(tensor_model_parallel_size=8, expert_model_parallel_size=1,
                                                 sequence_parallel=True, context_parallel_size=1),
     None, None),  # 4 groups, TP 8: replication is allowed (see test below)
    ("ffn_tp", ODD_FFN, 8, dict(tensor_model_parallel_size=8, sequence_parallel=True),
     "MLP widths [100] not all divisible by TP=8", dict(tensor_model_parallel_size=4, sequence_parallel=True)),
    ("expert_ffn_etp", "tiny-moe", 8, dict(expert_tensor_parallel_size=32 // 8 * 8),  # 48 % 32 != 0
     "moe_ffn_hidden_size=48 not divisible by ETP=32", dict(expert_tensor_parallel_size=8)),
    ("experts_ep", "mixtral-8x7b", 16, dict(expert_model_parallel_size=16), "num_experts=8 not divisible by EP=16",
     dict(expert_model_parallel_size=8)),
    ("vpp_needs_pp", "llama3-8b", 8, dict(virtual_pipeline_model_parallel_size=2), "VPP=2 with PP=1",
     dict(virtual_pipeline_model_parallel_size=2, pipeline_model_parallel_size=2)),
    ("pipeline_layers", "deepseek-v3", 512, dict(pipeline_model_parallel_size=8, expert_model_parallel_size=64),
     "61 layers are not divisible by pipeline_model_parallel_size=8",
     dict(pipeline_model_parallel_size=8, expert_model_parallel_size=64, num_layers_in_first_pipeline_stage=5,
          num_layers_in_last_pipeline_stage=8)),
    ("sequence_parallel_needs_tp", "llama3-8b", 8, dict(sequence_parallel=True), "sequence_parallel with TP=1",
     dict(sequence_parallel=True, tensor_model_parallel_size=2)),
    ("tp_ep_needs_sp", "mixtral-8x7b", 16, dict(tensor_model_parallel_size=2, expert_model_parallel_size=8),
     "TP=2, EP=8 without sequence_parallel",
     dict(tensor_model_parallel_size=2, expert_model_parallel_size=8, sequence_parallel=True)),
    ("tp_in_nvlink_domain", "llama3-70b", 64, dict(tensor_model_parallel_size=16, sequence_parallel=True),
     "TP=16 but the NVLink domain has 8 GPUs", dict(tensor_model_parallel_size=8, sequence_parallel=True)),
]


@pytest.mark.parametrize("rule,model,n,bad,fragment,good", [c for c in CASES if c[4]], ids=[c[0] for c in CASES if c[4]])

def test_rule_fails_with_message_and_fix_passes(rule, model, n, bad, fragment, good):
    fails = verdict(model, n, **bad)
    assert rule in fails and fragment in fails[rule], fails
    assert rule not in verdict(model, n, **good)


def test_query_groups_may_be_replicated_but_not_split_unevenly():
    # Qwen3-235B has 4 KV groups: TP 8 replicates each group on 2 ranks (attention.py), allowed.
    assert "query_groups_tp" not in verdict("qwen3-235b", 256, tensor_model_parallel_size=8, sequence_parallel=True)
    # tiny-moe has 2 groups and 8 heads; TP 8 replicates, TP 3 is neither multiple nor divisor.
    assert "query_groups_tp" not in verdict("tiny-moe", 8, tensor_model_parallel_size=8, sequence_parallel=True)
    msg = verdict("nemotron4-340b", 24, gpus_per_node=24, tensor_model_parallel_size=3, sequence_parallel=True)
    assert "neither divides the other" in msg["query_groups_tp"]


def test_context_parallel_sequence_split():
    fails = verdict("llama3-8b", 8, Workload(seq_length=4100), context_parallel_size=4)
    assert "seq_length=4100 not divisible by 2*CP=8" in fails["context_parallel_seq"]
    assert "context_parallel_seq" not in verdict("llama3-8b", 8, Workload(seq_length=4096), context_parallel_size=4)


def test_global_batch_and_interleaving():
    fails = verdict("llama3-70b", 64, Workload(global_batch_size=100), tensor_model_parallel_size=8)
    assert "global_batch_size=100 not divisible by MBS*DP=1*8" in fails["global_batch_divisible"]
    # 64 GPUs, TP8 PP4 -> DP 2; GBS 12 -> 6 micro-batches, not a multiple of PP 4.
    fails = verdict("llama3-70b", 64, Workload(global_batch_size=12), tensor_model_parallel_size=8,
                    pipeline_model_parallel_size=4, virtual_pipeline_model_parallel_size=2, sequence_parallel=True)
    assert "6 micro-batches not a multiple of PP=4" in fails["interleaved_microbatches"]


def test_fp8_needs_hopper():
    fails = verdict("llama3-8b", 8, Workload(precision="fp8"), gpu="a100-80gb")
    assert "precision fp8 on a100-80gb" in fails["precision_supported"]
    assert "precision_supported" not in verdict("llama3-8b", 8, Workload(precision="fp8"))


def test_cross_node_tp_override():
    model, cluster = get_model("llama3-70b"), ClusterSpec.build(64)
    job = JobConfig(num_gpus=64, parallel=ParallelConfig(tensor_model_parallel_size=16, sequence_parallel=True),
                    workload=Workload())
    assert "tp_in_nvlink_domain" in {v.rule for v in C.violations(model, cluster, job)}
    assert "tp_in_nvlink_domain" not in {v.rule for v in C.violations(model, cluster, job, allow_cross_node_tp=True)}
    # On NVL72 a TP group of 16 spans four 4-GPU trays but stays in one NVLink domain.
    assert "tp_in_nvlink_domain" not in verdict("llama3-70b", 64, gpu="gb200", tensor_model_parallel_size=16,
                                                sequence_parallel=True)


def test_uneven_split_cannot_combine_with_account_flags():
    fails = verdict("tiny-dense", 2, pipeline_model_parallel_size=2, num_layers_in_first_pipeline_stage=3,
                    account_for_embedding_in_pipeline_split=True)
    assert "cannot be combined" in fails["pipeline_layers"]


@pytest.mark.parametrize("layers", [8, 16, 30, 61, 80])
def test_account_split_is_pruned_exactly_when_it_equals_the_even_split(layers):
    """Hand derivation of Megatron's account_for_embedding/loss split (transformer_config.py): the embedding
    and the loss count as one layer each, (layers + 2) / (PP * VPP) per virtual stage, minus one on the
    first and on the last. It duplicates the even split (layers / (PP * VPP) everywhere) only when it
    changes nothing; the redundancy rule must prune exactly those and keep every other valid one."""
    model = get_model("tiny-dense").model_copy(update={"name": f"tiny-{layers}", "num_layers": layers})
    kept = 0
    for pp in (1, 2, 3, 4, 8):
        for vpp in ((None, 2, 3) if pp > 1 else (None,)):
            chunks = pp * (vpp or 1)
            if (layers + 2) % chunks:
                continue  # the account split itself is invalid
            account = [(layers + 2) // chunks] * chunks
            account[0] -= 1
            account[-1] -= 1
            duplicate = layers % chunks == 0 and account == [layers // chunks] * chunks
            fails = verdict(model, pp, pipeline_model_parallel_size=pp, virtual_pipeline_model_parallel_size=vpp,
                            account_for_embedding_in_pipeline_split=True, account_for_loss_in_pipeline_split=True)
            assert ("pipeline_split_redundant" in fails) == duplicate, (layers, pp, vpp, fails)
            kept += not duplicate
    # 10 = 2 * 5 and 82 = 2 * 41 allow no account split beyond PP 2 here; the others must keep some.
    assert kept > 0 or layers in (8, 80)


def test_layout_is_checked():
    fails = verdict("tiny-dense", 2, pipeline_model_parallel_size=2, pipeline_model_parallel_layout="Ettt|tttL")
    assert "layout places 6 decoder layers, the model has 8" in fails["pipeline_layers"]
    assert "pipeline_layers" not in verdict("tiny-dense", 2, pipeline_model_parallel_size=2,
                                            pipeline_model_parallel_layout="Etttt|ttttL")


def test_every_rule_has_name_explanation_fix_source():
    names = [r.name for r in C.RULES]
    assert len(names) == len(set(names))
    for r in C.RULES:
        assert r.explanation.endswith(".") and r.fix and r.source


def test_scalar_and_vector_predicates_agree():
    """Random knob vectors: judging row by row with ints equals judging the arrays at once."""
    rng = np.random.default_rng(1)
    n = 400
    cols = dict(tp=rng.choice([1, 2, 4, 8, 16], n), pp=rng.choice([1, 2, 3, 4], n), vpp=rng.choice([1, 2, 3], n),
                cp=rng.choice([1, 2, 4], n), ep=rng.choice([1, 2, 4, 8], n), etp=rng.choice([1, 2], n),
                mbs=rng.choice([1, 2], n), sp=rng.choice([0, 1], n), dist_opt=rng.choice([0, 1], n),
                recompute=rng.choice([0, 1, 2], n), split=rng.choice([0, 1, 2], n),
                first=rng.choice([0, 1, 2, 3], n), last=rng.choice([0, 1, 2], n))
    cols["emb_slot"] = (cols["split"] == 1).astype(int)
    cols["loss_slot"] = cols["emb_slot"]
    vec = C.Knobs(**{k: np.asarray(v) for k, v in cols.items()})
    for name in ("tiny-moe", "tiny-dense"):
        ctx = C.context_for(get_model(name), ClusterSpec.build(16, gpus_per_node=8), Workload(seq_length=96,
                                                                                               global_batch_size=32))
        for rule in C.RULES:
            whole = np.broadcast_to(np.asarray(rule.ok(vec, ctx), dtype=bool), (n,))
            one_by_one = [bool(rule.ok(C.Knobs(**{k: int(v[i]) for k, v in cols.items()}), ctx)) for i in range(n)]
            assert whole.tolist() == one_by_one, rule.name
