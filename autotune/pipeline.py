"""How Megatron splits decoder layers over pipeline stages and virtual chunks.

Mirrors megatron/core/transformer/transformer_block.py::get_num_layers_to_build, the split checks
in transformer_config.py::__post_init__ and pipeline_parallel_layer_layout.py (megatron-core 0.16.1),
so the memory and cost models see the same per-stage layer counts that Megatron builds.
"""

from __future__ import annotations

import functools
import re

from autotune.config import ParallelConfig

_LAYOUT_CHARS = {"E", "L", "t", "m"}


def parse_layout(layout: str) -> list[list[str]]:
    """Expand a layout string ('Et|(tt|)*30L') into one list of layer chars per virtual stage.

    Same grammar as PipelineParallelLayerLayout.parse_str_to_list: commas are cosmetic,
    '(...)*n' and 'x*n' repeat, '|' separates stages.
    """
    s = layout.replace(",", "")
    s = re.sub(r"\(([^)]+)\)\*(\d+)", lambda m: m.group(1) * int(m.group(2)), s)
    s = re.sub(r"(.)\*(\d+)", lambda m: m.group(1) * int(m.group(2)), s)
    stages = [list(stage) for stage in s.split("|")]
    bad = {ch for stage in stages for ch in stage} - _LAYOUT_CHARS
    if bad:
        raise ValueError(f"invalid layout characters {sorted(bad)}; known: E (embedding), t, m (MTP), L (loss)")
    return stages


def layout_error(layout: str, num_layers: int, pp: int, vpp: int | None, mtp_num_layers: int = 0) -> str | None:
    """Megatron's checks on an explicit layout, or None when it is valid."""
    try:
        stages = parse_layout(layout)
    except ValueError as exc:
        return str(exc)
    if len(stages) % pp:
        return f"layout has {len(stages)} stages, not divisible by pipeline_model_parallel_size={pp}"
    detected = len(stages) // pp
    if vpp is not None and vpp != detected:
        return f"layout implies virtual_pipeline_model_parallel_size={detected}, config says {vpp}"
    flat = [ch for stage in stages for ch in stage]
    if not flat or flat[0] != "E" or flat[-1] != "L" or flat.count("E") != 1 or flat.count("L") != 1:
        return "layout must start with E (embedding) and end with L (loss), each exactly once"
    if flat.count("t") != num_layers:
        return f"layout places {flat.count('t')} decoder layers, the model has {num_layers}"
    # PipelineParallelLayerLayout.validate_layer_layout's MTP checks: as many 'm' as MTP layers, all after the
    # last decoder layer, in one virtual stage, and only in the last virtual stage of a rank.
    if flat.count("m") != mtp_num_layers:
        return (f"layout places {flat.count('m')} MTP layers ('m'), the model has {mtp_num_layers}; "
                f"add or remove 'm' after the last 't'")
    if mtp_num_layers:
        if "t" in flat[flat.index("m"):]:
            return "decoder layers ('t') must come before the MTP layers ('m') in the layout"
        v = len(stages) // pp
        holders = [i for i, stage in enumerate(stages) if "m" in stage]
        if len(holders) > 1:
            return "all MTP layers ('m') must be in the same virtual stage of the layout"
        if holders[0] // pp != v - 1:
            return "the MTP layers ('m') must be in the last virtual stage of their pipeline rank"
    return None


