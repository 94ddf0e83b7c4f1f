"""Memory model vs published measurements, and the no-false-OOM check on Megatron-Bridge H100 recipes.

Run: `python benchmarks/accuracy_memory.py` (writes benchmarks/results/memory_accuracy.md and prints it).
Sources (read-only, ../shared/refdata/):
- memory_points.csv: measured per-GPU memory with the config that produced it (Megatron-LM functional
  tests @ d98e8a64, Megatron-LM PR #482, Megatron-Bridge skills @ 067f987).
- mbridge_h100_perf_recipes.csv: Megatron-Bridge H100 perf recipes (all ran on 80 GB GPUs), resolved by
  tests/recipes.py.
Metrics: 'allocated_after_step' is compared with weights + gradients + optimizer state (activations are
freed after the step); 'peak_allocated' (torch.cuda.max_memory_allocated) with weights + gradients +
optimizer + activations, both without the CUDA-context/NCCL/fragmentation overhead terms, which the
allocator statistics do not see.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from autotune.cluster import ClusterSpec  # noqa: E402
from autotune.config import JobConfig, ParallelConfig, Workload  # noqa: E402
from autotune.memory import GIB, MemoryOptions, estimate_memory  # noqa: E402
from autotune.model_catalog import get_model  # noqa: E402
from autotune.model_spec import ModelSpec  # noqa: E402

REFDATA = REPO.parent / "shared" / "refdata"
H100_GIB = 80.0

# memory_points.csv m1-m12 arch_notes: 32 layers, hidden 4096, 32 heads, GQA 8, untied vocab 131073, ffn 4h
# GELU, learned absolute positions, linear biases and dropout on (Megatron-LM defaults: LayerNorm,
# hidden_dropout 0.1), seq 8192.
GPT_7B = ModelSpec(
    name="gpt3-7b-functional-test", num_layers=32, hidden_size=4096, ffn_hidden_size=16384, num_attention_heads=32,
    num_query_groups=8, kv_channels=128, vocab_size=131073, tie_embeddings=False, activation="gelu",
    normalization="LayerNorm", add_bias_linear=True, position_embedding_type="learned_absolute",
    max_position_embeddings=8192, source="memory_points.csv m1-m12 arch_notes",
)
GPU_NAMES = {"H100": "h100-80gb", "A100": "a100-80gb", "GB200": "gb200", "H800": "h100-80gb"}


@dataclass(frozen=True)
class PointResult:
    id: str
    model: str
    config: str
    metric: str
    measured_gib: float | None
    predicted_gib: float | None
    note: str

    @property
    def error_pct(self) -> float | None:
        if self.measured_gib is None or self.predicted_gib is None:
            return None
        return 100 * (self.predicted_gib - self.measured_gib) / self.measured_gib


def _rows(path: Path) -> list[dict[str, str]]:
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("#")]
    return list(csv.DictReader(lines))


def _int(v: str, default: int) -> int:
    v = (v or "").split(" ")[0]
    return int(v) if v.isdigit() else default


def _measured_gib(row: dict[str, str]) -> float:
    value = float(row["value"])
    if row["unit"] == "bytes":
        return value / GIB
    return value * 1e9 / GIB  # 'GB' in Bridge docs: read as base-10 (the sources do not say)


def point_results(refdata: Path = REFDATA) -> list[PointResult]:
    out = []
    for row in _rows(refdata / "memory_points.csv"):
        if not row["seq_len"].isdigit():
            out.append(PointResult(row["id"], row["model"], "", row["metric"], _measured_gib(row), None,
                                   "not enough config: sequence length not stated"))
            continue
        if row["id"] in {f"m{i}" for i in range(1, 13)}:
            model, options = GPT_7B, MemoryOptions(hidden_dropout=True)  # Megatron-LM: fp32 grads, dropout 0.1
        else:
            model = get_model("llama3-70b")
            modules = tuple(m.strip() for m in row["recompute"].replace("selective", "").replace("(baseline)", "")
                            .split(","))
            options = MemoryOptions(recompute_modules=modules, grad_reduce_in_fp32=False)  # Bridge perf recipes
        tp, pp, vpp = _int(row["tp"], 1), _int(row["pp"], 1), _int(row["vpp"], 1)
        gpus = int(row["num_gpus"])
        parallel = ParallelConfig(
            tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
            virtual_pipeline_model_parallel_size=vpp if vpp > 1 else None, context_parallel_size=_int(row["cp"], 1),
            micro_batch_size=int(row["mbs"]), sequence_parallel=row["sequence_parallel"] == "true",
            use_distributed_optimizer=row["dist_optimizer"].startswith("true"),
            recompute_granularity="selective" if row["recompute"].startswith("selective") else None)
        workload = Workload(seq_length=int(row["seq_len"]), global_batch_size=int(row["gbs"]),
                            precision="fp8" if "FP8" in row["precision"] else "bf16")
        job = JobConfig(num_gpus=gpus, parallel=parallel, workload=workload)
        est = estimate_memory(model, ClusterSpec.build(gpus, GPU_NAMES[row["gpu"]]), job, options=options)
        stage = est.stages[-1] if "last rank" in row["rank"] else (
            est.stages[0] if row["rank"] == "rank 0" else max(est.stages, key=lambda s: s.allocated_gib))
        if row["metric"] == "allocated_after_step":
            predicted = stage.weights_gib + stage.gradients_gib + stage.optimizer_gib
        else:
            predicted = stage.allocated_gib
        note = f"stage {stage.stage}"
        if workload.precision == "fp8":
            note += "; FP8: weight fp8 caches not modelled"
        out.append(PointResult(row["id"], model.name, parallel.short_name(), row["metric"], _measured_gib(row),
                               predicted, note))
    return out


@dataclass(frozen=True)
class RecipeResult:
    function: str
    model: str
    config: str
    peak_gib: float
    fits: bool
    unmodelled: str


def recipe_results(refdata: Path = REFDATA) -> list[RecipeResult]:
    from tests.recipes import load_recipes

    out = []
    for r in load_recipes(refdata):
        unmodelled = list(r.unmodelled)
        job = JobConfig(num_gpus=r.num_gpus, parallel=r.parallel, workload=r.workload)
        est = estimate_memory(get_model(r.model), ClusterSpec.build(r.num_gpus), job, options=r.memory_options)
        out.append(RecipeResult(r.function, r.model, r.parallel.short_name() + (
            f"·layout" if r.parallel.pipeline_model_parallel_layout else ""), est.peak_memory_gib,
            est.peak_memory_gib <= H100_GIB, "; ".join(unmodelled)))
    return out


def render(points: list[PointResult], recipes: list[RecipeResult]) -> str:
    lines = ["## Published memory points (memory_points.csv)", "",
             "| id | model | config | metric | measured GiB | predicted GiB | error % | note |",
             "|---|---|---|---|---|---|---|---|"]
    for p in points:
        err = "" if p.error_pct is None else f"{p.error_pct:+.1f}"
        pred = "" if p.predicted_gib is None else f"{p.predicted_gib:.2f}"
        lines.append(f"| {p.id} | {p.model} | {p.config} | {p.metric} | {p.measured_gib:.2f} | {pred} | {err} | "
                     f"{p.note} |")
    lines += ["", "## Megatron-Bridge H100 recipes: predicted peak (overheads included) vs 80 GiB", "",
              "| recipe | model | config | predicted peak GiB | fits 80 | not modelled |", "|---|---|---|---|---|---|"]
    for r in recipes:
        lines.append(f"| {r.function} | {r.model} | {r.config} | {r.peak_gib:.1f} | {'yes' if r.fits else 'NO'} | "
                     f"{r.unmodelled} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    text = render(point_results(), recipe_results())
    (REPO / "benchmarks" / "results" / "memory_accuracy.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
