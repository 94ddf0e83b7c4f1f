"""Per-layer forward and backward time of real Megatron Core layers against the cost model's compute term.

On one GPU this builds Megatron Core GPT models of 1 and of 2 decoder layers whose per-GPU shapes are those of
one tensor-parallel (and, for MoE, expert-tensor-parallel) shard: heads, query groups and FFN widths divided by
the shard count, head size kept. The difference of the two models' times is one layer's (embedding, output
layer and loss cancel) with no communication in it, which is what the cost model's compute term
(cost.layer_compute_s) predicts for that shard. A profiler pass splits out the linear-layer GEMMs
(aten::mm / aten::addmm), the part whose dependence on micro-batch size and shard width the fitted roofline
constants (gemm_efficiency, gemm_memory_weight) stand in for.

It also times the last pipeline stage's extra work, the output layer and the loss: a 1-layer model with the
real vocabulary (split over the TP shard) minus one with a small vocabulary. That term decides which stage is
slowest in an even pipeline split, and it is compared with cost.output_layer_s.

The layer spec is Megatron's local (pure-PyTorch) one unless Transformer Engine imports; the local core
attention is unfused (the s x s scores in memory), so it is compared with the model's non-flash attention
(RunOptions.flash_attention=False).

  python benchmarks/gpu_layer_times.py                 # GPU: writes benchmarks/results/gpu_layer_times.md
  python benchmarks/gpu_layer_times.py --smoke --out X # CPU, tiny shapes: checks the harness; times mean nothing
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autotune import constraints as C  # noqa: E402
from autotune.atomic import write_text_atomic  # noqa: E402
from autotune.cluster import ClusterSpec  # noqa: E402
from autotune.config import ParallelConfig, Workload  # noqa: E402
from autotune.cost import RunOptions, layer_compute_s, output_layer_s  # noqa: E402
from autotune.cost_constants import load_cost_constants  # noqa: E402
from autotune.cost_terms import step_work  # noqa: E402
from autotune.model_catalog import get_model  # noqa: E402
from autotune.model_spec import ModelSpec  # noqa: E402

# (catalog model, shard widths, micro-batch sizes). The widths are the TP (and ETP) sizes whose per-GPU
# shapes are measured; MBS 1-4 at s 4096 spans the token counts the published H100 recipes run.
GPU_CASES = (("llama3-8b", (1, 2, 4, 8), (1, 2, 4)), ("llama3-70b", (2, 4, 8), (1, 2, 4)),
             ("mixtral-8x7b", (1, 2, 4), (1, 2)))
SMOKE_CASES = (("tiny-dense", (1, 2), (1, 2)), ("tiny-moe", (1, 2), (1,)))
# Output layer + loss: (catalog model, vocabulary (None: the model's), shard widths, micro-batch sizes). Llama3's
# 128k vocabulary at the TP widths of the published Llama3 recipes; the smoke case's vocabulary only has to
# exceed MEASURE_VOCAB.
GPU_OUTPUT_CASES = (("llama3-8b", None, (1, 2), (1, 2)), ("llama3-70b", None, (4, 8), (1, 2)))
SMOKE_OUTPUT_CASES = (("tiny-dense", 4096, (1, 2), (1, 2)),)
# The measured models' vocabulary: the output layer cancels in the 2-minus-1-layer difference, so a small
# one only saves time and memory.
MEASURE_VOCAB = 1024
LINEAR_GEMM_OPS = ("aten::mm", "aten::addmm")
ATTENTION_GEMM_OPS = ("aten::bmm", "aten::baddbmm")
# torch.cuda.get_device_name() substring -> cluster.py GPU type
GPU_TYPES = (("H200", "h200-141gb"), ("H100", "h100-80gb"), ("A100", "a100-80gb"), ("B200", "b200"))


@dataclass(frozen=True)
class LayerTiming:
    model: str
    shard: int  # TP (= ETP for MoE) size whose per-GPU shapes were measured
    micro_batch_size: int
    seq_length: int
    layer_params: int  # parameters of one built layer (2-layer model minus 1-layer model)
    measured_fwd_ms: float
    measured_bwd_ms: float
    measured_linear_gemm_ms: float | None  # fwd + bwd, profiler (GPU only)
    measured_attention_gemm_ms: float | None
    predicted_fwd_ms: float
    predicted_bwd_ms: float
    predicted_linear_gemm_ms: float  # fwd + 2 x bwd GEMM roofline


@dataclass(frozen=True)
class OutputTiming:
    """The output layer and loss of one micro-batch, as the last pipeline stage runs them on one TP shard."""
    model: str
    shard: int
    micro_batch_size: int
    seq_length: int
    vocab_per_gpu: int  # the measured vocabulary shard (vocabulary / shard)
    measured_fwd_ms: float  # big-vocabulary model minus small-vocabulary model
    measured_bwd_ms: float
    measured_gemm_ms: float | None  # fwd + bwd linear GEMMs (the output layer's three), profiler (GPU only)
    predicted_gemm_ms: float  # cost.output_layer_s, same difference
    predicted_loss_ms: float


def shard_spec(model: ModelSpec, shard: int, num_layers: int, vocab_size: int = MEASURE_VOCAB) -> ModelSpec:
    """A single-GPU model whose layers have the per-GPU shapes of a TP (and ETP) = `shard` run of `model`."""
    if model.num_query_groups % shard or model.ffn_hidden_size % shard:
        raise ValueError(f"{model.name}: shard {shard} does not divide its query groups / FFN width")
    update = dict(num_layers=num_layers, vocab_size=vocab_size,
                  num_attention_heads=model.num_attention_heads // shard,
                  num_query_groups=model.num_query_groups // shard, ffn_hidden_size=model.ffn_hidden_size // shard)
    if model.moe is not None:
        moe = model.moe.model_dump()
        moe["moe_ffn_hidden_size"] //= shard
        if moe["shared_expert_ffn_hidden_size"]:
            moe["shared_expert_ffn_hidden_size"] //= shard
        moe["num_dense_layers"] = 0
        update["moe"] = moe
    return ModelSpec.model_validate({**model.model_dump(), **update})


def predicted_ms(model: ModelSpec, shard: int, mbs: int, seq: int, gpu_type: str,
                 flash: bool) -> tuple[float, float, float]:
    """Cost-model forward, backward and linear-GEMM (fwd + bwd) milliseconds of one layer at TP = ETP = shard,
    without sequence parallelism (the measured shard runs its norms on every token too)."""
    cluster = ClusterSpec.build(shard, gpu_type)
    p = ParallelConfig(tensor_model_parallel_size=shard, expert_tensor_parallel_size=shard, micro_batch_size=mbs,
                       sequence_parallel=False)
    work = step_work(model, cluster, Workload(seq_length=seq, global_batch_size=mbs, precision="bf16"),
                     C.Knobs.batch_of(p))
    parts = layer_compute_s(work.moe if model.is_moe else work.dense, cluster.gpu, "bf16", load_cost_constants(),
                            RunOptions(flash_attention=flash))
    return (1e3 * float(parts["forward"][0]), 1e3 * float(parts["backward"][0]), 3e3 * float(parts["gemm"][0]))


def predicted_output_ms(model: ModelSpec, vocab: int, shard: int, mbs: int, seq: int,
                        gpu_type: str) -> tuple[float, float]:
    """Cost-model output-layer GEMM and loss milliseconds (cost.output_layer_s) of `vocab` split over TP = shard,
    minus the same at the small measuring vocabulary, as the measurement takes the difference of the two."""
    cluster = ClusterSpec.build(shard, gpu_type)
    knobs = C.Knobs.batch_of(ParallelConfig(tensor_model_parallel_size=shard, micro_batch_size=mbs,
                                            sequence_parallel=False))
    workload = Workload(seq_length=seq, global_batch_size=mbs, precision="bf16")
    parts = []
    for v in (vocab, MEASURE_VOCAB * shard):
        work = step_work(model.model_copy(update={"vocab_size": v, "num_layers": 1}), cluster, workload, knobs)
        gemm, loss = output_layer_s(work, cluster.gpu, load_cost_constants())
        parts.append((float(gemm[0]), float(loss[0])))
    return 1e3 * (parts[0][0] - parts[1][0]), 1e3 * (parts[0][1] - parts[1][1])


# --- measurement (imports torch and Megatron) ----------------------------------------------------

def _init(gpu: bool) -> None:
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state, tensor_parallel

    if gpu:
        torch.cuda.set_device(0)
    with socket.socket() as s:  # a free port for the one-process group
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group(backend="nccl" if gpu else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            world_size=1, rank=0)
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=1, pipeline_model_parallel_size=1)
    tensor_parallel.model_parallel_cuda_manual_seed(1234)
    torch.manual_seed(1234)


def _build(spec: ModelSpec, seq: int, gpu: bool, layer_spec: str):
    import torch

    from trial_runner.model_builder import build_model_chunks

    dtype = torch.bfloat16 if gpu else torch.float32
    (chunk,) = build_model_chunks(spec, ParallelConfig(), seq_length=seq, dtype=dtype, layer_spec=layer_spec,
                                  use_cpu_initialization=not gpu)
    return chunk.cuda() if gpu else chunk


def _batch(mbs: int, seq: int, gpu: bool) -> dict:
    import torch

    device = "cuda" if gpu else "cpu"
    tokens = torch.randint(0, MEASURE_VOCAB, (mbs, seq), device=device)
    positions = torch.arange(seq, device=device).unsqueeze(0).expand(mbs, seq)
    return {"tokens": tokens, "positions": positions, "labels": torch.roll(tokens, -1, dims=1)}


def _step(model, batch):
    from megatron.core.transformer.moe.moe_utils import get_moe_layer_wise_logging_tracker

    # The MoE aux-loss log is global and sized by the first model's layer count: start it afresh each step.
    get_moe_layer_wise_logging_tracker().clear()
    loss = model(batch["tokens"], batch["positions"], attention_mask=None, labels=batch["labels"]).float().mean()
    return loss


def _times(model, batch, gpu: bool, warmup: int, iters: int) -> tuple[float, float]:
    """Median forward (to the loss) and backward milliseconds."""
    import torch

    fwd, bwd = [], []
    for i in range(warmup + iters):
        model.zero_grad(set_to_none=True)
        if gpu:
            marks = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
            marks[0].record()
            loss = _step(model, batch)
            marks[1].record()
            loss.backward()
            marks[2].record()
            torch.cuda.synchronize()
            f, b = marks[0].elapsed_time(marks[1]), marks[1].elapsed_time(marks[2])
        else:
            t0 = time.perf_counter()
            loss = _step(model, batch)
            t1 = time.perf_counter()
            loss.backward()
            f, b = 1e3 * (t1 - t0), 1e3 * (time.perf_counter() - t1)
        if i >= warmup:
            fwd.append(f)
            bwd.append(b)
    return statistics.median(fwd), statistics.median(bwd)


def _gemm_ms(model, batch) -> tuple[float, float]:
    """Device milliseconds of the linear-layer and attention GEMMs in one forward + backward (profiler)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    model.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        _step(model, batch).backward()
        torch.cuda.synchronize()
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        device_us = getattr(event, "self_device_time_total", None)
        if device_us is None:  # torch < 2.4 names it after CUDA
            device_us = event.self_cuda_time_total
        totals[event.key] = totals.get(event.key, 0.0) + device_us
    return (sum(totals.get(k, 0.0) for k in LINEAR_GEMM_OPS) / 1e3,
            sum(totals.get(k, 0.0) for k in ATTENTION_GEMM_OPS) / 1e3)


