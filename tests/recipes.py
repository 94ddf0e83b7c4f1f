"""Resolve the H100 perf recipes of ../shared/refdata/mbridge_h100_perf_recipes.csv into our configs.

Source of the CSV: NVIDIA-NeMo/Megatron-Bridge @ 067f987 src/megatron/bridge/perf_recipes/*/h100/*.py.
A blank field inherits from `derived_from` (another recipe in the file, or `_with_global_batch_size(...)`)
or from the model's base recipe. The base-recipe values we fill in are listed in BASE_DEFAULTS with
their source; nothing else is assumed. Shared by the constraint tests and the memory benchmark.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from autotune.config import ParallelConfig, Workload
from autotune.memory import MemoryOptions

CATALOG_MODEL = {"llama3_8b": "llama3-8b", "llama3_70b": "llama3-70b", "llama31_405b": "llama3.1-405b",
                 "qwen3_30b_a3b": "qwen3-30b-a3b", "kimi_k2": "kimi-k2"}

# Values the recipe functions inherit from their base recipe (not in the CSV).
BASE_DEFAULTS = {
    # Megatron-Bridge llama3 pretrain recipes train at the model's 8192 sequence length; llama31_405b's
    # base sets account_for_embedding/loss_in_pipeline_split (126 layers over PP8 x VPP8 needs 128 slots;
    # the same flags appear in NeMo's llama31 405b perf script).
    "llama3_8b": dict(seq_len=8192),
    "llama3_70b": dict(seq_len=8192),
    "llama31_405b": dict(seq_len=8192, account=True),
    # Qwen3 30B-A3B: the 16-GPU BF16 recipe's doc says "EP=16"; its other fields match the FP8 sibling.
    "qwen3_30b_a3b": dict(seq_len=4096, tp=1, pp=1, cp=1, ep=16, sp=False, mbs=1, gbs=1024),
    # Kimi K2: 1024 GPUs at TP8 x PP16 leave room for EP64 only with ETP=1 (PP*EP*ETP must divide 1024).
    "kimi_k2": dict(seq_len=4096, etp=1),
}


@dataclass(frozen=True)
class Recipe:
    function: str
    model: str  # catalog name
    num_gpus: int
    parallel: ParallelConfig
    workload: Workload
    memory_options: MemoryOptions  # the recipe's gradient dtype and recompute settings
    unmodelled: tuple[str, ...]  # options the memory model does not represent
    notes: str


def _rows(path: Path) -> dict[str, dict[str, str]]:
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("#")]
    return {r["function"]: r for r in csv.DictReader(lines)}


def _model_key(function: str) -> str | None:
    for key in sorted(CATALOG_MODEL, key=len, reverse=True):
        if function.startswith(key + "_"):
            return key
    return None


def _resolved_fields(rows: dict[str, dict[str, str]], function: str) -> dict[str, str]:
    row = dict(rows[function])
    parent = row["derived_from"]
    m = re.match(r"_with_global_batch_size\((\w+)\(\), (\d+)\)", parent)
    base_fn, gbs_override = (m.group(1), m.group(2)) if m else (parent.removesuffix("()"), None)
    merged = _resolved_fields(rows, base_fn) if base_fn in rows else {}
    merged.update({k: v for k, v in row.items() if v not in ("", None)})
    if gbs_override:
        merged["gbs"] = gbs_override
    return merged


def _int(v: str | None, default: int | None) -> int | None:
    if v in (None, "", "None"):
        return default
    return int(v)


def recipe_memory_options(fields: dict[str, str]) -> tuple[MemoryOptions, list[str]]:
    """Recompute modules / block recompute from the recipe's row, and what the memory model leaves out."""
    unmodelled = []
    modules = tuple(m.strip(" '\"") for m in (fields.get("recompute_modules") or "").strip("[]").split(",")
                    if m.strip(" '\""))
    num_layers = None
    if (fields.get("recompute_method") or "").strip("'") == "block":
        num_layers = int(fields["recompute_num_layers"])
    if fields.get("cpu_offload_layers"):
        unmodelled.append("CPU offload")
    if "peft" in fields["function"]:
        unmodelled.append("LoRA/PEFT: frozen base weights have no grads or optimizer state; we charge them")
    # FP8 weights and saved inputs are modelled (autotune/memory_fp8.py) for per-tensor scaling. The perf
    # recipes set first_last_layers_bf16=False (perf_recipes/_common.py _perf_precision), so every layer is FP8.
    if "_fp8sc_" in fields["function"]:  # kimi/h100/kimi_k2.py:120, qwen/h100/qwen3_moe.py:437
        unmodelled.append("FP8 blockwise scaling: per-block scales (modelled as per-tensor)")
    elif "_fp8ds_" in fields["function"]:  # qwen/h100/qwen3_moe.py:132
        unmodelled.append("FP8 delayed scaling: amax histories")
    # Megatron-Bridge perf recipes reduce gradients in bf16 (perf_recipes/_common.py) except Kimi K2 (fp32).
    opts = MemoryOptions(recompute_modules=modules or ("core_attn",), recompute_num_layers=num_layers,
                         grad_reduce_in_fp32="kimi" in fields["function"])
    return opts, unmodelled


def load_recipes(refdata: Path) -> list[Recipe]:
    rows = _rows(refdata / "mbridge_h100_perf_recipes.csv")
    out = []
    for function in rows:
        key = _model_key(function)
        if key is None:
            continue
        f = _resolved_fields(rows, function)
        base = BASE_DEFAULTS[key]
        gpus = int(re.search(r"_(\d+)gpu_", function).group(1))
        tp, pp = _int(f.get("tp"), base.get("tp", 1)), _int(f.get("pp"), base.get("pp", 1))
        vpp = _int(f.get("vp"), None)
        layout = f.get("pp_layout")
        layout = layout.strip("'\"") if layout and layout != "None" else None
        recompute = (f.get("recompute_granularity") or "").strip("'") or None
        if recompute == "None":
            recompute = None
        account = bool(base.get("account")) and layout is None
        parallel = ParallelConfig(
            tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
            virtual_pipeline_model_parallel_size=None if layout else vpp,
            context_parallel_size=_int(f.get("cp"), base.get("cp", 1)),
            expert_model_parallel_size=_int(f.get("ep"), base.get("ep", 1)),
            expert_tensor_parallel_size=_int(f.get("etp"), base.get("etp", 1)),
            micro_batch_size=_int(f.get("mbs"), base.get("mbs", 1)),
            sequence_parallel=(f.get("sp") == "True") if f.get("sp") else bool(base.get("sp", tp > 1)),
            use_distributed_optimizer=True,
            recompute_granularity=recompute,
            account_for_embedding_in_pipeline_split=account, account_for_loss_in_pipeline_split=account,
            pipeline_model_parallel_layout=layout,
        )
        seq = f.get("seq_len")
        seq_len = int(seq) if seq and seq.isdigit() else base["seq_len"]
        workload = Workload(seq_length=seq_len, global_batch_size=_int(f.get("gbs"), base.get("gbs")),
                            precision="fp8" if "fp8" in function else "bf16")
        notes = []
        if "peft" in function:
            notes.append("LoRA fine-tuning (frozen base weights)")
        if f.get("recompute_modules"):
            notes.append(f"recompute_modules={f['recompute_modules']}")
        options, unmodelled = recipe_memory_options(f)
        out.append(Recipe(function=function, model=CATALOG_MODEL[key], num_gpus=gpus, parallel=parallel,
                          workload=workload, memory_options=options, unmodelled=tuple(unmodelled),
                          notes="; ".join(notes)))
    return out
