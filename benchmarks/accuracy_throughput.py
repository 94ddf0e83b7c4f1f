"""Throughput accuracy of the cost model against published Megatron results, with leave-one-out fits.

Rows (every row whose model the tool can express; ../shared/refdata, cite per row):
- nemo_perf_h100.csv: NeMo / Megatron-Bridge H100 performance summaries (tokens/s/GPU as published).
- megatron_lm_scaling.csv: Megatron-LM README weak scaling on H100 (per-GPU TFLOP/s converted to
  tokens/s/GPU with Megatron's 2024 formula: full s^2, logits counted, no recompute).
- narayanan2021_table1.csv: arXiv 2104.04473 Table 1 on A100 (TFLOP/s converted with the paper's Eq. 3,
  which counts the full-recompute forward: 96.B.s.l.h^2.(1 + s/6h + V/16lh)).
- korthikanti2022.csv: arXiv 2205.05198 Table 5 iteration times on A100, full recompute and
  "present work" (sequence parallel + selective recompute) as two rows per model.
- korthikanti2022_table4.csv: the same paper's Table 4, forward + backward time of one 22B layer per
  recompute / sequence-parallel setting: an out-of-sample per-layer check (not fitted).

The constants of autotune/data/cost_constants.json are fitted here on the mean absolute log error over all
rows (coordinate descent alternated with Nelder-Mead for the all-rows fit; each leave-one-out fit starts from
it with coordinate descent); each row's reported prediction uses constants fitted WITHOUT it.
Ranking: each row's model and GPU count get the default search space plus the published knob values,
judged under the settings its run used (`Judging` below, named in the report): the gradient dtype of
its software and, for the A100 papers, only the knobs their Megatron-LM had. The alternatives are the
configs that fit with the tool's default memory headroom (RANK_HEADROOM); the hit rate with no headroom
is reported too. Every feasible config is scored; the published config's rank is reported
(1 = predicted fastest). A published config that only our memory model rejects is still ranked, and flagged.
Also printed, out of sample: Korthikanti et al.'s per-layer times (Table 4) and Megatron-Bridge's matched
Llama3 70B SFT comparison of more PP and more TP against the tuned recipe (MATCHED_SFT).

Run:  .venv/bin/python benchmarks/accuracy_throughput.py [--write] [--no-rank] [--rank-only TEXT]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autotune import constraints as C  # noqa: E402
from autotune.cluster import ClusterSpec  # noqa: E402
from autotune.config import JobConfig, ParallelConfig, Workload  # noqa: E402
from autotune.cost import CostConstants, RunOptions, combine, predict, predict_batch  # noqa: E402
from autotune.cost_constants import CONSTANTS_PATH, load_cost_constants  # noqa: E402
from autotune.cost_terms import step_work  # noqa: E402
from autotune.flops import model_flops_per_token  # noqa: E402
from autotune.memory import MemoryOptions, peak_memory_gib_batch  # noqa: E402
from autotune.model_catalog import get_model  # noqa: E402
from autotune.model_spec import MoESpec, ModelSpec  # noqa: E402
from autotune.space import INT_KNOBS, Knob, SearchSpace, enumerate_space, resolve_values  # noqa: E402
from autotune.space_files import default_space  # noqa: E402

REFDATA = ROOT.parent / "shared" / "refdata"
if not REFDATA.is_dir():
    REFDATA = Path("/work/shared/refdata")
RESULTS = ROOT / "benchmarks" / "results"


def _gpt(name: str, layers: int, hidden: int, heads: int, vocab: int, ffn: int | None = None,
         activation: str = "gelu", groups: int | None = None, tied: bool = True, source: str = "") -> ModelSpec:
    return ModelSpec(name=name, num_layers=layers, hidden_size=hidden, ffn_hidden_size=ffn or 4 * hidden,
                     num_attention_heads=heads, num_query_groups=groups or heads, kv_channels=hidden // heads,
                     vocab_size=vocab, tie_embeddings=tied, activation=activation, normalization="LayerNorm",
                     source=source)


# Models of published rows that are not in the catalog, from their public configs (stated dimensions).
EXTRA_MODELS = {
    "GPT3-5B": _gpt("gpt3-5b", 24, 4096, 32, 51200, source="NeMo GPTConfig5B (24L, h4096, 32 heads)"),
    "GPT3-20B": _gpt("gpt3-20b", 44, 6144, 48, 51200, source="NeMo GPTConfig20B (44L, h6144, 48 heads)"),
    "LLAMA2-7B": _gpt("llama2-7b", 32, 4096, 32, 32000, 11008, "swiglu", tied=False, source="Llama 2 paper"),
    "LLAMA2-13B": _gpt("llama2-13b", 40, 5120, 40, 32000, 13824, "swiglu", tied=False, source="Llama 2 paper"),
    "LLAMA2-70B": _gpt("llama2-70b", 80, 8192, 64, 32000, 28672, "swiglu", 8, tied=False, source="Llama 2 paper"),
    # NeMo nemo/collections/llm/gpt/model/nemotron.py: NemotronConfig (squared ReLU, untied output layer, no
    # linear bias) and Nemotron3Config8B / 22B, whose num_query_groups=None is full multi-head attention in
    # Megatron's TransformerConfig; the 256k vocabulary is the Nemotron tokenizer's (Nemotron-4 report).
    "Nemotron-8B": _gpt("nemotron3-8b", 32, 4096, 32, 256000, 16384, "squared_relu", tied=False,
                        source="NeMo Nemotron3Config8B (MHA: num_query_groups=None)"),
    "Nemotron-22B": _gpt("nemotron3-22b", 40, 6144, 48, 256000, 24576, "squared_relu", tied=False,
                         source="NeMo Nemotron3Config22B (MHA: num_query_groups=None)"),
    # openai/gpt-oss-120b config.json; its alternating 128-token sliding-window attention is not modelled
    # (full causal attention is assumed, which overstates attention FLOPs by ~5% at s=4096).
    "GPT OSS 120B": ModelSpec(name="gpt-oss-120b", num_layers=36, hidden_size=2880, ffn_hidden_size=2880,
                              num_attention_heads=64, num_query_groups=8, kv_channels=64, vocab_size=201088,
                              tie_embeddings=False, add_qkv_bias=True,
                              moe=MoESpec(num_experts=128, router_topk=4, moe_ffn_hidden_size=2880),
                              source="openai/gpt-oss-120b config.json"),
}
CATALOG_NAMES = {
    "LLAMA3.1_405B": "llama3.1-405b", "Qwen3_30B_a3B": "qwen3-30b-a3b", "LLAMA3_70B": "llama3-70b",
    "LLAMA3_8B": "llama3-8b", "LLAMA3-8B": "llama3-8b", "LLAMA3-70B": "llama3-70b", "GPT3-175B": "gpt3-175b",
    "Nemotron-340B": "nemotron4-340b",
}
# Published rows we cannot express, and why.
SKIPPED_MODELS = {
    "Nemotron_3_Nano": "hybrid Mamba-Transformer MoE: Mamba layers are not in ModelSpec",
    "Qwen3_30B_a3B (tokendrop)": "token-dropping MoE (capacity factor) is not modelled",
}


@dataclass(frozen=True, kw_only=True)
class Judging:
    """The settings a row's run used, under which its search space is enumerated and ranked."""

    name: str  # shown in the report
    memory_options: MemoryOptions  # gradient dtype (and recompute modules) of the run's software
    pinned_knobs: dict[str, list]  # knob (Megatron name) -> the values the run's software offered
    why: str
    tp_comm_overlap: bool = True  # Transformer Engine userbuffers TP overlap (perf recipes, Megatron-LM README runs)
    force_balanced_routing: bool = False  # MoE rows benchmarked with moe_router_force_load_balancing
    flash_attention: bool = True  # False before flash attention (2022): scores formed in memory
    # Megatron-LM before 2023-05 (f9283c5a8a 'Add option to overlap p2p communication') waited on every pipeline
    # send (p2p_communication._communicate: req.wait(), then torch.cuda.synchronize()), and split each send over
    # the TP ranks (scatter_gather_tensors_in_pipeline, on by default since 72e4230bb5, 2021-02-16).
    overlap_p2p_comm: bool = True
    p2p_scatter_gather: bool = False


