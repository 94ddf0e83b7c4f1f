"""Build real Megatron Core GPTModel chunks for every rank of a job in ONE process, with torch's fake
process group (each rank pretends to be rank r of N; collectives are no-ops), and report what each
rank allocates: parameters, and the fp32 optimizer shard of Megatron's real optimizer.

Run as a script (`python -m tests.megatron_fake_rank < cases.json > results.json`) so the CPU
patches of trial_runner/cpu_compat.py stay out of the pytest process. Each case is
{"model": ModelSpec dict, "parallel": ParallelConfig dict, "num_gpus": N, "seq_length": S,
 "optimizer": bool}; each result is {"params": [per rank], "optimizer_fp32": [per rank] or null}.
"""

from __future__ import annotations

import json
import sys


def _optimizer_fp32_numel(chunks, parallel) -> tuple[int, int]:
    """(dense, expert) fp32 master-weight elements Megatron's optimizer keeps on this rank.

    Adam's exp_avg and exp_avg_sq are allocated like the master weights, so these fix all 12
    bytes/param. Without the distributed optimizer Float16OptimizerWithFloat16Params clones every
    param; with it, each rank owns the params in its 1/DP slice of every DDP bucket, as computed by
    DistributedOptimizer._build_gbuf_range_map on the real DDP buffers (the real optimizer needs gloo
    groups, which the fake process group cannot create).
    """
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, use_distributed_optimizer=parallel.use_distributed_optimizer)
    dense = expert = 0
    for chunk in chunks:
        ddp = DistributedDataParallel(config=chunk.config, ddp_config=ddp_config, module=chunk)
        for buffers, is_expert in ((ddp.buffers, False), (ddp.expert_parallel_buffers, True)):
            for buf in buffers:
                if parallel.use_distributed_optimizer:
                    ranges = DistributedOptimizer._build_gbuf_range_map(buf)
                    n = sum(r["param"].size for buckets in ranges.values() for b in buckets
                            for r in b["param_map"].values())
                else:
                    n = sum(p.numel() for p in buf.params)
                if is_expert:
                    expert += n
                else:
                    dense += n
    return dense, expert


def run_case(case: dict) -> dict:
    import torch
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from autotune.config import ParallelConfig
    from autotune.model_spec import ModelSpec
    from trial_runner.model_builder import build_model_chunks, count_local_parameters

    model = ModelSpec.from_dict(case["model"])
    parallel = ParallelConfig(**case["parallel"])
    n = case["num_gpus"]
    params, opt = [], []
    for rank in range(n):
        dist.init_process_group("fake", rank=rank, world_size=n, store=FakeStore())
        try:
            parallel_state.initialize_model_parallel(
                tensor_model_parallel_size=parallel.tp, pipeline_model_parallel_size=parallel.pp,
                virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
                context_parallel_size=parallel.cp, expert_model_parallel_size=parallel.ep,
                expert_tensor_parallel_size=parallel.etp, create_gloo_process_groups=False)
            model_parallel_cuda_manual_seed(1234)
            dtype = torch.bfloat16 if case.get("optimizer") else torch.float32
            chunks = build_model_chunks(model, parallel, seq_length=case["seq_length"], dtype=dtype)
            params.append(count_local_parameters(chunks))
            if case.get("optimizer"):
                opt.append(_optimizer_fp32_numel(chunks, parallel))
        finally:
            parallel_state.destroy_model_parallel()
            dist.destroy_process_group()
    return {"params": params, "optimizer_fp32": opt if case.get("optimizer") else None}


def main() -> None:
    from trial_runner import cpu_compat

    mode = cpu_compat.enable()
    cases = json.load(sys.stdin)
    with mode:
        results = [run_case(c) for c in cases]
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
