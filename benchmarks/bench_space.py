"""Enumerate and judge the full default space for the issue's three cases; print a table.

Usage: python benchmarks/bench_space.py [--repeats N]
Target: each full space in under 1 s on one core. Each time covers enumeration, every constraint
rule including the memory model (the `memory` rule), and ranking the survivors with the cost model
(plus their predicted peak memory), as `autotune space` does.
"""

from __future__ import annotations

import argparse
import os
import time

# One core: keep numpy's BLAS (unused here, but imported) from spreading.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from autotune.cluster import ClusterSpec  # noqa: E402
from autotune.config import Workload  # noqa: E402
from autotune.cost_ranking import rank_space  # noqa: E402
from autotune.model_catalog import get_model  # noqa: E402
from autotune.space import enumerate_space  # noqa: E402
from autotune.space_files import default_space  # noqa: E402

CASES = [
    ("qwen3-235b", 256, Workload(seq_length=4096, global_batch_size=8192)),
    ("deepseek-v3", 1024, Workload(seq_length=4096, global_batch_size=8192)),
    ("llama3.1-405b", 16384, Workload(seq_length=8192, global_batch_size=16384)),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    table = Table(title=f"Full default space: enumerate + rules + memory + cost ranking ({args.repeats} runs, 1 core)")
    for col in ("model", "GPUs", "seq", "GBS", "candidates", "feasible (incl. memory)", "cold s", "warm s", "configs/s (cold)",
                "< 1 s"):
        table.add_column(col, justify="right")
    for name, n, workload in CASES:
        model, cluster = get_model(name), ClusterSpec.build(n)
        space = default_space(model)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            result = enumerate_space(space, model, cluster, workload)
            rank_space(result)
            times.append(time.perf_counter() - t0)
        # Cold = the first run in this process (per-(PP, VPP) pipeline splits not yet cached).
        cold, warm = times[0], min(times)
        table.add_row(name, str(n), str(workload.seq_length), str(workload.global_batch_size),
                      f"{result.num_candidates:,}", f"{result.num_feasible:,}", f"{cold:.3f}", f"{warm:.3f}",
                      f"{result.num_candidates / cold:,.0f}", "yes" if cold < 1 else "NO")
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