BRIDGE = Judging(
    name="Bridge/NeMo perf recipe", memory_options=MemoryOptions(grad_reduce_in_fp32=False), pinned_knobs={},
    why="Megatron-Bridge perf recipes reduce gradients in bf16 (perf_recipes/_common.py: grad_reduce_in_fp32=False); "
        "the older NeMo 24.07/25.02 rows are assumed to match. Recipe recompute settings are not in the perf "
        "table, so the published configs are ranked without recompute. The perf recipes overlap TP communication "
        "(tp_comm_overlap with userbuffers) and the MoE rows force balanced, dropless routing (the source's footnote). "
        "MoE token dispatcher per row as its release's recipe set it (`NEMO_DISPATCHERS`): Qwen3-30B-A3B EP16 "
        "(26.04, 26.04.01, 26.06) flex/hybridep (Megatron-Bridge v0.4.0 and v0.5.0 "
        "scripts/performance/configs/qwen/qwen3_workload_base_configs.py, QWEN3_30B_A3B_PRETRAIN_CONFIG_H100_FP8_CS_V1: "
        "moe_flex_dispatcher_backend='hybridep'; perf_recipes/qwen/h100/qwen3_moe.py at 067f987: "
        "moe_token_dispatcher_type='flex', moe_flex_dispatcher_backend='hybridep'); Qwen3-30B-A3B PP2 EP8 "
        "(26.02, 26.02.01) flex/deepep (v0.3.0, same file: moe_flex_dispatcher_backend='deepep'); every other MoE "
        "row alltoall (no backend set; Bridge's Qwen3 and GPT-OSS providers set moe_token_dispatcher_type='alltoall'); "
        "each row's whole space is ranked under its dispatcher",
    force_balanced_routing=True)
MEGATRON_LM = Judging(
    name="Megatron-LM defaults", memory_options=MemoryOptions(), pinned_knobs={},
    why="Megatron-LM with --bf16 accumulates and reduces gradients in fp32; the README runs overlap DP, TP and PP "
        "communication (megatron_lm_scaling.csv header)")
# arXiv 2104.04473 (2021): no distributed optimizer, sequence parallelism, selective recompute or context
# parallelism yet, and no flash attention (2022), so the s^2 attention scores, which our flash-attention
# memory model does not count, made full recompute necessary: every Table 1 run used it. The paper
# introduced the interleaved schedule, so VPP stays free.
NARAYANAN_2021 = Judging(
    name="Megatron-LM 2021 (paper era)", memory_options=MemoryOptions(),
    pinned_knobs={"use_distributed_optimizer": [False], "sequence_parallel": [False], "context_parallel_size": [1],
                  "recompute_granularity": ["full"]},
    why="fp32 main grads; no distributed optimizer, SP, CP or flash attention in 2021, so full recompute only; "
        "no TP communication overlap (Transformer Engine's userbuffers came later); attention without flash "
        "attention (s x s scores in memory); blocking pipeline sends, split over the TP ranks (scatter-gather)",
    tp_comm_overlap=False, flash_attention=False, overlap_p2p_comm=False, p2p_scatter_gather=True)


def korthikanti_2022(recompute: str, sequence_parallel: bool) -> Judging:
    """arXiv 2205.05198 compares recompute methods at fixed settings: the method is the experiment's variable."""
    return Judging(
        name=f"Megatron-LM 2022 (paper era, {recompute} recompute)", memory_options=MemoryOptions(),
        pinned_knobs={"use_distributed_optimizer": [False], "context_parallel_size": [1],
                      "sequence_parallel": [sequence_parallel], "recompute_granularity": [recompute]},
        why="fp32 main grads; no distributed optimizer or CP in 2022; the recompute method (and SP) is the "
            "quantity the paper varies, so it is held at the row's value; no TP communication overlap; attention "
            "without flash attention (s x s scores in memory); blocking pipeline sends, split over the TP ranks "
            "(scatter-gather)",
        tp_comm_overlap=False, flash_attention=False, overlap_p2p_comm=False, p2p_scatter_gather=True)


@dataclass(frozen=True, kw_only=True)
class Row:
    source: str  # csv file and row label
    model: ModelSpec
    gpu: str
    num_gpus: int
    workload: Workload
    parallel: ParallelConfig
    published_tokens_per_s_per_gpu: float
    judging: Judging
    # Knobs the source does not publish (constraints.Knobs names): the row's `parallel` fills them with an
    # assumption for the throughput fit, but in ranking any value counts as the published config.
    unpublished: tuple[str, ...] = ()
    overlap_grad_reduce: bool = True
    moe_dispatcher: str = "alltoall"  # RunOptions.moe_dispatcher of the run (NEMO_DISPATCHERS)
    note: str = ""

    @property
    def is_h100(self) -> bool:
        return self.gpu.startswith("h100")

    @property
    def run_options(self) -> RunOptions:
        return RunOptions(overlap_grad_reduce=self.overlap_grad_reduce,
                          grad_reduce_in_fp32=self.judging.memory_options.grad_reduce_in_fp32,
                          tp_comm_overlap=self.judging.tp_comm_overlap,
                          force_balanced_routing=self.judging.force_balanced_routing,
                          flash_attention=self.judging.flash_attention,
                          moe_dispatcher=self.moe_dispatcher,
                          overlap_p2p_comm=self.judging.overlap_p2p_comm,
                          p2p_scatter_gather=self.judging.p2p_scatter_gather)

    @property
    def cluster(self) -> ClusterSpec:
        return ClusterSpec.build(self.num_gpus, self.gpu)

    @property
    def job(self) -> JobConfig:
        return JobConfig(num_gpus=self.num_gpus, parallel=self.parallel, workload=self.workload)


def _csv(name: str) -> list[dict[str, str]]:
    with open(REFDATA / name) as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def _int(v: str, default: int | None = 1) -> int | None:
    v = (v or "").strip()
    return int(v) if v.isdigit() else default


