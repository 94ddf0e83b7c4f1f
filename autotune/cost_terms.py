"""The physical work of one training step, per GPU, for many configs at once: FLOPs, bytes, link times.

Nothing here depends on fitted constants: `cost.py` turns these quantities into seconds with a
handful of efficiencies, so calibration can re-combine them cheaply. Every quantity is a numpy
array over the configs of a `constraints.Knobs` (or a length-1 array for one config).

Shapes follow megatron-core 0.16.1:
- Attention: QKV / output projections split over TP (KV heads replicated when TP > query groups);
  MLA LoRA projections as in megatron/core/transformer/multi_latent_attention.py (down-projections
  are not TP-split).
- MoE: tokens are split over TP by sequence parallelism before dispatch, exchanged over the EP group,
  all-gathered over ETP (megatron/core/transformer/moe/token_dispatcher.py). The exchange is the alltoall
  dispatcher's (one copy per routed expert) or the flex dispatcher's HybridEP / DeepEP backend (one copy per
  destination node over the NIC, one per destination GPU over NVLink): see `ep_exchange_copies`.
- Rank placement is Megatron's default order tp-cp-ep-dp-pp for the dense mesh and etp-ep-edp-pp for
  the expert mesh (megatron/core/parallel_state.py::RankGenerator, the expert generator drops cp):
  TP is innermost (contiguous ranks), a CP group spans TP*CP consecutive ranks, an EP group spans
  ETP*EP consecutive ranks with stride ETP, DP and EDP span the N/PP ranks of a stage, and
  pipeline neighbours are N/PP ranks apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autotune import constraints as C
from autotune.cluster import ClusterSpec
from autotune.config import Workload
from autotune.model_spec import ModelSpec
from autotune.params import count_parameters, layer_params

_ADAM_BYTES_PER_PARAM = 30.0  # read grad+master+m+v (16), write master+m+v (12), write bf16 param (2)


def padded_vocab(model: ModelSpec, tp: np.ndarray) -> np.ndarray:
    """Megatron pads the vocabulary to a multiple of 128 * TP (make_vocab_size_divisible_by=128)."""
    mult = 128 * tp
    return np.ceil(model.vocab_size / mult) * mult


@dataclass(frozen=True, kw_only=True)
class LayerWork:
    """Forward work of one decoder layer for one micro-batch on one GPU."""

    linear_flops: np.ndarray  # (GEMMs, configs): each GEMM that runs in the training precision
    linear_bytes: np.ndarray  # (GEMMs, configs): operand + result bytes of each (its roofline memory term)
    routed_gemms: np.ndarray  # (GEMMs,) bool: routed-expert GEMMs, slowed by load imbalance
    imbalance_spread: np.ndarray  # busiest EP rank's load above the mean, per unit of per-expert CV
    cast_bytes: np.ndarray  # fp8 only: the quantised copies of the GEMM inputs Transformer Engine writes
    attention_flops: np.ndarray  # core attention (flash attention, always bf16)
    elementwise_bytes: np.ndarray  # norms, residuals, dense / shared-expert activation function (streaming, counted)
    moe_token_bytes: np.ndarray  # MoE token permutation and the routed experts' activation function (scaled by a fit)
    cp_correction_bytes: np.ndarray  # CP ring attention's per-step fp32 output rescaling (counted exactly)
    tp: np.ndarray  # tensor-parallel degree (the number of chunks TP comm overlap pipelines)
    # (GEMMs, configs): the TP (or ETP) collective that feeds or drains each GEMM, at nominal link bandwidth: the
    # all-gather of its sequence-split input, the reduce-scatter of its output (without SP: half of an all-reduce
    # each), zero for GEMMs with none. Overlap can hide a collective only behind its own GEMM (cost.combine).
    tp_comm_s: np.ndarray
    cp_link_s: np.ndarray  # CP ring exchange of K,V at nominal link bandwidth
    ep_nvlink_s: np.ndarray  # EP all-to-all dispatch + combine: the part to peers in the NVLink domain
    ep_internode_s: np.ndarray  # ... and the part to peers on other nodes (through the NIC), both nominal
    attention_key_len: np.ndarray  # keys one flash-attention call sees (s, or s/CP per ring step)
    attention_scores: np.ndarray  # score elements (full s x s per head) one GPU would form without flash attention


def _link_bw(span: np.ndarray, domain: int, cluster: ClusterSpec) -> np.ndarray:
    """Bytes/s of a collective over `span` consecutive ranks: NVLink inside the domain, else the NIC."""
    inside = (span <= domain) & (domain % np.maximum(span, 1) == 0)
    return np.where(inside, cluster.gpu.nvlink_bandwidth_gbps, cluster.gpu.internode_bandwidth_gbps) * 1e9


def _dp_collective_s(buffer_bytes: np.ndarray, group: np.ndarray, stride: np.ndarray,
                     cluster: ClusterSpec) -> np.ndarray:
    """Seconds of one reduce-scatter (or all-gather) of a `buffer_bytes` buffer over a group of `group` ranks
    spaced `stride` apart, at nominal link bandwidth.

    The members that share an NVLink domain (domain / stride of them, when the stride divides it) reach each
    other over NVLink; only what must leave the node crosses the NIC. Hierarchically (Jia et al. 2018,
    arXiv 1807.11205, hierarchical all-reduce), or with NCCL's rings, whose channels cross each node
    boundary through different NICs, a node's L members first reduce-scatter over NVLink
    ((L-1)/L of the buffer each), then each exchanges its 1/L share with its peers on the other nodes
    ((nodes-1)/nodes of it through its own NIC). The two stages pipeline chunk by chunk; the slower sets the
    time. One member per node (L = 1) is the plain ring over the NIC; one node is the plain NVLink ring.
    """
    domain = cluster.nvlink_domain_size
    stride = np.asarray(stride, dtype=float)
    per_node = np.where((stride <= domain) & (domain % np.maximum(stride, 1) == 0), domain / stride, 1.0)
    per_node = np.minimum(per_node, group)
    nodes = group / per_node
    nvlink = (per_node - 1) / per_node * buffer_bytes / (cluster.gpu.nvlink_bandwidth_gbps * 1e9)
    nic = (nodes - 1) / nodes * buffer_bytes / per_node / (cluster.gpu.internode_bandwidth_gbps * 1e9)
    return np.maximum(nvlink, nic)


class _Gemms:
    """The GEMMs of one layer, kept apart so each one gets its own roofline (cost.combine)."""

    def __init__(self, bytes_per_element: float, fp8: bool):
        self.flops: list = []
        self.bytes: list = []
        self.routed: list[bool] = []  # routed-expert GEMMs: their load follows the router
        self.comm: list = []  # seconds of the TP / ETP collective adjacent to each GEMM (LayerWork.tp_comm_s)
        self.cast_bytes: np.ndarray | float = 0.0
        self.bpe = bytes_per_element
        self.fp8 = fp8

    def add(self, m, k, n, count=1.0, routed: bool = False, comm_s=0.0) -> None:
        self.routed.append(routed)
        self.comm.append(comm_s)
        self.flops.append(2.0 * m * k * n * count)
        self.bytes.append((m * k + k * n + m * n) * self.bpe * count)
        if self.fp8:
            # Transformer Engine quantises each GEMM's activation input to fp8 and also writes its
            # transpose for the weight-gradient GEMM (transformer_engine/pytorch/module/linear.py):
            # 2 bytes written per input element, beyond what the bf16 GEMM touches. Weights are cast once
            # per step (is_first_microbatch caching) and not counted.
            self.cast_bytes = self.cast_bytes + 2.0 * m * k * count

    def stacked(self, shape) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        def stack(values):
            return np.stack([np.broadcast_to(np.asarray(v, dtype=float), shape) for v in values])
        return stack(self.flops), stack(self.bytes), np.asarray(self.routed, dtype=bool), stack(self.comm)


MOE_DISPATCHERS = ("alltoall", "hybridep", "deepep")


def _prob_none_chosen(num_experts: float, num_held: np.ndarray, topk: int) -> np.ndarray:
    """Probability that a token's top-k distinct experts, drawn uniformly from num_experts, miss a given set of
    num_held experts: C(E - n, k) / C(E, k) (uniform routing: what moe_router_force_load_balancing produces,
    and the mean of a balanced router)."""
    p = np.ones_like(num_held, dtype=float)
    for j in range(topk):
        p = p * np.maximum(num_experts - num_held - j, 0.0) / (num_experts - j)
    return p


def ep_exchange_copies(num_experts: int, topk: int, ep: np.ndarray, ranks_per_node: np.ndarray,
                       dispatcher: str) -> tuple[np.ndarray, np.ndarray]:
    """Hidden-state copies one token sends in one dispatch (the combine returns as many), split into the part
    over NVLink and the part through the NIC, for an EP group of `ep` GPUs with `ranks_per_node` of them in
    each NVLink domain.

    alltoall (MoEAlltoAllTokenDispatcher, megatron/core/transformer/moe/token_dispatcher.py): tokens are
    permuted per routed expert before torch's all-to-all, so each of the top-k copies travels to its expert's
    GPU, over the NIC when that GPU is on another node.

    hybridep / deepep (MoEFlexTokenDispatcher with moe_flex_dispatcher_backend='hybridep' or 'deepep'): a
    token crosses InfiniBand once per destination node, to the GPU with the same local rank there, which
    forwards it over NVLink to the GPUs on that node holding its experts (DeepEP docs/Hybrid-EP_Implementation.md
    Sec. 8: "Hybrid-EP first performs IB communication between peer GPUs, then each rank distributes the
    received inter-node data locally"; Megatron-LM moe/README.md: DeepEP "removes redundant tokens during
    cross-node communication"); a GPU gets one copy however many of its experts the token chose (expert
    permutation happens after the receive, dispatch_with_permute); the combine pre-reduces inside a node
    before the IB send (same doc, Sec. 8.2), so it moves as many bytes as the dispatch.
    """
    ep = np.asarray(ep, dtype=float)
    r = np.minimum(np.asarray(ranks_per_node, dtype=float), ep)
    nodes = ep / r
    if dispatcher == "alltoall":
        return topk * (r - 1) / ep, topk * (ep - r) / ep
    if dispatcher not in MOE_DISPATCHERS:
        raise ValueError(f"unknown MoE dispatcher {dispatcher!r}; expected one of {MOE_DISPATCHERS}")
    gpu_hit = 1.0 - _prob_none_chosen(float(num_experts), num_experts / ep, topk)
    node_hit = 1.0 - _prob_none_chosen(float(num_experts), num_experts * r / ep, topk)
    # NIC: one copy to each other node the token needs. NVLink: one copy to each GPU it needs other than
    # the one that holds it (its own, or the peer that received it over IB): r - 1 candidates per node.
    return (ep - nodes) * gpu_hit, (nodes - 1) * node_hit


def layer_work(model: ModelSpec, cluster: ClusterSpec, workload: Workload, k: C.Knobs, moe_layer: bool,
               moe_dispatcher: str = "alltoall", mtp: bool = False) -> LayerWork:
    """One decoder layer; `mtp` makes it a multi-token-prediction layer (the decoder layer plus its input
    projection and norms)."""
    s, h = float(workload.seq_length), float(model.hidden_size)
    tp, cp, ep, etp = (np.asarray(x, dtype=float) for x in (k.tp, k.cp, k.ep, k.etp))
    sp = np.asarray(k.sp, dtype=bool)
    tokens = np.asarray(k.mbs, dtype=float) * s / cp  # per micro-batch on one CP rank
    tokens_sp = np.where(sp, tokens / tp, tokens)  # what norms/residuals touch on one TP rank
    domain = cluster.nvlink_domain_size
    g = _Gemms(1.0 if workload.precision == "fp8" else 2.0, workload.precision == "fp8")
    gated = 2.0 if model.gated_mlp else 1.0
    # One TP collective of the hidden state: SP's all-gather or reduce-scatter, or half of an all-reduce
    # without SP (the same bytes). Megatron runs one before the first attention GEMM and one after the
    # output projection, and the same around the dense (or shared-expert) MLP.
    tp_bw = _link_bw(tp, domain, cluster)
    collective = np.where(tp > 1, (tp - 1) / tp * tokens * h * 2 / tp_bw, 0.0)
    if mtp:
        # An MTP layer (megatron/core/transformer/multi_token_prediction.py, MultiTokenPredictionLayer) norms
        # the shifted token embeddings and the hidden state, concatenates them and projects 2h -> h with a
        # column-parallel eh_proj before its decoder layer. Under SP the projection all-gathers its 2h-wide
        # input, then gathers its h/TP-wide output back to full width (gather_from_tensor_model_parallel_region):
        # three hidden-state collectives.
        g.add(tokens, 2 * h, h / tp, comm_s=3.0 * collective)

    if model.mla is not None:
        m, n = model.mla, model.num_attention_heads
        q_head = m.qk_head_dim + m.qk_pos_emb_head_dim
        if m.q_lora_rank is None:
            g.add(tokens, h, n * q_head / tp, comm_s=collective)
        else:
            g.add(tokens, h, m.q_lora_rank, comm_s=collective)
            g.add(tokens, m.q_lora_rank, n * q_head / tp)
        g.add(tokens, h, m.kv_lora_rank + m.qk_pos_emb_head_dim)
        g.add(tokens, m.kv_lora_rank, n * (m.qk_head_dim + m.v_head_dim) / tp)
        g.add(tokens, n * m.v_head_dim / tp, h, comm_s=collective)
        core_width = n * (q_head + m.v_head_dim) / tp
        heads = n / tp
        kv_width = n * (q_head + m.v_head_dim) / tp  # CP exchanges the up-projected K and V
        q_width = n * m.v_head_dim / tp
    else:
        q = model.query_projection_size / tp
        kv = model.kv_channels * np.maximum(model.num_query_groups / tp, 1.0)
        g.add(tokens, h, q + 2 * kv, comm_s=collective)
        g.add(tokens, q, h, comm_s=collective)
        core_width = 2 * q
        heads = model.num_attention_heads / tp
        kv_width = 2 * kv
        q_width = q  # per-rank width of the attention output
    # Causal flash attention with CP's load-balanced chunks: each rank does 1/(TP*CP) of the half s^2.
    attention_flops = 2.0 * tokens * s * core_width * 0.5

    ep_nvlink = np.zeros_like(tokens)
    ep_internode = np.zeros_like(tokens)
    imbalance_spread = np.zeros_like(tokens)
    if moe_layer and model.moe is not None:
        moe = model.moe
        routed_tokens = tokens / tp  # tokens entering the dispatcher on this rank (sequence parallel)
        g.add(routed_tokens, h, moe.num_experts)  # router
        if moe.shared_expert_ffn_hidden_size:
            g.add(tokens, h, gated * moe.shared_expert_ffn_hidden_size / tp, comm_s=collective)
            g.add(tokens, moe.shared_expert_ffn_hidden_size / tp, h, comm_s=collective)
        # (Without shared experts the routed experts keep the tokens sequence-split: no TP collective.)
        copies = routed_tokens * moe.router_topk * etp  # token copies this GPU's expert shards process
        local_experts = moe.num_experts / ep
        per_expert = copies / local_experts
        # ETP: the expert shards all-gather their tokens before fc1 and reduce-scatter after fc2.
        etp_collective = np.where(etp > 1, (etp - 1) / etp * copies * h * 2 / _link_bw(etp, domain, cluster), 0.0)
        g.add(per_expert, h, gated * moe.moe_ffn_hidden_size / etp, local_experts, routed=True, comm_s=etp_collective)
        g.add(per_expert, moe.moe_ffn_hidden_size / etp, h, local_experts, routed=True, comm_s=etp_collective)
        # Dropless routing leaves some EP ranks busier than others, and every rank waits for the busiest
        # at the combine all-to-all. A rank's load averages its E/EP experts (relative spread
        # cv/sqrt(E/EP) for a per-expert coefficient of variation cv), and the largest of EP such loads
        # lies about sqrt(2 ln EP) spreads above the mean (the extreme-value bound for Gaussian maxima).
        # cost.combine scales the expert GEMMs and the all-to-all by 1 + cv * this spread.
        imbalance_spread = np.sqrt(2 * np.log(np.maximum(ep, 1.0))) / np.sqrt(local_experts)
        act_width = gated * (moe.shared_expert_ffn_hidden_size / tp)
        # Token handling of the routed experts, kept apart from the streaming passes below: permute + unpermute
        # (read and write each copy's hidden state) and the activation function over every copy's expert
        # intermediate. These are gathers and scatters by index, not streaming passes, so cost.combine scales
        # them by a fitted multiplier (moe_token_passes).
        moe_token = 4.0 * copies * h * 2 + 2.0 * copies * gated * moe.moe_ffn_hidden_size / etp
        # Token exchange: peers in the NVLink domain are reached over NVLink, the rest over the NIC (an EP
        # group spans ETP*EP consecutive ranks, stride ETP, so ranks_per_node of it share a domain).
        span = etp * ep
        ranks_per_node = np.where(span <= domain, ep, np.maximum(domain / etp, 1.0))
        nvl_copies, nic_copies = ep_exchange_copies(moe.num_experts, moe.router_topk, ep, ranks_per_node,
                                                    moe_dispatcher)
        token_bytes = routed_tokens * h * 2
        # Dispatch + combine; the two parts run at once, cost.combine takes the slower.
        ep_nvlink = 2.0 * token_bytes * nvl_copies / (cluster.gpu.nvlink_bandwidth_gbps * 1e9)
        ep_internode = 2.0 * token_bytes * nic_copies / (cluster.gpu.internode_bandwidth_gbps * 1e9)
    else:
        ffn = model.ffn_hidden_size / tp
        g.add(tokens, h, gated * ffn, comm_s=collective)
        g.add(tokens, ffn, h, comm_s=collective)
        act_width = (gated + 1) * ffn
        moe_token = np.zeros_like(tokens)

    # Two norms, two residual adds, rope/bias/dropout: ~10 reads+writes of the hidden state, plus the
    # activation function over the MLP intermediate. Streaming kernels: cost.combine counts these bytes at
    # HBM bandwidth, unscaled (Korthikanti et al. 2022 Table 4 checks the hidden-state part: TP8 repeats it
    # on every rank without SP).
    # An MTP layer adds its two norms (a read and a write each) and the concatenation (2h read, 2h written).
    elementwise = 2.0 * ((10 + (8 if mtp else 0)) * tokens_sp * h + tokens * act_width)
    # CP ring attention (Transformer Engine AttnFuncWithCPAndKVP2P) runs one flash-attention call per
    # ring step over a KV chunk of s/CP keys, and after each step rescales the partial output and its
    # log-sum-exp in fp32: one read + write of the output per step, forward and again in backward.
    cp_correction_bytes = np.where(cp > 1, cp * tokens * q_width * 4.0 * 2, 0.0)
    attention_key_len = s / cp
    cp_bw = _link_bw(tp * cp, domain, cluster)
    cp_link = np.where(cp > 1, (cp - 1) * tokens * kv_width * 2 / cp_bw, 0.0)
    gemm_flops, gemm_bytes, routed, tp_comm = g.stacked(tokens.shape)
    return LayerWork(
        linear_flops=gemm_flops, linear_bytes=gemm_bytes, routed_gemms=routed, cp_correction_bytes=cp_correction_bytes,
        tp=tp,
        imbalance_spread=np.broadcast_to(imbalance_spread, tokens.shape), cast_bytes=np.broadcast_to(g.cast_bytes, tokens.shape),
        attention_flops=attention_flops, elementwise_bytes=elementwise,
        moe_token_bytes=np.broadcast_to(moe_token, tokens.shape),
        tp_comm_s=tp_comm, cp_link_s=cp_link, ep_nvlink_s=ep_nvlink,
        ep_internode_s=ep_internode,
        attention_key_len=np.broadcast_to(attention_key_len, tokens.shape),
        attention_scores=tokens * s * heads,
    )


def stage_layer_counts(model: ModelSpec, k: C.Knobs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decoder layers on the first stage, the busiest middle stage and the last stage.

    Same arithmetic as pipeline.layers_per_chunk (summed over virtual chunks) for the even,
    account-for-embedding/loss and uneven first/last splits; an explicit layout is not vectorised
    (the scalar `cost.predict` reads it from pipeline.layers_per_chunk).
    """
    L = model.num_layers
    pp = np.asarray(k.pp)
    first, last = np.asarray(k.first), np.asarray(k.last)
    emb, loss = np.asarray(k.emb_slot), np.asarray(k.loss_slot)
    split = np.asarray(k.split)
    slots = (L + emb + loss) // pp
    even_first, even_last = slots - emb, slots - loss
    has_f, has_l = (first > 0).astype(int), (last > 0).astype(int)
    mid_stages = np.maximum(pp - has_f - has_l, 1)
    mid = (L - first * has_f - last * has_l) // mid_stages
    uneven = split == C.SPLIT_UNEVEN
    f = np.where(uneven, np.where(has_f > 0, first, mid), even_first)
    la = np.where(uneven, np.where(has_l > 0, last, mid), even_last)
    m = np.where(uneven, mid, slots)
    f = np.where(pp == 1, L, f)
    la = np.where(pp == 1, L, la)
    return f.astype(float), m.astype(float), la.astype(float)


