"""A pure-torch core attention that supports context parallelism, for the CPU backend only.

Megatron's local `DotProductAttention` refuses context_parallel_size > 1 ("only supported by
TEDotProductAttention"), and TE needs a GPU. This module all-gathers K and V over the CP group
(autograd-aware, so the backward reduce-scatters their grads) and applies the causal mask in
*global* token positions. It follows Megatron's load-balanced CP layout
(megatron/core/utils.py::get_batch_on_this_cp_rank): the sequence is cut into 2*CP chunks and
CP rank r holds chunks r and 2*CP-1-r. It is all-gather CP, not ring attention, so it measures
correctness and communication volume of CP on CPU, not TE's overlap.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.transformer.module import MegatronModule


def cp_chunk_positions(seq_local: int, cp_size: int, cp_rank: int) -> torch.Tensor:
    """Global positions of the tokens a CP rank holds, in its local order."""
    chunk = seq_local // 2
    first = torch.arange(cp_rank * chunk, (cp_rank + 1) * chunk)
    second_start = (2 * cp_size - cp_rank - 1) * chunk
    second = torch.arange(second_start, second_start + chunk)
    return torch.cat([first, second])


class _AllGather(torch.autograd.Function):
    """All-gather along a new leading dim; backward sums every rank's gradient for our shard.

    torch.distributed.nn.functional.all_gather cannot be used: on gloo its backward falls back to
    scatter calls whose `src` is a group rank passed where a global rank is expected, which fails
    for any CP group that does not contain global rank 0 (e.g. CP2 x EP4 on 4 ranks). gloo has no
    reduce_scatter, so the backward all-reduces the gathered gradient and keeps our slice.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        ctx.rank = torch.distributed.get_rank(group)
        world = torch.distributed.get_world_size(group)
        parts = [torch.empty_like(x) for _ in range(world)]
        torch.distributed.all_gather(parts, x.contiguous(), group=group)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        torch.distributed.all_reduce(grad, group=ctx.group)
        return grad[ctx.rank], None


class AllGatherCPAttention(MegatronModule):
    """Drop-in for the local spec's core attention (same constructor and forward signature)."""

    def __init__(self, config, layer_number, attn_mask_type, attention_type, attention_dropout=None,
                 softmax_scale=None, cp_comm_type=None, pg_collection=None):
        super().__init__(config=config)
        tp = parallel_state.get_tensor_model_parallel_world_size()
        self.num_heads = config.num_attention_heads // tp
        # With TP above the KV-group count Megatron replicates the groups: one per rank (attention.py).
        self.num_groups = max(1, config.num_query_groups // tp)
        self.softmax_scale = softmax_scale or 1.0 / math.sqrt(config.kv_channels)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        self.cp_group = parallel_state.get_context_parallel_group()
        self.cp_size = parallel_state.get_context_parallel_world_size()
        self.cp_rank = parallel_state.get_context_parallel_rank()

    def _gather_seq(self, x: torch.Tensor) -> torch.Tensor:
        """[s_local, b, g, d] from every CP rank -> [s_global, b, g, d] in global token order."""
        parts = _AllGather.apply(x, self.cp_group)
        half = x.shape[0] // 2
        chunks: list[torch.Tensor | None] = [None] * (2 * self.cp_size)
        for rank, part in enumerate(parts):
            chunks[rank] = part[:half]
            chunks[2 * self.cp_size - rank - 1] = part[half:]
        return torch.cat(chunks, dim=0)

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if packed_seq_params is not None or attention_bias is not None:
            raise NotImplementedError("AllGatherCPAttention supports neither packed sequences nor attention bias")
        seq_local = query.shape[0]
        key, value = self._gather_seq(key), self._gather_seq(value)
        q_pos = cp_chunk_positions(seq_local, self.cp_size, self.cp_rank).to(query.device)
        k_pos = torch.arange(key.shape[0], device=query.device)
        allowed = k_pos[None, :] <= q_pos[:, None]  # causal in global positions
        rep = self.num_heads // self.num_groups
        # [s, b, h, d] -> [b, h, s, d] for SDPA; GQA: repeat each KV group over its query heads.
        q = query.permute(1, 2, 0, 3)
        k = key.repeat_interleave(rep, dim=2).permute(1, 2, 0, 3)
        v = value.repeat_interleave(rep, dim=2).permute(1, 2, 0, 3)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout_p if self.training else 0.0, scale=self.softmax_scale
        )
        # [b, h, s, d] -> [s, b, h*d], the layout the output projection expects.
        return out.permute(2, 0, 1, 3).reshape(seq_local, query.shape[1], -1)