def _with_split(model: ModelSpec, **kw) -> ParallelConfig:
    """The published config with the first pipeline split Megatron accepts: even, then account-for-emb/loss."""
    from autotune.pipeline import split_error
    p = ParallelConfig(**kw)
    if split_error(model.num_layers, p) is None:
        return p
    p2 = p.model_copy(update=dict(account_for_embedding_in_pipeline_split=True, account_for_loss_in_pipeline_split=True))
    if split_error(model.num_layers, p2) is None:
        return p2
    raise ValueError(f"no split for {model.name} {kw}")


# MoE token dispatcher of the recipe behind a perf-table row, keyed by (model, container); rows not listed ran
# the alltoall dispatcher. Sources: Megatron-Bridge git tags v0.3.0 (26.02), v0.4.0 (26.04), v0.5.0 (26.06),
# scripts/performance/configs/qwen/qwen3_workload_base_configs.py, QWEN3_30B_A3B_PRETRAIN_CONFIG_H100_*_V1
# (moe_flex_dispatcher_backend 'deepep' in v0.3.0, 'hybridep' from v0.4.0), and src/megatron/bridge/perf_recipes/
# qwen/h100/qwen3_moe.py at 067f987 (moe_token_dispatcher_type='flex', moe_flex_dispatcher_backend='hybridep').
NEMO_DISPATCHERS = {
    ("Qwen3_30B_a3B", "26.02"): "deepep", ("Qwen3_30B_a3B", "26.02.01"): "deepep",
    ("Qwen3_30B_a3B", "26.04"): "hybridep", ("Qwen3_30B_a3B", "26.04.01"): "hybridep",
    ("Qwen3_30B_a3B", "26.06"): "hybridep",
}


def nemo_rows() -> list[Row]:
    rows = []
    for r in _csv("nemo_perf_h100.csv"):
        name = r["model"]
        if name in SKIPPED_MODELS or r["task"] == "LoRA":
            continue
        model = get_model(CATALOG_NAMES[name]) if name in CATALOG_NAMES else EXTRA_MODELS[name]
        tp, pp, cp = _int(r["tp"]), _int(r["pp"]), _int(r["cp"])
        vp, ep = _int(r["vp"], None), _int(r["ep"])
        parallel = _with_split(
            model, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
            virtual_pipeline_model_parallel_size=vp if (vp or 1) > 1 else None, context_parallel_size=cp,
            expert_model_parallel_size=ep if model.is_moe else 1, micro_batch_size=_int(r["mbs"]),
            sequence_parallel=tp > 1, use_distributed_optimizer=True)
        prec = "fp8" if "FP8" in r["precision"] else "bf16"
        dispatcher = NEMO_DISPATCHERS.get((name, r["container"]), "alltoall")
        notes = ["Megatron-FSDP run modelled as distributed optimizer"] if _int(r["fsdp"], 0) else []
        if dispatcher != "alltoall":
            notes.append(f"flex dispatcher, {dispatcher} backend")
        rows.append(Row(
            source=f"nemo_perf_h100.csv {r['container']} {r['task']}", model=model, gpu="h100", num_gpus=int(r["num_gpus"]),
            workload=Workload(seq_length=int(r["seq_len"]), global_batch_size=int(r["gbs"]), precision=prec),
            parallel=parallel, published_tokens_per_s_per_gpu=float(r["tokens_per_sec_per_gpu"]), judging=BRIDGE,
            moe_dispatcher=dispatcher, note="; ".join(notes)))
    return rows


def megatron_lm_rows() -> list[Row]:
    rows = []
    for r in _csv("megatron_lm_scaling.csv"):
        h, a, L = int(r["hidden_size"]), int(r["attention_heads"]), int(r["num_layers"])
        model = _gpt(f"gpt-{r['model_size']}", L, h, a, int(r["vocab_size"]), source="megatron_lm_scaling.csv")
        s = int(r["seq_len"])
        per_token = model_flops_per_token(model, s, causal=False).total  # Megatron's 2024 convention
        tp = int(r["tp"])
        rows.append(Row(
            source=f"megatron_lm_scaling.csv {r['model_size']}", model=model, gpu="h100", num_gpus=int(r["num_gpus"]),
            workload=Workload(seq_length=s, global_batch_size=int(r["global_batch_size_seqs"]), precision="bf16"),
            parallel=ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=int(r["pp"]),
                                    sequence_parallel=tp > 1),
            published_tokens_per_s_per_gpu=float(r["per_gpu_tflops"]) * 1e12 / per_token, judging=MEGATRON_LM,
            unpublished=("mbs", "vpp", "split"),
            note="MBS and VPP not published: fitted at MBS=1 without interleaving; ranked as the best of any "
                 "MBS/VPP at the published TP/PP"))
    return rows


def narayanan_rows() -> list[Row]:
    rows = []
    for r in _csv("narayanan2021_table1.csv"):
        h, a, L = int(r["hidden_size"]), int(r["attention_heads"]), int(r["num_layers"])
        s, V, pp = int(r["seq_len"]), 51200, int(r["pp"])
        model = _gpt(f"gpt-{r['params_billion']}b", L, h, a, V, source="narayanan2021_table1.csv")
        eq3_per_token = 96 * L * h * h * (1 + s / (6 * h) + V / (16 * L * h))  # Eq. 3 / (B.s)
        lpvs = _int(r["layers_per_virtual_stage"], None)
        vpp = L // (pp * lpvs) if lpvs else None
        rows.append(Row(
            source=f"narayanan2021_table1.csv {r['params_billion']}B", model=model, gpu="a100-80gb",
            num_gpus=int(r["num_gpus"]),
            workload=Workload(seq_length=s, global_batch_size=int(r["global_batch_size"]), precision="bf16"),
            parallel=ParallelConfig(tensor_model_parallel_size=int(r["tp"]), pipeline_model_parallel_size=pp,
                                    virtual_pipeline_model_parallel_size=vpp if (vpp or 1) > 1 else None,
                                    micro_batch_size=int(r["micro_batch_size"]), use_distributed_optimizer=False,
                                    recompute_granularity="full"),
            published_tokens_per_s_per_gpu=float(r["per_gpu_tflops"]) * 1e12 / eq3_per_token, judging=NARAYANAN_2021,
            overlap_grad_reduce=r["ddp_impl"] == "torch", note="fp16; full recompute"))
    return rows


