"""The published throughput rows the cost model is fitted and ranked on, and the settings each run used.

One `Row` per published measurement the tool can express (../shared/refdata, cited per row): NeMo /
Megatron-Bridge H100 perf tables, Megatron-LM's H100 scaling table, and Narayanan et al. 2021 and
Korthikanti et al. 2022 on A100. Used by accuracy_throughput.py.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autotune.cluster import ClusterSpec  # noqa: E402
from autotune.config import JobConfig, ParallelConfig, Workload  # noqa: E402
from autotune.cost import RunOptions  # noqa: E402
from autotune.flops import model_flops_per_token  # noqa: E402
from autotune.memory import MemoryOptions  # noqa: E402
from autotune.model_catalog import get_model  # noqa: E402
from autotune.model_spec import MoESpec, ModelSpec  # noqa: E402

REFDATA = ROOT.parent / "shared" / "refdata"
if not REFDATA.is_dir():
    REFDATA = Path("/work/shared/refdata")


def gpt_spec(name: str, layers: int, hidden: int, heads: int, vocab: int, ffn: int | None = None,
             activation: str = "gelu", groups: int | None = None, tied: bool = True, source: str = "") -> ModelSpec:
    return ModelSpec(name=name, num_layers=layers, hidden_size=hidden, ffn_hidden_size=ffn or 4 * hidden,
                     num_attention_heads=heads, num_query_groups=groups or heads, kv_channels=hidden // heads,
                     vocab_size=vocab, tie_embeddings=tied, activation=activation, normalization="LayerNorm",
                     source=source)


# Models of published rows that are not in the catalog, from their public configs (stated dimensions).
EXTRA_MODELS = {
    "GPT3-5B": gpt_spec("gpt3-5b", 24, 4096, 32, 51200, source="NeMo GPTConfig5B (24L, h4096, 32 heads)"),
    "GPT3-20B": gpt_spec("gpt3-20b", 44, 6144, 48, 51200, source="NeMo GPTConfig20B (44L, h6144, 48 heads)"),
    "LLAMA2-7B": gpt_spec("llama2-7b", 32, 4096, 32, 32000, 11008, "swiglu", tied=False, source="Llama 2 paper"),
    "LLAMA2-13B": gpt_spec("llama2-13b", 40, 5120, 40, 32000, 13824, "swiglu", tied=False, source="Llama 2 paper"),
    "LLAMA2-70B": gpt_spec("llama2-70b", 80, 8192, 64, 32000, 28672, "swiglu", 8, tied=False, source="Llama 2 paper"),
    # NeMo nemo/collections/llm/gpt/model/nemotron.py: NemotronConfig (squared ReLU, untied output layer, no
    # linear bias) and Nemotron3Config8B / 22B, whose num_query_groups=None is full multi-head attention in
    # Megatron's TransformerConfig; the 256k vocabulary is the Nemotron tokenizer's (Nemotron-4 report).
    "Nemotron-8B": gpt_spec("nemotron3-8b", 32, 4096, 32, 256000, 16384, "squared_relu", tied=False,
                        source="NeMo Nemotron3Config8B (MHA: num_query_groups=None)"),
    "Nemotron-22B": gpt_spec("nemotron3-22b", 40, 6144, 48, 256000, 24576, "squared_relu", tied=False,
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
    "Nemotron-340B": "nemotron4-340b", "DeepSeekV3": "deepseek-v3", "Qwen3_235B_a22B": "qwen3-235b",
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
    why="Megatron-Bridge perf recipes reduce gradients in bf16 (perf_recipes/_common.py: grad_reduce_in_fp32=False) "
        "and keep FP8 primary weights (training/mixed_precision.py, bf16_with_fp8_current_scaling_mixed: "
        "fp8_param_gather=True at v0.1.0rc4 and every later tag); the NeMo 25.02 row is assumed to match. Recipe recompute "
        "settings are not in the perf "
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
# NeMo 24.07 ran NeMo 1.x through NeMo-Framework-Launcher. Its H100 performance scripts at tag 24.07
# (examples/training/{gpt,llama}/h100/*.sh) add +training.model.optim.grad_sync_dtype=bf16 and never set
# fp8_params, which no llama, gpt3 or nemotron training config turns on (only the MLPerf configs do); NeMo 1.x
# builds FP8 primary weights only under cfg.fp8_params (megatron_gpt_model.py: fp8_model_init), so these runs
# kept bf16 weights plus Transformer Engine's FP8 copy and its transpose.
NEMO_24_07 = replace(
    BRIDGE, name="NeMo 24.07 (NeMo 1.x launcher)",
    memory_options=MemoryOptions(grad_reduce_in_fp32=False, fp8_param=False),
    why="NeMo-Framework-Launcher 24.07 H100 scripts (examples/training/{gpt,llama}/h100/*.sh) sync gradients in bf16 "
        "(+training.model.optim.grad_sync_dtype=bf16) and leave fp8_params off (only the MLPerf configs set it; NeMo "
        "1.x megatron_gpt_model.py builds FP8 primary weights only under cfg.fp8_params), so FP8 runs kept bf16 "
        "weights plus Transformer Engine's FP8 copy; otherwise as the perf recipes")
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
    # Features the run's recipe used that the cost model lacks (GB200 MoE rows: GB200_MOE_LATER_FEATURES).
    unmodelled_features: tuple[str, ...] = ()

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


def commented_csv(path: Path) -> list[dict[str, str]]:
    """A CSV whose header comment lines (source, how it was read) start with '#'."""
    with open(path) as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def refdata_csv(name: str) -> list[dict[str, str]]:
    return commented_csv(REFDATA / name)


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
    return _perf_table_rows(refdata_csv("nemo_perf_h100.csv"), "nemo_perf_h100.csv", "h100")


# Out of sample, not fitted: Megatron-Bridge's dense-model GB200 rows (throughput_checks.blackwell_check).
GB200_DENSE_CSV = ROOT / "benchmarks" / "data" / "mbridge_gb200_dense_perf.csv"


def gb200_dense_rows() -> list[Row]:
    return _perf_table_rows(commented_csv(GB200_DENSE_CSV), GB200_DENSE_CSV.name, "gb200")


# Out of sample, not fitted: Megatron-Bridge's MoE-model GB200 rows (throughput_checks.blackwell_check).
GB200_MOE_CSV = ROOT / "benchmarks" / "data" / "mbridge_gb200_moe_perf.csv"
# The recipe behind each GB200 MoE row, keyed by (model, container): its token dispatcher, and whether it ran
# features we do not model, namely the EP all-to-all overlapped with compute (overlap_moe_expert_parallel_comm
# with delay_wgrad_compute) and full-iteration CUDA graphs. Read from Megatron-Bridge's git tags (v0.3.0 = 26.02,
# v0.3.1 = 26.02.01, v0.4.0 = 26.04, v0.4.2 = 26.04.01, v0.5.0 = 26.06, v0.5.1 = 26.06.01, v0.6.0 = 26.08, per
# docs/versions1.json at v0.6.0): scripts/performance/configs/{deepseek/deepseek,gpt_oss/gpt_oss,qwen/qwen3}_
# workload_base_configs.py (DEEPSEEK_V3_PRETRAIN_CONFIG_GB200_FP8_MX_V2, GPT_OSS_120B_PRETRAIN_CONFIG_GB200_BF16_V2
# and _FP8_MX_V2, QWEN3_30B_A3B_PRETRAIN_CONFIG_GB200_FP8_MX_V1, QWEN3_235B_A22B_PRETRAIN_CONFIG_GB200_FP8_MX_V2)
# with scripts/performance/utils/overrides.py, and src/megatron/bridge/perf_recipes/*/gb200/ at v0.6.0. Every
# one of them uses flex/hybridep except GPT-OSS in 26.02, 26.02.01 (the provider's alltoall) and 26.04.01 (v0.4.2
# drops the hybridep line, so overrides.py falls back to alltoall). EP overlap: GPT-OSS from 26.04, the others
# from 26.06; full-iteration CUDA graphs, paged stash and the cuteDSL fused grouped MLP: everyone from 26.06.
GB200_MOE_DISPATCHERS = {
    ("GPT OSS 120B", "26.02"): "alltoall", ("GPT OSS 120B", "26.02.01"): "alltoall",
    ("GPT OSS 120B", "26.04.01"): "alltoall",
}
GB200_MOE_LATER_FEATURES = ("26.06", "26.06.01", "26.08")  # EP overlap + full-iteration CUDA graphs
GB200_MOE_EP_OVERLAP = {("gpt-oss-120b", "26.04"), ("gpt-oss-120b", "26.04.01")}
# DeepSeek-V3's recipe places its layers with Megatron-Bridge's built-in map for PP 4 x VP 4
# (src/megatron/bridge/recipes/deepseek/deepseek_v3.py, entry (4, 4)): embedding + 4 layers, 14 chunks of 4,
# then 1 layer + the MTP layer + the loss.
GB200_MOE_LAYOUTS = {"DeepSeekV3": "Etttt|(tttt|)*14tmL"}


def gb200_moe_rows() -> list[Row]:
    rows = _perf_table_rows(commented_csv(GB200_MOE_CSV), GB200_MOE_CSV.name, "gb200", GB200_MOE_DISPATCHERS,
                            default_dispatcher="hybridep")
    out = []
    for r in rows:
        container = r.source.split()[1]
        features = (("EP overlap", "full-iteration CUDA graphs") if container in GB200_MOE_LATER_FEATURES
                    else ("EP overlap",) if (r.model.name, container) in GB200_MOE_EP_OVERLAP else ())
        note = "; ".join([n for n in (r.note, ", ".join(features)) if n]) + (" (not modelled)" if features else "")
        out.append(replace(r, note=note, unmodelled_features=features))
    return out


def ep_overlapped(row: Row) -> bool:
    """A GB200 MoE row whose recipe overlapped the EP exchange with compute, which the cost model does not."""
    return "EP overlap" in row.unmodelled_features


def _perf_table_rows(records: list[dict[str, str]], label: str, gpu: str,
                     dispatchers: dict[tuple[str, str], str] = NEMO_DISPATCHERS,
                     default_dispatcher: str = "alltoall") -> list[Row]:
    """Rows of a NeMo / Megatron-Bridge performance-summary table (nemo_perf_h100.csv's columns)."""
    rows = []
    for r in records:
        name = r["model"]
        if name in SKIPPED_MODELS or r["task"] == "LoRA":
            continue
        model = get_model(CATALOG_NAMES[name]) if name in CATALOG_NAMES else EXTRA_MODELS[name]
        tp, pp, cp = _int(r["tp"]), _int(r["pp"]), _int(r["cp"])
        vp, ep = _int(r["vp"], None), _int(r["ep"])
        knobs = dict(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                     virtual_pipeline_model_parallel_size=vp if (vp or 1) > 1 else None, context_parallel_size=cp,
                     expert_model_parallel_size=ep if model.is_moe else 1, micro_batch_size=_int(r["mbs"]),
                     sequence_parallel=tp > 1, use_distributed_optimizer=True)
        if name in GB200_MOE_LAYOUTS and gpu == "gb200":
            knobs["pipeline_model_parallel_layout"] = GB200_MOE_LAYOUTS[name]
            parallel = ParallelConfig(**knobs)
        else:
            parallel = _with_split(model, **knobs)
        prec = "fp8" if "FP8" in r["precision"] else "bf16"  # MXFP8 (Blackwell block scaling) counts as fp8
        dispatcher = dispatchers.get((name, r["container"]), default_dispatcher if model.is_moe else "alltoall")
        notes = ["Megatron-FSDP run modelled as distributed optimizer"] if _int(r["fsdp"], 0) else []
        if dispatcher != "alltoall":
            notes.append(f"flex dispatcher, {dispatcher} backend")
        if r["precision"] == "MXFP8":
            notes.append("MXFP8 modelled as fp8")
        rows.append(Row(
            source=f"{label} {r['container']} {r['task']}", model=model, gpu=gpu, num_gpus=int(r["num_gpus"]),
            workload=Workload(seq_length=int(r["seq_len"]), global_batch_size=int(r["gbs"]), precision=prec),
            parallel=parallel, published_tokens_per_s_per_gpu=float(r["tokens_per_sec_per_gpu"]),
            judging=NEMO_24_07 if r["container"] == "24.07" else BRIDGE,
            moe_dispatcher=dispatcher, note="; ".join(notes)))
    return rows


def _csv_gpt(r: dict[str, str], name: str, vocab: int, source: str) -> ModelSpec:
    """A GPT model from a paper/README table row's hidden_size, attention_heads and num_layers columns."""
    return gpt_spec(name, int(r["num_layers"]), int(r["hidden_size"]), int(r["attention_heads"]), vocab, source=source)


def megatron_lm_rows() -> list[Row]:
    rows = []
    for r in refdata_csv("megatron_lm_scaling.csv"):
        model = _csv_gpt(r, f"gpt-{r['model_size']}", int(r["vocab_size"]), "megatron_lm_scaling.csv")
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
    for r in refdata_csv("narayanan2021_table1.csv"):
        s, V, pp = int(r["seq_len"]), 51200, int(r["pp"])
        model = _csv_gpt(r, f"gpt-{r['params_billion']}b", V, "narayanan2021_table1.csv")
        L, h = model.num_layers, model.hidden_size
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


def narayanan_table2_rows(interleaved: bool) -> list[Row]:
    """Table 2's PTD rows: one model-parallel config per model at 1x, 2x and 4x its data parallelism, same batch.

    Out of sample (not fitted, not ranked). The table gives the model-parallel size only (96 and 280); TP 8 (the
    server size, the paper's Takeaway #1) makes PP 12 and 35, as the paper's Figure 18 script runs GPT-3 175B
    (examples/academic_paper_scripts/sc21/run_figure_18.sh) and Table 1 the 530B. The pipeline schedule is not
    stated: `interleaved` takes those scripts' layers per virtual stage (2 for 175B, 1 for 530B as in Table 1),
    otherwise the non-interleaved 1F1B. Dimensions: GPT-3 175B as korthikanti2022.csv, 530B as Table 1.
    """
    dims = {"174.6": next(r for r in refdata_csv("korthikanti2022.csv") if r["model"].startswith("175B")),
            "529.6": next(r for r in refdata_csv("narayanan2021_table1.csv") if r["params_billion"] == "529.6")}
    layers_per_virtual_stage = {"174.6": 2, "529.6": 1}
    rows = []
    for r in refdata_csv("narayanan2021_table2.csv"):
        if r["scheme"] != "PTD":
            continue
        size, s, V, tp = r["params_billion"], 2048, 51200, 8
        model = _csv_gpt(dims[size], f"gpt-{size}b", V, "narayanan2021_table2.csv")
        L, h = model.num_layers, model.hidden_size
        pp = int(r["model_parallel_size"]) // tp
        vpp = L // (pp * layers_per_virtual_stage[size]) if interleaved else None
        eq3_per_token = 96 * L * h * h * (1 + s / (6 * h) + V / (16 * L * h))  # as narayanan_rows
        rows.append(Row(
            source=f"narayanan2021_table2.csv PTD {size}B", model=model, gpu="a100-80gb", num_gpus=int(r["num_gpus"]),
            workload=Workload(seq_length=s, global_batch_size=int(r["batch_size"]), precision="bf16"),
            parallel=_with_split(model, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                 virtual_pipeline_model_parallel_size=vpp, micro_batch_size=int(r["micro_batch_size"]),
                                 use_distributed_optimizer=False, recompute_granularity="full"),
            published_tokens_per_s_per_gpu=float(r["per_gpu_tflops"]) * 1e12 / eq3_per_token, judging=NARAYANAN_2021,
            overlap_grad_reduce=False, note="fp16; full recompute; local DDP as Table 1's large models"))
    return rows


def korthikanti_rows() -> list[Row]:
    rows = []
    for r in refdata_csv("korthikanti2022.csv"):
        model = _csv_gpt(r, f"gpt-{r['model'].split()[0]}", int(r["vocab_size"]), "korthikanti2022.csv")
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