def split_error(num_layers: int, p: ParallelConfig, mtp_num_layers: int = 0) -> str | None:
    """Why Megatron rejects this pipeline split, or None when it accepts it."""
    pp, vpp = p.pp, p.virtual_pipeline_model_parallel_size
    first, last = p.num_layers_in_first_pipeline_stage, p.num_layers_in_last_pipeline_stage
    accounts = p.account_for_embedding_in_pipeline_split or p.account_for_loss_in_pipeline_split
    if p.pipeline_model_parallel_layout is not None:
        if first or last or accounts:
            return "pipeline_model_parallel_layout cannot be combined with other pipeline split options"
        return layout_error(p.pipeline_model_parallel_layout, num_layers, pp, vpp, mtp_num_layers)
    if (first or last) and accounts:
        return "num_layers_in_first/last_pipeline_stage cannot be combined with account_for_*_in_pipeline_split"
    v = vpp if (vpp is not None and pp > 1) else 1
    if first or last:
        middle_layers, middle_stages = num_layers, pp
        for n in (first, last):
            if n:
                if n % v:
                    return f"{n} layers on a first/last stage are not divisible by virtual_pipeline_model_parallel_size={v}"
                middle_layers -= n
                middle_stages -= 1
        if middle_layers < 0 or bool(middle_layers) != bool(middle_stages):
            return f"{middle_layers} middle layers remain for {middle_stages} middle stages"
        if middle_stages and middle_layers % middle_stages:
            return f"{middle_layers} middle layers are not divisible by {middle_stages} middle stages"
        if middle_stages and (middle_layers // middle_stages) % v:
            return (f"{middle_layers // middle_stages} layers per middle stage are not divisible by "
                    f"virtual_pipeline_model_parallel_size={v}")
        return None
    slots = num_layers + int(p.account_for_embedding_in_pipeline_split) + int(p.account_for_loss_in_pipeline_split)
    if slots % pp:
        what = "layers" if not accounts else "layer slots (embedding/loss counted as layers)"
        return f"{slots} {what} are not divisible by pipeline_model_parallel_size={pp}"
    if (slots // pp) % v:
        return f"{slots // pp} layers per stage are not divisible by virtual_pipeline_model_parallel_size={v}"
    return None


def megatron_virtual_stages(p: ParallelConfig) -> int | None:
    """virtual_pipeline_model_parallel_size as Megatron runs it: an explicit layout sets it itself
    (Megatron-LM arguments.py derives it from the layout's stage count; None when that is one per rank)."""
    if p.pipeline_model_parallel_layout is None:
        return p.virtual_pipeline_model_parallel_size
    v = len(parse_layout(p.pipeline_model_parallel_layout)) // p.pp
    return v if v > 1 else None


def layers_per_chunk(num_layers: int, p: ParallelConfig) -> list[list[int]]:
    """Decoder layers built on [pp_rank][vpp_rank]. The config must be valid (see split_error)."""
    pp, v = p.pp, (p.vpp if p.pp > 1 else 1)
    if p.pipeline_model_parallel_layout is not None:
        stages = parse_layout(p.pipeline_model_parallel_layout)
        v = len(stages) // pp
        # Layout entries run in virtual-stage order: index = vpp_rank * pp + pp_rank.
        return [[stages[k * pp + r].count("t") for k in range(v)] for r in range(pp)]
    first, last = p.num_layers_in_first_pipeline_stage, p.num_layers_in_last_pipeline_stage
    out = []
    for r in range(pp):
        if first or last:
            rest_layers = num_layers - (first or 0) - (last or 0)
            rest_stages = pp - (1 if first else 0) - (1 if last else 0)
            per_rank = rest_layers // rest_stages if rest_stages else 0
            if r == 0 and first:
                per_rank = first
            if r == pp - 1 and last:
                per_rank = last
        else:
            slots = num_layers + int(p.account_for_embedding_in_pipeline_split) + int(
                p.account_for_loss_in_pipeline_split)
            per_rank = slots // pp
        chunks = [per_rank // v] * v
        if p.account_for_embedding_in_pipeline_split and r == 0:
            chunks[0] -= 1
        if p.account_for_loss_in_pipeline_split and r == pp - 1:
            chunks[-1] -= 1
        out.append(chunks)
    return out


@functools.lru_cache(maxsize=4096)
def balanced_uneven_split(num_layers: int, pp: int, vpp: int = 1, mtp_num_layers: int = 0) -> tuple[int, int] | None:
    """(first, last) layer counts for the 'uneven' split option, or None when it adds nothing.

    The first and last stages also run the embedding and the loss, so they get fewer layers. We pick
    the (first, last) that Megatron accepts and that minimises the heaviest stage, counting the
    embedding and the loss as one layer each (the same weight Megatron's account_for_* options give
    them); ties go to the most even split. Each MTP layer runs on the last stage as one more layer and one
    more loss, so it weighs two. None when no uneven split is valid, or when the best one is the plain
    even split (then the option would only duplicate 'even').
    """
    if pp < 2:
        return None
    v = vpp if vpp > 1 else 1
    best: tuple[tuple[int, int], tuple[int, int]] | None = None
    upper = -(-num_layers // (pp - 1)) + v if pp > 2 else num_layers
    for first in range(v, upper + 1, v):
        for last in range(v, upper + 1, v):
            cfg = ParallelConfig(pipeline_model_parallel_size=pp,
                                 virtual_pipeline_model_parallel_size=vpp if vpp > 1 else None,
                                 num_layers_in_first_pipeline_stage=first, num_layers_in_last_pipeline_stage=last)
            if split_error(num_layers, cfg) is not None:
                continue
            middle = (num_layers - first - last) // (pp - 2) if pp > 2 else 0
            heaviest = max(first + 1, last + 1 + 2 * mtp_num_layers, middle)
            score = (heaviest, abs(first - last) + abs(middle - first) + abs(middle - last))
            if best is None or score < best[0]:
                best = (score, (first, last))
    if best is None:
        return None
    first, last = best[1]
    middle = (num_layers - first - last) // (pp - 2) if pp > 2 else None
    if first == last and (middle is None or middle == first):
        return None
    return best[1]