def korthikanti_rows() -> list[Row]:
    rows = []
    for r in _csv("korthikanti2022.csv"):
        h, a, L = int(r["hidden_size"]), int(r["attention_heads"]), int(r["num_layers"])
        model = _gpt(f"gpt-{r['model'].split()[0]}", L, h, a, int(r["vocab_size"]), source="korthikanti2022.csv")
        n, gbs, s = int(r["num_gpus"]), int(r["global_batch_size"]), int(r["seq_len"])
        vpp = _int(r["interleave_stages"], None)
        base = dict(tensor_model_parallel_size=int(r["tp"]), pipeline_model_parallel_size=int(r["pp"]),
                    virtual_pipeline_model_parallel_size=vpp, micro_batch_size=int(r["micro_batch_size"]),
                    use_distributed_optimizer=False)
        for label, col, extra in (("full recompute", "iter_time_full_recompute_s",
                                   dict(sequence_parallel=False, recompute_granularity="full")),
                                  ("SP+selective", "iter_time_present_work_s",
                                   dict(sequence_parallel=True, recompute_granularity="selective"))):
            rows.append(Row(
                source=f"korthikanti2022.csv {r['model']} {label}", model=model, gpu="a100-80gb", num_gpus=n,
                workload=Workload(seq_length=s, global_batch_size=gbs, precision="bf16"),
                parallel=ParallelConfig(**base, **extra),
                published_tokens_per_s_per_gpu=gbs * s / (float(r[col]) * n), note="no data parallelism",
                judging=korthikanti_2022(extra["recompute_granularity"], extra["sequence_parallel"])))
    return rows


def all_rows() -> list[Row]:
    return nemo_rows() + megatron_lm_rows() + narayanan_rows() + korthikanti_rows()


# --- per-layer check: Korthikanti et al. 2022 Table 4 ---------------------------------------------

# korthikanti2022_table4.csv: forward + backward time of ONE layer of their 22B model (Table 3: h 6144,
# 64 heads, TP 8, s 2048, micro-batch 4) on an A100, per experiment. Our per-layer time is the difference
# between the same config with 2 and with 1 layer (compute, recompute and TP collectives; the logits and
# the optimizer cancel), under the paper's software (no flash attention, no TP comm overlap).
LAYER_EXPERIMENTS = {  # Table 4 experiment -> (sequence_parallel, recompute_granularity)
    "Baseline no recompute": (False, None), "Sequence Parallelism": (True, None),
    "Baseline with (full) recompute": (False, "full"), "Selective Recompute": (False, "selective"),
    "Selective + Sequence": (True, "selective"),
}


class LayerTimes:
    """The Table 4 experiments, their physical work precomputed once: predicting with new constants is cheap."""

    def __init__(self):
        spec = next(r for r in _csv("korthikanti2022.csv") if r["model"] == "22B")
        h, a, s = int(spec["hidden_size"]), int(spec["attention_heads"]), int(spec["seq_len"])
        tp, mbs, vocab = int(spec["tp"]), int(spec["micro_batch_size"]), int(spec["vocab_size"])
        cluster, workload = ClusterSpec.build(tp, "a100-80gb"), Workload(seq_length=s, global_batch_size=mbs)
        self.experiments, self.published_ms, self._cases = [], [], []
        for r in _csv("korthikanti2022_table4.csv"):
            sp, rc = LAYER_EXPERIMENTS[r["experiment"]]
            judging = korthikanti_2022(rc or "none", sp)
            run = RunOptions(grad_reduce_in_fp32=True, tp_comm_overlap=judging.tp_comm_overlap,
                             flash_attention=judging.flash_attention)
            p = ParallelConfig(tensor_model_parallel_size=tp, micro_batch_size=mbs, sequence_parallel=sp,
                               recompute_granularity=rc, use_distributed_optimizer=False)
            knobs = C.Knobs(**{k: np.asarray([v]) for k, v in vars(C.Knobs.of(p)).items()})
            works = []
            for layers in (2, 1):
                model = _gpt("gpt-22B-layer", layers, h, a, vocab)
                works.append((model, step_work(model, cluster, workload, knobs, grad_reduce_in_fp32=True)))
            self.experiments.append(r["experiment"])
            self.published_ms.append(float(r["combined_ms"]))
            self._cases.append((works, cluster, workload, run))

    def predict_ms(self, c: CostConstants) -> np.ndarray:
        out = []
        for works, cluster, workload, run in self._cases:
            totals = []
            for model, work in works:
                parts = combine(work, model, cluster, workload, c, run)
                totals.append(sum(float(parts[k][0]) for k in ("compute", "recompute", "tp_comm")))
            out.append(1e3 * (totals[0] - totals[1]))
        return np.asarray(out)


def layer_check_lines(layers: LayerTimes, c: CostConstants) -> list[str]:
    lines = ["| Table 4 experiment | published fwd+bwd ms | predicted ms | error |", "|---|---:|---:|---:|"]
    for name, pub, pred in zip(layers.experiments, layers.published_ms, layers.predict_ms(c)):
        lines.append(f"| {name} | {pub:.1f} | {pred:.1f} | {100 * (pred / pub - 1):+.1f}% |")
    return lines


# --- matched alternatives: Megatron-Bridge's Llama3 70B SFT comparison ------------------------------

# Megatron-Bridge @ 067f987 skills/nemo-mbridge-perf-memory-tuning/SKILL.md, "Measured Results" (the same
# runs are rows m25-m27 of ../shared/refdata/memory_points.csv): the 26.06 SFT recipe (Llama3 70B, 32 H100,
# FP8 current scaling, s 4096, MBS 1, GBS 32, selective core_attn recompute) re-run with more PP or more TP
# and nothing else changed. TFLOP/s/GPU as published; the recipe's 709.93 matches the 26.06 SFT row of
# nemo_perf_h100.csv (same config, 710 TFLOP/s, 1638 tokens/s/GPU). Speeds are compared as ratios to the recipe's, which
# needs no FLOP convention. Not used in the fit: the one published measurement of alternatives to a tuned
# recipe with everything else held fixed.
MATCHED_SFT_SOURCE = "nemo_perf_h100.csv 26.06 SFT"
MATCHED_SFT = (("recipe TP4 PP4 VPP5 DP2", {}, 709.93),
               ("more PP: TP4 PP8 VPP5 DP1", {"pipeline_model_parallel_size": 8}, 668.0),
               ("more TP: TP8 PP4 VPP5 DP1", {"tensor_model_parallel_size": 8}, 508.7))


MATCHED_NOTE = (
    "More PP costs what we predict: PP8 halves DP (twice the micro-batches per rank) and puts 10 layers plus the "
    "128k-vocabulary output layer on the last stage. More TP costs NVIDIA about twice what we predict. In our "
    "model TP8 pays for GEMMs on 8-way shards and for TP collectives that Transformer Engine's userbuffers "
    "overlap (tp_comm_overlap) hides almost entirely; NVIDIA puts the loss down to the doubled NVLink traffic. "
    "So with TP comm overlap we under-penalise TP8 for dense models of this size, and `autotune space` can rank "
    "TP8 configs too high; the real trials decide. The fitted rows cannot settle it: their H100 TP8 configs are "
    "Llama 3.1 405B and Nemotron-4 340B (hidden size 16k-18k: half the TP bytes per GEMM FLOP of a 70B) and "
    "Megatron-LM's scaling runs, whose micro-batch sizes are not published.")


