"""Which layers each pipeline rank holds, and how many micro-batches each keeps in flight.

Both feed the memory model. Layer counts per [pp_rank][vpp_rank] come from pipeline.layers_per_chunk
(Megatron's get_num_layers_to_build); which of them are the leading dense layers of an MoE model
follows the global layer offset of each virtual stage (transformer_layer.py::get_transformer_layer_offset:
virtual stage index = vpp_rank * PP + pp_rank). In-flight micro-batches follow
megatron/core/pipeline_parallel/schedules.py::get_pp_rank_microbatches (megatron-core 0.16.1).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from autotune.config import ParallelConfig
from autotune import pipeline


@dataclass(frozen=True)
class ChunkLayers:
    """Decoder layers on each [pp_rank][vpp_rank] chunk, split into dense and MoE layers."""

    dense: np.ndarray  # int, shape (PP, VPP)
    moe: np.ndarray  # int, shape (PP, VPP)
    # Multi-token-prediction layers, shape (PP, VPP): in the last virtual stage of the last rank, or where an
    # explicit layout puts its 'm' (GPTModel.mtp_process; a layout may give them a rank of their own).
    mtp: np.ndarray

    @property
    def pp(self) -> int:
        return self.dense.shape[0]

    @property
    def vpp(self) -> int:
        return self.dense.shape[1]


@functools.lru_cache(maxsize=4096)
def chunk_layers(num_layers: int, num_dense_layers: int, parallel: ParallelConfig,
                 mtp_num_layers: int = 0) -> ChunkLayers:
    """Dense and MoE layer counts per chunk. `num_dense_layers` are the model's leading dense layers."""
    counts = np.asarray(pipeline.layers_per_chunk(num_layers, parallel), dtype=np.int64)  # (PP, V)
    pp, v = counts.shape
    in_virtual_order = counts.T.reshape(-1)  # index = vpp_rank * PP + pp_rank
    offsets = (np.cumsum(in_virtual_order) - in_virtual_order).reshape(v, pp).T
    dense = np.clip(num_dense_layers - offsets, 0, counts)
    mtp = np.zeros_like(counts)
    if parallel.pipeline_model_parallel_layout is not None:
        stages = pipeline.parse_layout(parallel.pipeline_model_parallel_layout)
        mtp = np.asarray([[stages[k * pp + r].count("m") for k in range(v)] for r in range(pp)], dtype=np.int64)
    else:
        mtp[-1, -1] = mtp_num_layers
    return ChunkLayers(dense=dense, moe=counts - dense, mtp=mtp)


def chunk_layers_for(num_layers: int, num_dense_layers: int, pp: int, vpp: int, split: int, first: int,
                     last: int, emb_slot: int, loss_slot: int, mtp_num_layers: int = 0) -> ChunkLayers:
    """The same from the integer knob encoding used by constraints.Knobs (split 3 = layout is not handled)."""
    parallel = ParallelConfig(
        pipeline_model_parallel_size=pp, virtual_pipeline_model_parallel_size=vpp if vpp > 1 else None,
        num_layers_in_first_pipeline_stage=first if split == 2 and first > 0 else None,
        num_layers_in_last_pipeline_stage=last if split == 2 and last > 0 else None,
        account_for_embedding_in_pipeline_split=bool(emb_slot), account_for_loss_in_pipeline_split=bool(loss_slot),
    )
    return chunk_layers(num_layers, num_dense_layers, parallel, mtp_num_layers)


def in_flight_units(num_microbatches, pp: int, vpp: int) -> np.ndarray:
    """Forward passes whose activations a rank holds at its peak, per [pp_rank][vpp_rank] chunk.

    `num_microbatches` may be an int or an array of shape (n, 1); the result has shape (n, PP, VPP).
    Warm-up count: 1F1B stage r runs PP - r - 1 forwards, then one more before its first backward,
    so it holds min(PP - r, M) micro-batches. Interleaved: 2 (PP - r - 1) + (VPP - 1) PP warm-up
    forwards (microbatch_group_size_per_vp_stage = PP), capped at M * VPP; the forwards visit chunk
    (u // PP) % VPP, so we count how many of the first (warm-up + 1) land on each chunk.
    """
    m = np.asarray(num_microbatches, dtype=np.int64).reshape(-1, 1, 1)
    r = np.arange(pp).reshape(1, pp, 1)
    c = np.arange(vpp).reshape(1, 1, vpp)
    total = m * vpp
    if pp == 1:
        warmup = np.zeros_like(r)
    elif vpp == 1:
        warmup = pp - r - 1
    else:
        warmup = 2 * (pp - r - 1) + (vpp - 1) * pp
    units = np.minimum(np.minimum(warmup, total) + 1, total)
    cycle = pp * vpp
    return (units // cycle) * pp + np.clip(units % cycle - c * pp, 0, pp)