@dataclass(frozen=True, kw_only=True)
class StepWork:
    """Everything `cost.combine` needs, for N configs."""

    dense: LayerWork
    moe: LayerWork
    # Multi-token prediction (GPTModel.mtp_process): each MTP layer is one more decoder layer of the model's
    # last-layer kind plus one more output layer and cross-entropy, on the last stage unless a pipeline layout
    # gives them another rank (Megatron's standalone MTP). None without MTP.
    mtp: LayerWork | None
    mtp_layers: int
    mtp_stage: int  # where they run, as the stage classes combine() sees: 0 first, 1 middle, 2 last
    layers_first: np.ndarray  # decoder layers on stage 0
    layers_middle: np.ndarray  # on the busiest middle stage (only meaningful when PP > 2)
    layers_last: np.ndarray
    dense_on_first: np.ndarray  # leading dense layers of an MoE model, placed on stage 0
    logits_flops: np.ndarray  # output GEMM forward, per micro-batch (last stage, bf16)
    logits_bytes: np.ndarray
    loss_bytes: np.ndarray  # fp32 vocab-parallel softmax / cross-entropy: all its passes, counted here
    pp: np.ndarray
    vpp: np.ndarray
    num_microbatches: np.ndarray
    recompute: np.ndarray  # 0 none, 1 selective, 2 full
    sequence_parallel: np.ndarray  # bool: TP comm overlap needs it
    p2p_link_s: np.ndarray  # one activation send between stages (cost.combine counts VPP sends per micro-batch)
    dp_reduce_link_s: np.ndarray  # grad reduce-scatter (or all-reduce without dist-opt), dense + expert
    dp_gather_link_s: np.ndarray  # param all-gather (dist-opt only)
    optimizer_bytes: np.ndarray  # HBM traffic of the Adam step over the local shard
    num_layers: int
    num_dense_layers: int
    moe_model: bool