def matched_check_lines(rows: list[Row], c: CostConstants) -> list[str]:
    row = next(r for r in rows if r.source == MATCHED_SFT_SOURCE)
    speeds = []
    for _, change, _ in MATCHED_SFT:
        parallel = row.parallel.model_copy(update={**change, "recompute_granularity": "selective"})
        job = row.job.model_copy(update={"parallel": parallel})
        speeds.append(predict(row.model, row.cluster, job, c, row.run_options).tokens_per_s_per_gpu)
    lines = ["| config | published TFLOP/s/GPU | published vs recipe | predicted tok/s/GPU | predicted vs recipe |",
             "|---|---:|---:|---:|---:|"]
    for (name, _, tflops), speed in zip(MATCHED_SFT, speeds):
        lines.append(f"| {name} | {tflops:.1f} | {100 * (tflops / MATCHED_SFT[0][2] - 1):+.1f}% | {speed:.0f} "
                     f"| {100 * (speed / speeds[0] - 1):+.1f}% |")
    return lines


# --- fitting -------------------------------------------------------------------------------------

# Held at their value in START, not fitted: every published MoE row forced balanced routing, so no row
# carries information about expert load imbalance. 0.2 is an assumed prior for real (unforced) routing.
FIXED = {"expert_load_cv"}
NAMES = [f.name for f in CostConstants.__dataclass_fields__.values() if f.name not in FIXED]
# Physical bounds. Flash attention: FlashAttention-3 (Shah et al. 2024, arXiv 2407.08608) reaches ~740 of
# H100's 989 bf16 TFLOP/s in the forward pass and less in the backward, so 0.75 of peak is its ceiling.
UPPER = {"gemm_efficiency": 1.0, "fp8_gemm_efficiency": 1.0, "attention_efficiency": 0.75,
         "network_efficiency": 1.0}
# The EP exchange cannot beat the link: its time is at least the nominal bytes at the achieved bandwidth
# (no published row overlaps it with compute; the Qwen3 FP8 recipe sets moe_a2a_overlap=False).
LOWER: dict[str, float] = {"moe_dispatch_overhead": 1.0}
START = CostConstants(gemm_efficiency=0.8, fp8_gemm_efficiency=0.7, gemm_memory_weight=1.0, attention_efficiency=0.5,
                      layer_overhead_s=3e-4, moe_token_passes=5.0, moe_dispatch_overhead=1.0, network_efficiency=1.0,
                      expert_load_cv=0.2)


class Fitter:
    """Precomputes each row's physical work once; predicting with new constants is then cheap."""

    def __init__(self, rows: list[Row]):
        self.rows = rows
        self.work = []
        for r in rows:
            knobs = C.Knobs(**{k: np.asarray([v]) for k, v in vars(C.Knobs.of(r.parallel)).items()})
            self.work.append(step_work(r.model, r.cluster, r.workload, knobs,
                                       grad_reduce_in_fp32=r.judging.memory_options.grad_reduce_in_fp32,
                                       moe_dispatcher=r.moe_dispatcher))
        self.target = np.log([r.published_tokens_per_s_per_gpu for r in rows])

    def predict(self, c: CostConstants, idx) -> np.ndarray:
        out = []
        for i in idx:
            r = self.rows[i]
            step = combine(self.work[i], r.model, r.cluster, r.workload, c, r.run_options)["step_time_s"][0]
            out.append(r.workload.global_batch_size * r.workload.seq_length / (step * r.num_gpus))
        return np.asarray(out)

    def loss(self, c: CostConstants, idx) -> float:
        # Mean absolute log error: tracks MAPE and does not let the two Qwen3 regression rows dominate.
        return float(np.mean(np.abs(np.log(self.predict(c, idx)) - self.target[idx])))

    def fit(self, idx, start: CostConstants = START, max_evals: int = 4000) -> CostConstants:
        """Coordinate descent in log space: each constant keeps its own multiplicative step, which grows
        (x2) while moves succeed and halves when neither direction helps, down to ~x1.005."""
        cur = start.to_dict()
        best = self.loss(CostConstants(**cur), idx)
        steps = {name: math.log(2.0) for name in NAMES}
        evals = 0
        while max(steps.values()) > 0.005 and evals < max_evals:
            for name in NAMES:
                if steps[name] <= 0.005:
                    continue
                moved = False
                for sign in (1, -1):
                    trial = dict(cur)
                    trial[name] = min(UPPER.get(name, 1e3), max(LOWER.get(name, 1e-9),
                                                               cur[name] * math.exp(sign * steps[name])))
                    if trial[name] == cur[name]:
                        continue
                    val = self.loss(CostConstants(**trial), idx)
                    evals += 1
                    if val < best - 1e-12:
                        cur, best, moved = trial, val, True
                        break
                steps[name] = min(steps[name] * 2, math.log(4.0)) if moved else steps[name] / 2
        return CostConstants(**cur)

    def fit_global(self, idx, start: CostConstants = START, rounds: int = 3) -> CostConstants:
        """Coordinate descent alternated with Nelder-Mead in log space. Constants that trade off against
        each other (the two GEMM terms, or the EP exchange against the MoE token work) lie along a valley that
        coordinate descent, one constant at a time, leaves early; the simplex moves along it."""
        c = self.fit(idx, start)
        for _ in range(rounds):
            x = self._nelder_mead(lambda v: self.loss(self._from_log(c, v), idx),
                                  np.log([c.to_dict()[n] for n in NAMES]))
            c = self.fit(idx, self._from_log(c, x))
        return c

    @staticmethod
    def _from_log(base: CostConstants, v) -> CostConstants:
        d = base.to_dict()
        for name, x in zip(NAMES, v):
            d[name] = min(UPPER.get(name, 1e3), max(LOWER.get(name, 1e-9), math.exp(float(x))))
        return CostConstants(**d)

    @staticmethod
    def _nelder_mead(fun, x0: np.ndarray, step: float = 0.3, max_iter: int = 3000, tol: float = 1e-7) -> np.ndarray:
        """Standard Nelder-Mead (reflect 1, expand 2, contract 0.5, shrink 0.5) from a simplex of `step` moves."""
        pts = [x0] + [x0 + step * e for e in np.eye(len(x0))]
        vals = [fun(p) for p in pts]
        for _ in range(max_iter):
            order = np.argsort(vals)
            pts, vals = [pts[i] for i in order], [vals[i] for i in order]
            if vals[-1] - vals[0] < tol:
                break
            centre = np.mean(pts[:-1], axis=0)
            reflected = centre + (centre - pts[-1])
            f_r = fun(reflected)
            if f_r < vals[0]:
                expanded = centre + 2 * (centre - pts[-1])
                f_e = fun(expanded)
                pts[-1], vals[-1] = (expanded, f_e) if f_e < f_r else (reflected, f_r)
            elif f_r < vals[-2]:
                pts[-1], vals[-1] = reflected, f_r
            else:
                contracted = centre + 0.5 * (pts[-1] - centre)
                f_c = fun(contracted)
                if f_c < vals[-1]:
                    pts[-1], vals[-1] = contracted, f_c
                else:
                    pts = [pts[0]] + [pts[0] + 0.5 * (p - pts[0]) for p in pts[1:]]
                    vals = [vals[0]] + [fun(p) for p in pts[1:]]
        return pts[int(np.argmin(vals))]


# --- ranking -------------------------------------------------------------------------------------

