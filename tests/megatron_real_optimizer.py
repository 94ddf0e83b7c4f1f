"""Run Megatron Core's REAL optimizer on CPU gloo processes and report what each rank allocates.

`python -m tests.megatron_real_optimizer < cases.json > results.json`. Spawns as many processes as
the largest case needs (torch.multiprocessing; gloo with a FileStore rendezvous per case; the CPU
patches of trial_runner/cpu_compat.py). For each case, each of its `num_gpus` ranks builds its
GPTModel chunks in bf16, wraps them as Megatron-LM does (Float16Module, then DistributedDataParallel
with fp32 grad buffers), builds the optimizer with megatron.core.optimizer.get_megatron_optimizer(
OptimizerConfig(optimizer='adam', bf16=True, ...)), trains one step (one micro-batch through
Megatron's schedule, 1F1B when PP > 1), and reports in bytes:

- "master": the fp32 params the inner optimizer updates (distributed: this rank's shard; otherwise
  an fp32 copy of every local param);
- "exp_avg", "exp_avg_sq": Adam's state tensors of those params;
- "step_tensors": how many per-param `step` tensors torch's Adam keeps (0-d, on the host; the
  fused GPU Adams keep one counter per group), reported, not compared;
- "grad_buffer": every DDP grad buffer (grad_data), padding included;
- "param_buffer": the bf16 param buffer the distributed optimizer gathers into (0 without it).

Each case is {"model": ModelSpec dict, "parallel": ParallelConfig dict, "num_gpus": N,
"seq_length": S}; each result is a list with one dict per global rank.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile


def _rank_main(rank: int, cases: list[dict], tmp: str) -> None:
    """One process serves every case (imports are the slow part); ranks beyond a case's world idle."""
    from trial_runner import cpu_compat
    from trial_runner.procs import die_with_parent

    die_with_parent()  # a rank never outlives the probe (e.g. when pytest's timeout kills it)

    mode = cpu_compat.enable()
    for i, case in enumerate(cases):
        if rank >= case["num_gpus"]:
            continue
        with mode:
            result = _measure(rank, case, os.path.join(tmp, f"store{i}"))
        with open(os.path.join(tmp, f"{i}-{rank}.json"), "w") as f:
            json.dump(result, f)


def _measure(rank: int, case: dict, store_path: str) -> dict:
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.distributed.finalize_model_grads import finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    from megatron.core.transformer.module import Float16Module

    from autotune.config import ParallelConfig
    from autotune.model_spec import ModelSpec
    from trial_runner.model_builder import build_model_chunks

    model_spec = ModelSpec.from_dict(case["model"])
    p = ParallelConfig(**case["parallel"])
    n, seq = case["num_gpus"], case["seq_length"]
    if p.cp != 1 or p.virtual_pipeline_model_parallel_size:
        raise ValueError("this probe runs neither CP nor the interleaved schedule: pass cp 1 and no vpp")
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=n)
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=p.tp, pipeline_model_parallel_size=p.pp, context_parallel_size=p.cp,
        expert_model_parallel_size=p.ep, expert_tensor_parallel_size=p.etp)
    model_parallel_cuda_manual_seed(1234)
    torch.manual_seed(1234)
    chunks = build_model_chunks(model_spec, p, seq_length=seq, dtype=torch.bfloat16)
    config = chunks[0].config
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                               use_distributed_optimizer=p.use_distributed_optimizer)
    # As megatron/training/training.py::get_model: Float16Module, then DDP (first chunk bucketed).
    model = [DistributedDataParallel(config=config, ddp_config=ddp_config, module=Float16Module(config, c),
                                     disable_bucketing=i > 0) for i, c in enumerate(chunks)]
    for m in model:
        m.broadcast_params()
    optimizer = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=1e-4, weight_decay=0.0, bf16=True, params_dtype=torch.bfloat16,
                        use_distributed_optimizer=p.use_distributed_optimizer),
        model)
    config.finalize_model_grads_func = finalize_model_grads
    config.grad_scale_func = optimizer.scale_loss
    config.no_sync_func = model[0].no_sync

    gen = torch.Generator().manual_seed(parallel_state.get_data_parallel_rank())
    tokens = torch.randint(0, model_spec.vocab_size, (1, seq + 1), generator=gen)
    batch = {"tokens": tokens[:, :-1].contiguous(), "labels": tokens[:, 1:].contiguous(),
             "position_ids": torch.arange(seq).unsqueeze(0)}

    def forward_step(data_iterator, module):
        b = next(data_iterator)
        output = module(b["tokens"], b["position_ids"], attention_mask=None, labels=b["labels"])

        def loss_func(output_tensor):
            loss_sum = output_tensor.float().sum()
            return loss_sum, torch.tensor(seq, dtype=torch.int), {"lm loss": loss_sum.detach()}

        return output, loss_func

    for m in model:
        m.zero_grad_buffer()
    optimizer.zero_grad()
    get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter([batch]), model=model[0],
                                num_microbatches=1, seq_length=seq, micro_batch_size=1, decoder_seq_length=seq,
                                forward_only=False)
    update_successful, _, _ = optimizer.step()

    master = exp_avg = exp_avg_sq = steps = 0
    inner = [o.optimizer for o in getattr(optimizer, "chained_optimizers", [optimizer])]
    model_storages = {q.untyped_storage().data_ptr() for m in model for q in m.parameters()}
    for opt in inner:
        for group in opt.param_groups:
            for q in group["params"]:
                if q.dtype != torch.float32 or q.untyped_storage().data_ptr() in model_storages:
                    raise RuntimeError("expected fp32 master copies distinct from the bf16 model params")
                master += q.numel() * q.element_size()
                state = opt.state.get(q, {})
                exp_avg += state["exp_avg"].numel() * state["exp_avg"].element_size()
                exp_avg_sq += state["exp_avg_sq"].numel() * state["exp_avg_sq"].element_size()
                steps += int(torch.is_tensor(state.get("step")))
    grad_buffer = param_buffer = 0
    for m in model:
        for buf in m.buffers + m.expert_parallel_buffers:
            grad_buffer += buf.grad_data.numel() * buf.grad_data.element_size()
            if buf.param_data is not None:
                param_buffer += buf.param_data.numel() * buf.param_data.element_size()
    result = {"rank": rank, "master": master, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq, "step_tensors": steps,
              "grad_buffer": grad_buffer, "param_buffer": param_buffer, "update_successful": bool(update_successful),
              "optimizer": type(optimizer).__name__}
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()
    return result


def run_cases(cases: list[dict]) -> list[list[dict]]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank_main, args=(cases, tmp), nprocs=max(c["num_gpus"] for c in cases), join=True)
        out = []
        for i, case in enumerate(cases):
            ranks = []
            for rank in range(case["num_gpus"]):
                with open(os.path.join(tmp, f"{i}-{rank}.json")) as f:
                    ranks.append(json.load(f))
            out.append(ranks)
    return out


def main() -> None:
    cases = json.load(sys.stdin)
    json.dump(run_cases(cases), sys.stdout)


if __name__ == "__main__":
    main()
