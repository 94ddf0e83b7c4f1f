"""Short, real Megatron Core training runs that measure one config's throughput and peak memory.

`run_trial(spec, nproc, out_path)` (trial_runner.launch) is the entry point; torch and megatron
are imported only inside the worker processes it starts.
"""