def step_work(model: ModelSpec, cluster: ClusterSpec, workload: Workload, k: C.Knobs,
              stage_layers: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
              grad_reduce_in_fp32: bool = True, moe_dispatcher: str = "alltoall",
              mtp_stage: int = 2) -> StepWork:
    """`grad_reduce_in_fp32` is Megatron's DDP option: gradients are reduced in fp32 (4 bytes) or in the
    bf16 of the model (2 bytes; Megatron-Bridge perf recipes). `moe_dispatcher` is the MoE token exchange
    (`ep_exchange_copies`)."""
    n = cluster.num_gpus
    tp, pp, cp, ep, etp, mbs = (np.asarray(x, dtype=float) for x in (k.tp, k.pp, k.cp, k.ep, k.etp, k.mbs))
    vpp = np.where(pp > 1, np.asarray(k.vpp, dtype=float), 1.0)
    sp, dist_opt = np.asarray(k.sp, dtype=bool), np.asarray(k.dist_opt, dtype=bool)
    dp = n / (tp * pp * cp)
    edp = n / (pp * ep * etp)
    m = np.floor(workload.global_batch_size / (mbs * dp))
    s, h = float(workload.seq_length), float(model.hidden_size)
    tokens = mbs * s / cp
    domain = cluster.nvlink_domain_size

    moe = layer_work(model, cluster, workload, k, moe_layer=True, moe_dispatcher=moe_dispatcher) if model.is_moe else None
    dense = layer_work(model, cluster, workload, k, moe_layer=False) if model.num_dense_layers else moe
    moe = moe or dense
    mtp = (layer_work(model, cluster, workload, k, moe_layer=model.is_moe, moe_dispatcher=moe_dispatcher, mtp=True)
           if model.mtp_num_layers else None)
    lf, lm, ll = stage_layer_counts(model, k) if stage_layers is None else stage_layers
    dense_on_first = np.minimum(float(model.num_dense_layers), lf) if model.is_moe else lf

    vocab = padded_vocab(model, tp)
    logits_flops = 2.0 * tokens * h * vocab / tp
    logits_bytes = (tokens * h + h * vocab / tp + tokens * vocab / tp) * 2.0
    loss_bytes = 3.0 * tokens * vocab / tp * 4.0

    # Pipeline neighbours are N/PP ranks apart (pp is the outermost dimension of the rank order), so as
    # soon as the job spans more than one NVLink domain some stage boundary crosses it, and the pipeline
    # moves at the pace of that slowest boundary.
    pp_neighbour_bw = np.where(n > domain, cluster.gpu.internode_bandwidth_gbps,
                               cluster.gpu.nvlink_bandwidth_gbps) * 1e9
    p2p = np.where(pp > 1, tokens * h * 2 / np.where(sp, tp, 1.0) / pp_neighbour_bw, 0.0)

    # Parameters held by the busiest stage (the DP/EDP gradient volume and the optimizer shard).
    dense_lp, moe_lp = layer_params(model, False), layer_params(model, True)
    counts = count_parameters(model)
    def sharded(lp):  # noqa: E306 - per-GPU non-expert params of one layer
        return (lp.attention + lp.mlp) / tp + lp.attention_replicated + lp.router + lp.norms
    # The MTP layers' parameters sit with their stage's (with PP 1 the last stage is the only one).
    on = [model.mtp_num_layers if mtp_stage == i else 0 for i in range(3)]
    layers_max = np.maximum(np.maximum(lf + on[0], ll + on[2]), np.where(pp > 2, lm + on[1], 0.0))
    if model.is_moe:
        n_dense = np.minimum(float(model.num_dense_layers), layers_max)
        dense_params = n_dense * sharded(dense_lp) + (layers_max - n_dense) * sharded(moe_lp)
        expert_params = (layers_max - n_dense) * moe_lp.routed_experts / (ep * etp)
    else:
        dense_params = layers_max * sharded(dense_lp)
        expert_params = np.zeros_like(tp)
    emb_params = (counts.embedding + counts.output_layer * (pp == 1)) / tp
    dense_params = dense_params + emb_params
    # Dense gradients are reduced (and the distributed optimizer shards them) over the DP x CP group: CP ranks
    # hold the same weights (megatron/core/distributed/distributed_data_parallel.py: dp_cp_group /
    # intra_dp_cp_group); its members are TP ranks apart. Expert gradients go over EDP, ETP*EP ranks apart.
    dp_cp = dp * cp
    grad_bytes = 4.0 if grad_reduce_in_fp32 else 2.0
    dense_rs = _dp_collective_s(dense_params * grad_bytes, dp_cp, tp, cluster)
    expert_rs = _dp_collective_s(expert_params * grad_bytes, edp, ep * etp, cluster)
    dense_ag = _dp_collective_s(dense_params * 2.0, dp_cp, tp, cluster)
    expert_ag = _dp_collective_s(expert_params * 2.0, edp, ep * etp, cluster)
    dp_reduce = np.where(dist_opt, dense_rs + expert_rs, 2 * (dense_rs + expert_rs))  # all-reduce = RS + AG
    dp_gather = np.where(dist_opt, dense_ag + expert_ag, 0.0)
    shard = np.where(dist_opt, dense_params / dp_cp + expert_params / edp, dense_params + expert_params)

    return StepWork(
        dense=dense, moe=moe, mtp=mtp, mtp_layers=model.mtp_num_layers, mtp_stage=mtp_stage,
        layers_first=lf, layers_middle=lm, layers_last=ll, dense_on_first=dense_on_first,
        logits_flops=logits_flops, logits_bytes=logits_bytes, loss_bytes=loss_bytes, pp=pp, vpp=vpp,
        num_microbatches=m, recompute=np.asarray(k.recompute), sequence_parallel=sp, p2p_link_s=p2p, dp_reduce_link_s=dp_reduce,
        dp_gather_link_s=dp_gather, optimizer_bytes=shard * _ADAM_BYTES_PER_PARAM,
        num_layers=model.num_layers, num_dense_layers=model.num_dense_layers, moe_model=model.is_moe,
    )
