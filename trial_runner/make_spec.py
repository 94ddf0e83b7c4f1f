"""Write a TrialSpec JSON from flags, for running one trial by hand.

    python -m trial_runner.make_spec --model tiny-dense --num-gpus 2 --backend cpu \\
        --tensor-model-parallel-size 2 --seq-length 64 --global-batch-size 8 > spec.json

Every ParallelConfig field is a flag with Megatron's name (dashes for underscores).
"""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from autotune.config import JobConfig, ParallelConfig, Workload
from autotune.errors import AutotuneError
from autotune.model_catalog import get_model
from trial_runner.spec import TrialSpec


def _parse_value(text: str):
    lowered = text.lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(text)
    except ValueError:
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trial_runner.make_spec", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="catalog model name, e.g. tiny-dense, llama3-8b")
    parser.add_argument("--num-gpus", required=True, type=int, help="world size (ranks)")
    parser.add_argument("--backend", choices=["cpu", "gpu"], default="gpu")
    parser.add_argument("--seq-length", type=int, default=4096)
    parser.add_argument("--global-batch-size", type=int, default=64)
    parser.add_argument("--precision", choices=["bf16", "fp8"], default="bf16")
    parser.add_argument("--warmup-iters", type=int, default=2)
    parser.add_argument("--measured-iters", type=int, default=3)
    parser.add_argument("--time-limit-s", type=float, default=600.0)
    parser.add_argument("--memory-cap-gib", type=float, default=None)
    parser.add_argument("--seed", type=int, default=1234)
    for name in ParallelConfig.model_fields:
        parser.add_argument("--" + name.replace("_", "-"), type=_parse_value, default=argparse.SUPPRESS,
                            help=f"ParallelConfig.{name}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    knobs = {k: args.pop(k) for k in list(args) if k in ParallelConfig.model_fields}
    try:
        job = JobConfig(num_gpus=args["num_gpus"], parallel=ParallelConfig(**knobs),
                        workload=Workload(seq_length=args["seq_length"], global_batch_size=args["global_batch_size"],
                                          precision=args["precision"]))
        spec = TrialSpec(model=get_model(args["model"]), job=job, backend=args["backend"],
                         warmup_iters=args["warmup_iters"], measured_iters=args["measured_iters"],
                         time_limit_s=args["time_limit_s"], memory_cap_gib=args["memory_cap_gib"], seed=args["seed"])
    except ValidationError as exc:
        rules = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']} (got {e['input']!r})"
                          for e in exc.errors())
        print(f"error: {rules}", file=sys.stderr)
        return 2
    except (AutotuneError, ValueError) as exc:
        print(f"error: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    print(spec.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
