"""Ask Megatron Core itself whether configs are valid (run as a script, one process for all configs).

Usage: python tests/megatron_verdict.py IN.json OUT.json
IN holds a list of {"model": name, "num_gpus": N, "parallel": {...}, "workload": {...}}, with an optional
"model_update" of ModelSpec fields (e.g. {"mtp_num_layers": 1}).
For each config this process pretends to be rank 0 of N with torch's fake process group, then runs
the Megatron code that would refuse it, in the order a real run meets it:
  1. TransformerConfig / ModelParallelConfig __post_init__ (the warning "sequence parallelism must be
     used" for TP x EP is raised as an error: Megatron-LM's arguments.py asserts it);
  2. parallel_state.initialize_model_parallel (world-size divisibility, VPP needs PP > 1);
  3. get_num_layers_to_build for every (pp_rank, vp_stage) (pipeline split);
  4. building this rank's GPTModel chunks (TP / EP / ETP divisibility of every linear layer);
  5. the micro-batch calculator (global batch divisibility);
  6. get_batch_on_this_cp_rank on a dummy batch (sequence split into 2 x CP chunks);
  7. the interleaved schedule's entry checks (stopped at the first forward step).
Writes a list of {"ok": bool, "stage": str, "error": str}.
"""

from __future__ import annotations

import json
import sys
import warnings


class _ReachedForward(Exception):
    """Raised by the dummy forward step: every schedule check before it passed."""


def _verdict(item: dict, torch, dist, FakeStore) -> dict:
    from megatron.core import parallel_state as ps
    from megatron.core.num_microbatches_calculator import ConstantNumMicroBatchesCalculator
    from megatron.core.transformer.transformer_block import get_num_layers_to_build
    from megatron.core.utils import get_batch_on_this_cp_rank

    from autotune.config import ParallelConfig, Workload
    from autotune.model_catalog import get_model
    from trial_runner.model_builder import build_model_chunks, transformer_config

    model = get_model(item["model"]).model_copy(update=item.get("model_update", {}))
    parallel = ParallelConfig(**item["parallel"])
    workload = Workload(**item["workload"])
    n = item["num_gpus"]
    stage = "transformer_config"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*sequence parallelism must be used.*")
            config = transformer_config(model, parallel, dtype=torch.float32, use_cpu_initialization=True)
        stage = "initialize_model_parallel"
        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=n)
        ps.initialize_model_parallel(
            tensor_model_parallel_size=parallel.tp, pipeline_model_parallel_size=parallel.pp,
            virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
            context_parallel_size=parallel.cp, expert_model_parallel_size=parallel.ep,
            expert_tensor_parallel_size=parallel.etp, create_gloo_process_groups=False,
        )
        stage = "get_num_layers_to_build"
        vpp = config.virtual_pipeline_model_parallel_size
        for pp_rank in range(parallel.pp):
            for vp in (range(vpp) if vpp else [None]):
                get_num_layers_to_build(config, vp_stage=vp, pp_rank=pp_rank)
        stage = "build_model"
        # The local layer spec's norm refuses sequence_parallel unless patched; the CPU compat layer
        # patches it exactly as a trial does.
        chunks = build_model_chunks(model, parallel, seq_length=workload.seq_length)
        stage = "num_microbatches_calculator"
        dp = ps.get_data_parallel_world_size()
        calc = ConstantNumMicroBatchesCalculator(workload.global_batch_size, parallel.micro_batch_size, dp,
                                                 decrease_batch_size_if_needed=False, rank=0)
        num_micro = calc.get()
        if parallel.cp > 1:
            stage = "get_batch_on_this_cp_rank"
            s = workload.seq_length
            get_batch_on_this_cp_rank({"tokens": torch.zeros(1, s, dtype=torch.long)})
        if vpp:
            stage = "interleaved_schedule"
            from megatron.core.pipeline_parallel.schedules import forward_backward_pipelining_with_interleaving

            def forward_step(data_iterator, model, *args, **kwargs):
                raise _ReachedForward()

            for c in chunks:
                c.config.no_sync_func = None
            try:
                forward_backward_pipelining_with_interleaving(
                    forward_step_func=forward_step, data_iterator=[iter([]) for _ in chunks], model=chunks,
                    num_microbatches=num_micro, seq_length=workload.seq_length,
                    micro_batch_size=parallel.micro_batch_size, forward_only=False,
                )
            except _ReachedForward:
                pass
        return {"ok": True, "stage": "", "error": ""}
    except Exception as exc:  # noqa: BLE001 - every refusal is the verdict we want to record
        return {"ok": False, "stage": stage, "error": f"{type(exc).__name__}: {exc}"[:400]}
    finally:
        if ps.model_parallel_is_initialized():
            ps.destroy_model_parallel()
        if dist.is_initialized():
            dist.destroy_process_group()


def main(argv: list[str]) -> None:
    import torch
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from trial_runner import cpu_compat

    items = json.loads(open(argv[1]).read())
    mode = cpu_compat.enable()
    with mode:
        results = [_verdict(item, torch, dist, FakeStore) for item in items]
    with open(argv[2], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv)