def _space_with(row: Row) -> SearchSpace:
    space = default_space(row.model)
    p = row.parallel
    published = {
        "tensor_model_parallel_size": p.tp, "pipeline_model_parallel_size": p.pp,
        "virtual_pipeline_model_parallel_size": p.vpp, "context_parallel_size": p.cp,
        "expert_model_parallel_size": p.ep, "expert_tensor_parallel_size": p.etp,
        "micro_batch_size": p.micro_batch_size,
    }
    knobs = dict(space.knobs)
    cluster = row.cluster
    for key, value in published.items():
        if key in knobs:
            vals = resolve_values(key, knobs[key], row.model, cluster)
        else:
            vals = [1]
        if value not in vals:
            vals = sorted(set(vals) | {value})
        knobs[key] = Knob(values=vals)
    for key, vals in row.judging.pinned_knobs.items():
        knobs[key] = Knob(values=list(vals))
    return SearchSpace(name=space.name + "+published", knobs=knobs)


# The alternatives are the configs `autotune space` would offer: those that fit with the tool's default
# memory headroom (constraints.DEFAULT_MEMORY_HEADROOM). A config our memory model puts within 10% of the
# GPU's capacity is not one a recipe could count on (allocator fragmentation, the memory model's own error),
# and NVIDIA's recipes confirm it: Megatron-Bridge runs Llama3 70B on H100 as TP4 PP4 CP2 in BF16 but needs
# PP8 in FP8. The published config itself is ranked whatever our memory model says (it ran). The hit rate
# with no headroom (alternatives up to the GPU's full capacity) is reported too.
RANK_HEADROOM = C.DEFAULT_MEMORY_HEADROOM
FULL_CAPACITY = 0.0


def rank_row(row: Row, c: CostConstants, headroom: float = RANK_HEADROOM) -> dict:
    cluster = row.cluster
    opts = row.judging.memory_options
    res = enumerate_space(_space_with(row), row.model, cluster, row.workload, memory_headroom=headroom,
                          memory_options=opts)
    k = res.knobs
    pub = C.Knobs.of(row.parallel)
    match = np.ones(res.num_feasible, dtype=bool)
    exact = np.ones(res.num_feasible, dtype=bool)  # the assumed values of unpublished knobs too
    for name in ("tp", "pp", "vpp", "cp", "ep", "etp", "mbs", "sp", "dist_opt", "recompute", "split"):
        same = getattr(k, name) == getattr(pub, name)
        exact &= same
        if name not in row.unpublished:
            match &= same
    pub_mem = float(peak_memory_gib_batch(row.model, cluster, row.workload, pub, options=opts)[0])
    pub_fits = bool(match.any())
    if not pub_fits:
        # Rank it anyway when our memory model is the only rule it breaks (it ran, so the model is wrong).
        broken = [v.rule for v in C.violations(row.model, cluster, row.job, memory_headroom=headroom,
                                               memory_options=opts)]
        if broken != ["memory"]:
            return {"rank": None, "num_ranked": 0, "why": f"published config breaks {', '.join(broken)}"}
        k = C.Knobs(**{f: np.append(getattr(k, f), getattr(pub, f)) for f in vars(k)})
        match = np.zeros(len(k.tp), dtype=bool)
        match[-1] = True
        exact = match
    pred = predict_batch(row.model, cluster, row.workload, k, c, row.run_options)
    tps = pred["tokens_per_s_per_gpu"]
    i_pub = int(np.flatnonzero(match)[np.argmax(tps[match])])  # several only when knobs are unpublished
    rank = 1 + int(np.sum(tps > tps[i_pub]))
    best = int(np.argmax(tps))

    def name(i: int) -> str:
        return res.parallel_config(i).short_name() if i < res.num_feasible else row.parallel.short_name()
    i_exact = int(np.flatnonzero(exact)[0]) if exact.any() else None
    strict_hit = i_exact is not None and (1 + int(np.sum(tps > tps[i_exact])) <= 5 or tps[best] / tps[i_exact] - 1 <= 0.03)
    return {"rank": rank, "num_ranked": len(tps), "pub_pred": float(tps[i_pub]), "best": name(best),
            "pub_cfg": name(i_pub), "strict_hit": strict_hit,
            "best_pred": float(tps[best]), "gap": float(tps[best] / tps[i_pub] - 1), "pub_fits": pub_fits,
            "pub_mem_gib": pub_mem}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="write the all-rows fit to autotune/data/cost_constants.json")
    ap.add_argument("--no-rank", action="store_true", help="skip the (slower) ranking over each row's space")
    ap.add_argument("--rank-only", metavar="TEXT", help="rank only rows whose source or model contains TEXT "
                    "(for iterating; the report file is not written)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = all_rows()
    fitter = Fitter(rows)
    everything = list(range(len(rows)))
    full = fitter.fit_global(everything)  # each leave-one-out fit starts here (coordinate descent)
    loo = []
    loo_constants = []
    for i in everything:
        rest = [j for j in everything if j != i]
        c_i = fitter.fit(rest, start=full)
        loo_constants.append(c_i)
        loo.append(float(fitter.predict(c_i, [i])[0]))
    in_sample = fitter.predict(full, everything)
    pub = np.exp(fitter.target)
    err = np.asarray(loo) / pub - 1
    h100 = np.asarray([r.is_h100 for r in rows])
    summary = {
        "rows": len(rows), "h100_rows": int(h100.sum()), "a100_rows": int((~h100).sum()),
        "loo_mape_h100": float(np.mean(np.abs(err[h100]))), "loo_mape_a100": float(np.mean(np.abs(err[~h100]))),
        "in_sample_mape_h100": float(np.mean(np.abs(in_sample[h100] / pub[h100] - 1))),
        "in_sample_mape_a100": float(np.mean(np.abs(in_sample[~h100] / pub[~h100] - 1))),
    }
    def wanted(r: Row) -> bool:
        return not args.no_rank and (args.rank_only is None or args.rank_only in r.source or args.rank_only in r.model.name)
    ranks = [rank_row(r, loo_constants[i]) if wanted(r) else None for i, r in enumerate(rows)]
    lines = _table(rows, loo, err, ranks)

    def hits(rks: list) -> tuple[int, int, int]:
        tried = [rk for rk in rks if rk is not None]
        ok = sum(1 for rk in tried if rk["rank"] is not None and (rk["rank"] <= 5 or rk["gap"] <= 0.03))
        return ok, sum(1 for rk in tried if rk["rank"] is not None and rk["strict_hit"]), len(tried)
    ok, strict, tried = hits(ranks)
    if tried:
        summary["rank_hit_rate"] = ok / tried
        summary["rank_hits"] = f"{ok}/{tried}"
        summary["rank_hits_strict"] = f"{strict}/{tried}"
        ok0, strict0, _ = hits([rank_row(r, loo_constants[i], FULL_CAPACITY) if wanted(r) else None
                                for i, r in enumerate(rows)])
        summary["rank_hits_full_capacity"] = f"{ok0}/{tried}"
        summary["rank_hits_strict_full_capacity"] = f"{strict0}/{tried}"
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    report = _report(summary, full, lines, rows, ranks, layer_check_lines(LayerTimes(), full),
                     matched_check_lines(rows, full))
    print(report)
    if args.rank_only is None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "throughput_h100_a100.md").write_text(report)
    if args.write:
        CONSTANTS_PATH.write_text(json.dumps({
            "_comment": ("Fitted by benchmarks/accuracy_throughput.py --write: coordinate descent and Nelder-Mead on the "
                         "mean absolute log error of tokens/s/GPU over every published row it lists (nemo_perf_h100.csv, "
                         "megatron_lm_scaling.csv, narayanan2021_table1.csv, korthikanti2022.csv in shared/refdata). "
                         "Same constants for every model and GPU. expert_load_cv is not fitted but an assumed prior "
                         "(every published MoE row forced balanced routing, so no row measures imbalance); "
                         "moe_dispatch_overhead is bounded below by 1 (the EP exchange is not overlapped). The "
                         "rank_hits entries are a held-out check (each row ranked with its leave-one-out constants), "
                         "never a fitting target."),
            "fixed": sorted(FIXED),
            "fit": {k: v for k, v in summary.items() if k != "seconds"},
            "constants": {k: float(f"{v:.4g}") for k, v in full.to_dict().items()},
        }, indent=2) + "\n")
        load_cost_constants.cache_clear()


