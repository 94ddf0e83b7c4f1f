"""Build real Megatron Core GPTModel chunks for every rank of a job in ONE process, with torch's fake
process group (each rank pretends to be rank r of N; collectives are no-ops), and report what each
rank allocates: parameters, its DDP grad-buffer elements, and its distributed-optimizer shard.

Run as a script (`python -m tests.megatron_fake_rank < cases.json > results.json`) so the CPU
patches of trial_runner/cpu_compat.py stay out of the pytest process. Each case is
{"model": ModelSpec dict, "parallel": ParallelConfig dict, "num_gpus": N, "seq_length": S,
 "optimizer": bool, "ddp": {"overlap_grad_reduce": bool, "bucket_size": int} (optional)}; each result is
{"params": [per rank], "buffers": [per rank {"grad_buffer": n, "optimizer": [dense, expert]}] or null}.
"""

from __future__ import annotations

import json
import sys


def _buffers(chunks, parallel, ddp: dict) -> dict:
    """What Megatron's DDP buffers and optimizer hold on this rank, in elements.

    "grad_buffer": elements of every DDP grad buffer (dense and expert, all chunks, padding
    included). "weights_bytes": bytes of the bf16 weights, padding of the param buffer included. "optimizer": (dense, expert) fp32 master-weight elements; Adam's exp_avg and
    exp_avg_sq are allocated like the master weights, so these fix all 12 bytes/param. Without the
    distributed optimizer Float16OptimizerWithFloat16Params clones every param; with it, each rank
    owns the params in its 1/DP slice of every DDP bucket, as computed by
    DistributedOptimizer._build_gbuf_range_map on the real DDP buffers (the real optimizer needs
    gloo groups, which the fake process group cannot create; tests/megatron_real_optimizer.py
    runs it for real on a few configs).
    """
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    dense = expert = grad = weights = 0
    for i, chunk in enumerate(chunks):
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, use_distributed_optimizer=parallel.use_distributed_optimizer,
            overlap_grad_reduce=ddp.get("overlap_grad_reduce", False), bucket_size=ddp.get("bucket_size"))
        # Megatron-LM buckets only the first chunk (megatron/training/training.py::get_model).
        module = DistributedDataParallel(config=chunk.config, ddp_config=ddp_config, module=chunk,
                                         disable_bucketing=i > 0)
        for buffers, is_expert in ((module.buffers, False), (module.expert_parallel_buffers, True)):
            for buf in buffers:
                grad += buf.grad_data.numel()
                # With the distributed optimizer the params are views into one padded param buffer
                # (param_and_grad_buffer.py: param_data); without it each param is its own tensor.
                weights += (buf.param_data.numel() * buf.param_data.element_size() if buf.param_data is not None
                            else sum(q.numel() * q.element_size() for q in buf.params))
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
    return {"grad_buffer": grad, "optimizer": [dense, expert], "weights_bytes": weights}


def run_case(case: dict) -> dict:
    import torch
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from megatron.core import parallel_state
    from megatron.core.transformer.module import Float16Module
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from autotune.config import ParallelConfig
    from autotune.model_spec import ModelSpec
    from autotune.pipeline import megatron_virtual_stages
    from trial_runner.model_builder import build_model_chunks, count_local_parameters

    model = ModelSpec.from_dict(case["model"])
    parallel = ParallelConfig(**case["parallel"])
    n = case["num_gpus"]
    params, buffers = [], []
    for rank in range(n):
        dist.init_process_group("fake", rank=rank, world_size=n, store=FakeStore())
        try:
            parallel_state.initialize_model_parallel(
                tensor_model_parallel_size=parallel.tp, pipeline_model_parallel_size=parallel.pp,
                virtual_pipeline_model_parallel_size=megatron_virtual_stages(parallel),
                context_parallel_size=parallel.cp, expert_model_parallel_size=parallel.ep,
                expert_tensor_parallel_size=parallel.etp, create_gloo_process_groups=False)
            model_parallel_cuda_manual_seed(1234)
            dtype = torch.bfloat16 if case.get("optimizer") else torch.float32
            chunks = build_model_chunks(model, parallel, seq_length=case["seq_length"], dtype=dtype)
            params.append(count_local_parameters(chunks))
            if case.get("optimizer"):
                # Megatron-LM wraps bf16 models in Float16Module (training.py::get_model), which casts
                # every param to bf16; without it the CPU's torch norms would keep fp32 weights in a
                # buffer of their own (Transformer Engine's norms are created in params_dtype).
                wrapped = [Float16Module(c.config, c) for c in chunks]
                buffers.append(_buffers(wrapped, parallel, case.get("ddp", {})))
        finally:
            parallel_state.destroy_model_parallel()
            dist.destroy_process_group()
    return {"params": params, "buffers": buffers if case.get("optimizer") else None}


def main() -> None:
    from trial_runner import cpu_compat

    mode = cpu_compat.enable()
    cases = json.load(sys.stdin)
    with mode:
        results = [run_case(c) for c in cases]
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