def _time_pair(models, mbs: int, seq: int, gpu: bool, warmup: int, iters: int):
    """Median forward and backward ms of each of two models on one batch, and on a GPU each one's linear and
    attention GEMM ms (None on CPU): the benchmark's measurements are differences of such pairs."""
    batch = _batch(mbs, seq, gpu)
    times = [_times(m, batch, gpu, warmup, iters) for m in models]
    return times, ([_gemm_ms(m, batch) for m in models] if gpu else None)


def measure(cases, seq: int, gpu: bool, warmup: int, iters: int, on_row, progress=print, output_cases=()) -> None:
    """Time every output-layer case, then every layer case; after each row, on_row(layer rows, setup line, skipped
    cases, output rows) (the caller writes the report then, so a run stopped at a time limit keeps what it
    measured)."""
    import torch

    from trial_runner.model_builder import choose_layer_spec, count_local_parameters

    _init(gpu)
    layer_spec = choose_layer_spec("gpu" if gpu else "cpu")
    gpu_type = "h100-80gb"  # CPU smoke runs: the predictions only exercise the code
    if gpu:
        name = torch.cuda.get_device_name(0)
        gpu_type = next((t for key, t in GPU_TYPES if key in name), "h100-80gb")
    device = torch.cuda.get_device_name(0) if gpu else "CPU (smoke run: times are not meaningful)"
    setup = f"{device}; torch {torch.__version__}; layer spec {layer_spec}; cost model as GPU type {gpu_type}"
    rows: list[LayerTiming] = []
    outputs: list[OutputTiming] = []
    skipped: list[str] = []

    def out_of_memory(case: str) -> None:
        # A case too big for this GPU is reported as skipped; the others still run.
        skipped.append(f"{case} (out of memory)")
        progress(f"{case}: out of memory, skipped")
        if gpu:
            torch.cuda.empty_cache()
        on_row(rows, setup, skipped, outputs)

    # The output-layer cases first: few and short, so a run cut at its time limit still has them.
    for model_name, vocab, shards, mbss in output_cases:
        model = get_model(model_name)
        vocab = vocab or model.vocab_size
        for shard in shards:
            # The real vocabulary's shard, then the small one: the difference is the output layer and loss.
            models = [_build(shard_spec(model, shard, 1, v), seq, gpu, layer_spec)
                      for v in (vocab // shard, MEASURE_VOCAB)]
            for mbs in mbss:
                try:
                    ((f1, b1), (f0, b0)), gemms = _time_pair(models, mbs, seq, gpu, warmup, iters)
                except torch.OutOfMemoryError:
                    out_of_memory(f"{model_name} output layer shard {shard} MBS {mbs}")
                    continue
                gemm = None if gemms is None else gemms[0][0] - gemms[1][0]
                pg, pl = predicted_output_ms(model, vocab, shard, mbs, seq, gpu_type)
                outputs.append(OutputTiming(model=model_name, shard=shard, micro_batch_size=mbs, seq_length=seq,
                                            vocab_per_gpu=vocab // shard, measured_fwd_ms=f1 - f0,
                                            measured_bwd_ms=b1 - b0, measured_gemm_ms=gemm, predicted_gemm_ms=pg,
                                            predicted_loss_ms=pl))
                progress(f"{model_name} output layer shard {shard} mbs {mbs}: measured {f1 - f0:.2f}+{b1 - b0:.2f} ms, "
                         f"predicted {pg + pl:.2f} ms")
                on_row(rows, setup, skipped, outputs)
            del models
            if gpu:
                torch.cuda.empty_cache()
    for model_name, shards, mbss in cases:
        model = get_model(model_name)
        for shard in shards:
            models = [_build(shard_spec(model, shard, n), seq, gpu, layer_spec) for n in (1, 2)]
            params = count_local_parameters([models[1]]) - count_local_parameters([models[0]])
            for mbs in mbss:
                try:
                    ((f1, b1), (f2, b2)), gemms = _time_pair(models, mbs, seq, gpu, warmup, iters)
                except torch.OutOfMemoryError:
                    out_of_memory(f"{model_name} shard {shard} MBS {mbs}")
                    continue
                lin, att = (None, None) if gemms is None else (gemms[1][0] - gemms[0][0], gemms[1][1] - gemms[0][1])
                pf, pb, pg = predicted_ms(model, shard, mbs, seq, gpu_type, layer_spec == "transformer_engine")
                rows.append(LayerTiming(model=model_name, shard=shard, micro_batch_size=mbs, seq_length=seq,
                                        layer_params=params, measured_fwd_ms=f2 - f1, measured_bwd_ms=b2 - b1,
                                        measured_linear_gemm_ms=lin, measured_attention_gemm_ms=att,
                                        predicted_fwd_ms=pf, predicted_bwd_ms=pb, predicted_linear_gemm_ms=pg))
                progress(f"{model_name} shard {shard} mbs {mbs}: measured {f2 - f1:.2f}+{b2 - b1:.2f} ms, "
                         f"predicted {pf:.2f}+{pb:.2f} ms")
                on_row(rows, setup, skipped, outputs)
            del models
            if gpu:
                torch.cuda.empty_cache()


# --- report ----------------------------------------------------------------------------------------

def _pct(pred: float, meas: float | None) -> str:
    return "-" if meas is None or meas <= 0 else f"{100 * (pred / meas - 1):+.1f}%"


def report(rows: list[LayerTiming], setup: str, skipped: list[str] = (), outputs: list[OutputTiming] = ()) -> str:
    lines = [
        "# Per-layer time of real Megatron Core layers vs the cost model's compute term",
        "",
        f"Generated by `benchmarks/gpu_layer_times.py` on {setup}. One decoder layer = the 2-layer model minus "
        "the 1-layer model, per micro-batch, at the per-GPU shapes of TP (= ETP) `shard`, bf16, no "
        "communication; medians of the timed iterations. Predicted: `cost.layer_compute_s` with the packaged "
        "constants (fitted on H100/A100 rows; not refitted here). Linear GEMMs: aten::mm + aten::addmm device "
        "time, forward + backward.",
        "",
        "| model | shard | MBS | tokens | layer params | measured fwd ms | measured bwd ms | predicted fwd ms "
        "| predicted bwd ms | fwd+bwd error | measured linear GEMM ms | predicted linear GEMM ms | GEMM error |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        meas, pred = r.measured_fwd_ms + r.measured_bwd_ms, r.predicted_fwd_ms + r.predicted_bwd_ms
        gemm = "-" if r.measured_linear_gemm_ms is None else f"{r.measured_linear_gemm_ms:.2f}"
        lines.append(
            f"| {r.model} | {r.shard} | {r.micro_batch_size} | {r.micro_batch_size * r.seq_length} | "
            f"{r.layer_params:,} | {r.measured_fwd_ms:.2f} | {r.measured_bwd_ms:.2f} | {r.predicted_fwd_ms:.2f} | "
            f"{r.predicted_bwd_ms:.2f} | {_pct(pred, meas)} | {gemm} | {r.predicted_linear_gemm_ms:.2f} | "
            f"{_pct(r.predicted_linear_gemm_ms, r.measured_linear_gemm_ms)} |")
    if skipped:
        lines += ["", "Skipped: " + "; ".join(skipped) + "."]
    lines += ["", *_intercept_lines(rows)]
    if outputs:
        lines += ["", *_output_lines(outputs, rows)]
    return "\n".join(lines) + "\n"


def _output_lines(outputs: list[OutputTiming], rows: list[LayerTiming]) -> list[str]:
    """The output layer and loss against cost.output_layer_s, and how many decoder layers' time they weigh: the
    share of an even pipeline split's last stage that the other stages do not have."""
    layer_ms = {(r.model, r.shard, r.micro_batch_size): (r.measured_fwd_ms + r.measured_bwd_ms,
                                                          r.predicted_fwd_ms + r.predicted_bwd_ms) for r in rows}
    lines = ["Output layer and loss per micro-batch (the last pipeline stage's extra work): a 1-layer model with "
             "the vocabulary split over the shard minus one with a small vocabulary, forward + backward. The "
             "measured rest is everything but the output layer's GEMMs: the fp32 cross-entropy, and the embedding "
             "table's gradient, which a pipeline puts on the first stage. Layers' worth: this time over one decoder "
             "layer's (the table above) at the same shard and micro-batch.", "",
             "| model | shard | MBS | vocab per GPU | measured fwd+bwd ms | measured GEMM ms | predicted GEMM ms "
             "| GEMM error | measured rest ms | predicted loss ms | total error | layers' worth measured "
             "| layers' worth predicted |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for o in outputs:
        meas, pred = o.measured_fwd_ms + o.measured_bwd_ms, o.predicted_gemm_ms + o.predicted_loss_ms
        gemm = "-" if o.measured_gemm_ms is None else f"{o.measured_gemm_ms:.2f}"
        rest = "-" if o.measured_gemm_ms is None else f"{meas - o.measured_gemm_ms:.2f}"
        layer = layer_ms.get((o.model, o.shard, o.micro_batch_size))
        worth = ("-", "-") if layer is None else (
            "-" if layer[0] <= 0 else f"{meas / layer[0]:.2f}", f"{pred / layer[1]:.2f}")
        lines.append(f"| {o.model} | {o.shard} | {o.micro_batch_size} | {o.vocab_per_gpu:,} | {meas:.2f} | {gemm} | "
                     f"{o.predicted_gemm_ms:.2f} | {_pct(o.predicted_gemm_ms, o.measured_gemm_ms)} | {rest} | "
                     f"{o.predicted_loss_ms:.2f} | {_pct(pred, meas)} | {worth[0]} | {worth[1]} |")
    return lines


def _intercept_lines(rows: list[LayerTiming]) -> list[str]:
    """Per (model, shard): a straight line through fwd+bwd ms against tokens per micro-batch. Its intercept is
    the time a layer pays per micro-batch whatever its size (launches, partial waves, small-GEMM
    inefficiency), which the fitted layer_overhead_s and gemm_memory_weight stand for; the same line through
    the predictions gives the model's."""
    groups: dict[tuple[str, int], list[LayerTiming]] = {}
    for r in rows:
        groups.setdefault((r.model, r.shard), []).append(r)
    lines = ["Fixed time per layer and micro-batch (intercept of fwd+bwd ms against tokens, least squares over "
             "the micro-batch sizes):", "",
             "| model | shard | measured intercept ms | predicted intercept ms | measured us per 1k tokens "
             "| predicted us per 1k tokens |", "|---|---:|---:|---:|---:|---:|"]
    for (model, shard), group in groups.items():
        if len(group) < 2:
            continue
        tokens = [g.micro_batch_size * g.seq_length for g in group]
        meas = np.polyfit(tokens, [g.measured_fwd_ms + g.measured_bwd_ms for g in group], 1)
        pred = np.polyfit(tokens, [g.predicted_fwd_ms + g.predicted_bwd_ms for g in group], 1)
        lines.append(f"| {model} | {shard} | {meas[1]:.3f} | {pred[1]:.3f} | {1e6 * meas[0]:.1f} | "
                     f"{1e6 * pred[0]:.1f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: checks the harness only")
    ap.add_argument("--seq-length", type=int, default=None, help="default 4096 (GPU), 64 (--smoke)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out", type=Path, default=None, help="markdown report (default benchmarks/results/"
                                                            "gpu_layer_times.md on GPU; printed only with --smoke)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    ap.add_argument("--models", default=None, help="comma-separated subset of the case models, e.g. llama3-8b")
    args = ap.parse_args(argv)

    cases = SMOKE_CASES if args.smoke else GPU_CASES
    output_cases = SMOKE_OUTPUT_CASES if args.smoke else GPU_OUTPUT_CASES
    if args.models:
        wanted = set(args.models.split(","))
        cases = tuple(c for c in cases if c[0] in wanted)
        output_cases = tuple(c for c in output_cases if c[0] in wanted)
        if not cases:
            print(f"error: --models {args.models!r} names none of the cases "
                  f"({', '.join(c[0] for c in (SMOKE_CASES if args.smoke else GPU_CASES))})", file=sys.stderr)
            return 2
    gpu = not args.smoke
    if gpu:
        # Megatron's ordered kernel launches, as in the trial worker; read when the CUDA context is created.
        os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")

    import torch

    if gpu and not torch.cuda.is_available():
        print("error: no CUDA GPU visible; run this on a GPU node, or pass --smoke to check the harness on CPU",
              file=sys.stderr)
        return 2
    seq = args.seq_length or (64 if args.smoke else 4096)
    if args.smoke:
        from trial_runner import cpu_compat

        mode = cpu_compat.enable()
        mode.__enter__()
    out = args.out or (None if args.smoke else ROOT / "benchmarks" / "results" / "gpu_layer_times.md")
    final: dict = {}

    def write(rows: list[LayerTiming], setup: str, skipped: list[str], outputs: list[OutputTiming]) -> None:
        final.update(text=report(rows, setup, skipped, outputs))
        if out is not None:
            write_text_atomic(out, final["text"])
        if args.json is not None:
            write_text_atomic(args.json, json.dumps({"setup": setup, "skipped": skipped,
                                                     "rows": [asdict(r) for r in rows],
                                                     "output_rows": [asdict(o) for o in outputs]}, indent=1))

    measure(cases, seq, gpu, args.warmup, args.iters, on_row=write,
            progress=lambda line: print(line, file=sys.stderr, flush=True), output_cases=output_cases)
    print(final.get("text", "no case was measured"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