def _table(rows, loo, err, ranks) -> list[str]:
    head = ("| source | model | GPUs | GPU | published config | published tok/s/GPU | LOO predicted | error "
            "| judged as | rank of published | our top-1 (predicted tok/s/GPU) | note |")
    lines = [head, "|" + "---|" * 12]
    for r, p, e, rk in zip(rows, loo, err, ranks):
        if rk is None:
            rank, top = "-", "-"
        elif rk["rank"] is None:
            rank, top = "n/a", rk["why"]
        else:
            rank = f"{rk['rank']} / {rk['num_ranked']}" + (f" (as {rk['pub_cfg']})" if r.unpublished else "") + (
                "" if rk["pub_fits"] else
                                                           f" (we predict {rk['pub_mem_gib']:.0f} GiB: over the limit)")
            top = f"{rk['best']} ({rk['best_pred']:.0f}, +{100 * rk['gap']:.1f}%)"
        lines.append(f"| {r.source} | {r.model.name} | {r.num_gpus} | {r.gpu} | {r.parallel.short_name()} "
                     f"{r.workload.precision} gbs{r.workload.global_batch_size} s{r.workload.seq_length} | "
                     f"{r.published_tokens_per_s_per_gpu:.0f} | {p:.0f} | {100 * e:+.1f}% | {r.judging.name} | {rank} | {top} "
                     f"| {r.note} |")
    return lines


def _judging_lines(rows: list[Row]) -> str:
    seen = {r.judging.name: r.judging for r in rows}
    out = []
    for j in seen.values():
        pinned = ", ".join(f"{k}={v}" for k, v in j.pinned_knobs.items()) or "none"
        out.append(f"- **{j.name}**: grad_reduce_in_fp32={j.memory_options.grad_reduce_in_fp32}, memory headroom "
                   f"{RANK_HEADROOM:g} for the alternatives (the published config is ranked whatever our memory "
                   f"model says), TP comm overlap {j.tp_comm_overlap}, forced balanced MoE routing "
                   f"{j.force_balanced_routing}, pinned knobs: {pinned}. {j.why}.")
    return "\n".join(out)


# Why rows rank low (analysis of this model's misses; printed for each model that has a miss).
LOW_RANK_NOTES = {
    "qwen3-30b-a3b": (
        "Judged under its run's HybridEP dispatcher, the recipe's EP16 (two nodes) is predicted within 2% of its "
        "published speed; we put EP8 inside one node (TP2 PP1 EP8 MBS2) a few percent ahead: even deduplicated, "
        "every token crosses the 50 GB/s NIC about once per layer and direction, against 450 GB/s NVLink for EP8, "
        "but the MoE token work (permutation, expert activation: moe_token_passes) weighs more than the exchange. "
        "NVIDIA's own releases say the two are close: on the same 16 GPUs the 26.02.01 recipe (PP2 VPP12 EP8, "
        "DeepEP) ran at 9058 tok/s, the later EP16 HybridEP recipe at 8826-8960. "
        "EP8 at PP1 needs about 70 GiB in our memory model; NVIDIA used PP2 for EP8, so memory may be why. "
        "(The 26.02 row at 5113 tok/s is a software regression, the same config ran at 9058 in 26.02.01, and the "
        "25.11 row at 5275 likely another: both are predicted about 1.8x too fast and dominate the H100 MAPE.)"),
    "llama3-70b": (
        "Borderline: our pick (TP4 PP2 VPP8 CP2) is predicted about 3% faster than the recipe's TP4 PP8 VPP5 (and "
        "the 24.07 TP4 PP4 VPP5 CP2), which we underpredict by 4-7%; the GBS 256 rows fall just inside 3%. The gap "
        "is the last pipeline stage, which also runs the 128k-vocabulary output layer and loss (more than a "
        "layer's worth): that weighs more on 10-layer stages than on 40-layer ones. "
        "NVIDIA saw the same imbalance after these runs: Megatron-Bridge commit 56ae11d (2026-08-07, 'llama3 70B "
        "H100 FP8-CS: set an explicit pipeline layout') moves one layer off the last stage "
        "('Et*2|(t*2|)*34,t*3|(t*2|)*3,tL', perf_recipes/llama/h100/llama3.py), which we predict 3% faster. "
        "Megatron-Bridge uses TP4 PP4 VPP5 CP2 for this model in BF16 but PP8 in FP8 (llama3_workload_base_configs.py), "
        "which points at FP8 memory, which our memory model does not yet count in full. The published data lean "
        "against us: the 24.07 CP2 recipe (TP4 PP4 VPP5 CP2) ran at 1524 tok/s, below the later PP8 runs, so our "
        "CP2 cost is likely optimistic (the ring attention's per-step overheads beyond K/V traffic and output "
        "rescaling are not modelled)."),
    "gpt-oss-120b": (
        "Our pick is the recipe's own TP1 PP4 EP8 with interleaving (VPP2), an uneven split that offloads the stage "
        "running the 201k-vocabulary output layer, and micro-batch 4 with full recompute, predicted about 11% "
        "faster. Most of that gain is in the routed-expert GEMMs: our roofline (gemm_memory_weight) makes them "
        "memory-bound at micro-batch 1 (1,024 tokens per expert; 2.3x their math time) and far less at micro-batch 4 "
        "(1.2x); the fixed per-layer time, paid per micro-batch, adds the rest. NVIDIA's own data lean against the "
        "larger micro-batch: the 25.11 recipe at MBS 4 ran at 5630 "
        "tok/s, the later MBS 1 recipes at 5810-5993 (other software, though), and we predict MBS 4 faster. The "
        "recipe sets no VPP (perf_recipes/gpt_oss/common.py: virtual_pipeline_model_parallel_size=None) and "
        "recomputes layernorm and MoE activations to fit in 80 GB, so memory may also decide; the published MBS 1 "
        "configs themselves are predicted within 2%."),
    "llama2-7b": (
        "We prefer micro-batch 2 (about 7% faster): the fixed per-layer time is paid per micro-batch, so doubling "
        "it halves that share. The recipe ran MBS 1; no measurement of MBS 2 is published."),
    "llama2-70b": (
        "We prefer the recipe's TP4 PP4 VPP20 at micro-batch 2 (about 7% faster), for the same reason as "
        "llama2-7b: the fixed per-layer time is paid per micro-batch. Unverified."),
    "gpt3-20b": (
        "PP1, DP32 and 4 micro-batches per step: the distributed optimizer moves 10B parameters' gradients and "
        "weights each step, hidden only behind the first forward / last backward; the prediction rests on how "
        "much of that crosses the NICs (hierarchically once per node, _dp_collective_s)."),
    "gpt3-175b": (
        "At GBS 256 on 128 GPUs we prefer TP8 PP4 VPP8 MBS4 with selective recompute (fewer stages, larger "
        "micro-batches), near our error; the same recipe at GBS 2048 on 512 GPUs ranks higher."),
    "nemotron3-22b": (
        "The recipe (NeMo 24.07) runs PP4 VPP10 with an even split, so the last of the 4 stages also holds the "
        "untied 256k-vocabulary output layer (bf16 under FP8) and its loss: in our model that weighs about as much "
        "as 4 of the stage's 10 decoder layers, and the whole pipeline moves at that stage's pace (without the "
        "output layer we would predict the recipe about 40% faster). We prefer PP1 (TP4, micro-batch 4), where "
        "every GPU runs its share of the output layer, and our memory model fits it. The recipe ran about 11% below "
        "even our prediction of it, so we do not underrate the recipe; no PP1 measurement is published to check "
        "the alternative. Dimensions from NeMo's Nemotron3Config22B (full multi-head attention)."),
    "llama2-13b": "Borderline: our best config is predicted only a few percent faster (see the table).",
    "gpt-119B": (
        "Borderline: MBS and VPP are not published; the best MBS/VPP at the published TP8 PP4 is predicted a few "
        "percent behind our best (TP8 PP16 VPP2), within our error."),
    "A100 papers": (
        "Narayanan et al. 2021 and Korthikanti et al. 2022 set TP to the node size (8) first and used PP beyond "
        "it (Narayanan Sec. 3: tensor parallelism up to the server size). Without sequence parallelism TP8's "
        "forward all-reduces are not overlapped (2021-22 Megatron-LM), and with one data-parallel member per node "
        "each GPU's gradient all-reduce crosses its NIC in full, where TP2-4 split it over the node's NICs "
        "(hierarchically); so we predict TP2-4 with more pipeline stages about 5-15% faster for the 18B-175B rows. "
        "The per-layer check above now agrees within 3% (sequence parallelism saves 3% published, about 3% predicted), "
        "so the remaining gap is not the per-layer work that TP8 repeats. No measurement of the alternatives is "
        "published; for the 145B-175B rows the gap is near our error, for the 18B-39B rows our claim is "
        "unverified."),
    "gpt-32B": (
        "Borderline: the published TP8 PP1 (at any MBS) ranks near our top 5, a few percent behind our TP4 PP1 "
        "MBS2. We underpredict this row by about 20%, the largest H100 error outside the Qwen3 regression rows: "
        "a fifth of its step is the exposed gradient all-reduce in our model (DP 48 with one member per node, 4 "
        "micro-batches to hide it behind), and the run was faster than that allows."),
}


def _low_rank_lines(rows: list[Row], ranks: list) -> str:
    missed: dict[str, int] = {}
    for r, rk in zip(rows, ranks):
        if rk is None or rk["rank"] is None or rk["rank"] <= 5 or rk["gap"] <= 0.03:
            continue
        key = r.model.name if r.is_h100 else "A100 papers"
        missed[key] = missed.get(key, 0) + 1
    return "\n".join(f"- **{key}** ({n} row{'s' if n > 1 else ''}): {LOW_RANK_NOTES.get(key, 'not analysed yet')}"
                     for key, n in missed.items())


def _report(summary: dict, full: CostConstants, lines: list[str], rows: list[Row], ranks: list,
            layer_lines: list[str], matched_lines: list[str]) -> str:
    consts = "\n".join(f"- `{k}` = {v:.4g}" + (" (assumed prior, not fitted)" if k in FIXED else "")
                       for k, v in full.to_dict().items())
    return (
        "# Cost model throughput accuracy (generated by benchmarks/accuracy_throughput.py)\n\n"
        f"Rows: {summary['rows']} ({summary['h100_rows']} H100, {summary['a100_rows']} A100). "
        f"Leave-one-out MAPE: **H100 {100 * summary['loo_mape_h100']:.1f}%**, "
        f"**A100 {100 * summary['loo_mape_a100']:.1f}%** (in-sample: H100 {100 * summary['in_sample_mape_h100']:.1f}%, "
        f"A100 {100 * summary['in_sample_mape_a100']:.1f}%).\n"
        + (f"Published config in our top 5 or within 3% of our predicted best: **{summary['rank_hits']}** rows "
           f"({summary['rank_hits_strict']} if unpublished knobs are held at the values assumed for the fit), "
           f"alternatives judged with the tool's default memory headroom {RANK_HEADROOM:g}; with no headroom "
           f"(alternatives up to the GPU's full capacity): {summary['rank_hits_full_capacity']} "
           f"({summary['rank_hits_strict_full_capacity']} strict).\n"
           if "rank_hits" in summary else "")
        + "\nRanking settings per row source (each row's space is enumerated under the settings its run used):\n"
        + _judging_lines(rows) + "\n"
        + f"\nConstants fitted on all rows ({len(NAMES)} fitted, {len(FIXED)} held):\n{consts}\n\n"
        + "Per-layer check, out of sample (korthikanti2022_table4.csv: one 22B layer, TP 8, s 2048, micro-batch 4, "
        + "A100; not used in the fit). The paper-era rows run without flash attention: the s x s scores are formed "
        + "in memory (cost.NONFLASH_*_BYTES_PER_SCORE, counted by hand, not fitted).\n\n"
        + "\n".join(layer_lines) + "\n\n"
        + "Matched alternatives, out of sample (Megatron-Bridge skills/nemo-mbridge-perf-memory-tuning/SKILL.md at "
        + "067f987: the Llama3 70B SFT recipe of the 26.06 row re-run on the same 32 H100 with more PP or more TP, "
        + "selective core_attn recompute in all three; not used in the fit):\n\n"
        + "\n".join(matched_lines) + "\n\n"
        + MATCHED_NOTE + "\n\n"
        + "\n".join(lines) + "\n"
        + ("\nRows ranked low (not in our top 5 and more than 3% behind our best), and why:\n"
           + _low_rank_lines(rows, ranks) + "\n" if any(rk is not None for rk in ranks) else "")
    )


if __name__ == "__main__":
    main()
