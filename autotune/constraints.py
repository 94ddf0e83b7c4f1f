"""Every validity rule a config must pass before it may reach a GPU.

Each rule has a stable name (used in `pruned_by_rule`), a one-sentence explanation, a fix hint,
the source that enforces it, and one predicate. The predicate is written with numpy-compatible
operators (`%`, `==`, `&`, `|`, `np.where`), so the same code judges one config (plain ints, for
`autotune explain`) and a whole enumerated space at once (numpy arrays, for `autotune space`):
the two can never disagree.

Sources are megatron-core 0.16.1 files; rules that Megatron does not enforce are marked as autotune
policy and can be turned off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from autotune.cluster import ClusterSpec
from autotune.config import JobConfig, ParallelConfig, Workload
from autotune.memory import MemoryOptions, peak_memory_gib_batch
from autotune.model_spec import ModelSpec
from autotune import pipeline

RECOMPUTE_CODES = {None: 0, "selective": 1, "full": 2}
DEFAULT_MEMORY_HEADROOM = 0.1
SPLIT_EVEN, SPLIT_ACCOUNT, SPLIT_UNEVEN, SPLIT_LAYOUT = 0, 1, 2, 3
SPLIT_NAMES = {SPLIT_EVEN: "even", SPLIT_ACCOUNT: "account_embedding_loss", SPLIT_UNEVEN: "uneven",
               SPLIT_LAYOUT: "layout"}


@dataclass(frozen=True, kw_only=True)
class Knobs:
    """Knob values for one config (ints) or a whole space (equal-length numpy arrays).

    Booleans are 0/1, `vpp` is 1 without interleaving, `recompute` uses RECOMPUTE_CODES, `first`
    and `last` are 0 when unset and -1 when the 'uneven' split option has no valid split.
    """

    tp: Any
    pp: Any
    vpp: Any
    cp: Any
    ep: Any
    etp: Any
    mbs: Any
    sp: Any
    dist_opt: Any
    recompute: Any
    split: Any
    first: Any = 0
    last: Any = 0
    emb_slot: Any = 0  # account_for_embedding_in_pipeline_split
    loss_slot: Any = 0  # account_for_loss_in_pipeline_split

    @classmethod
    def of(cls, p: ParallelConfig) -> "Knobs":
        split = {"even": SPLIT_EVEN, "account_embedding_loss": SPLIT_ACCOUNT, "uneven": SPLIT_UNEVEN,
                 "layout": SPLIT_LAYOUT}[p.pipeline_split]
        return cls(
            tp=p.tp, pp=p.pp, vpp=p.vpp, cp=p.cp, ep=p.ep, etp=p.etp, mbs=p.micro_batch_size,
            sp=int(p.sequence_parallel), dist_opt=int(p.use_distributed_optimizer),
            recompute=RECOMPUTE_CODES[p.recompute_granularity], split=split,
            first=p.num_layers_in_first_pipeline_stage or 0, last=p.num_layers_in_last_pipeline_stage or 0,
            emb_slot=int(p.account_for_embedding_in_pipeline_split),
            loss_slot=int(p.account_for_loss_in_pipeline_split),
        )

    @classmethod
    def batch_of(cls, p: ParallelConfig) -> "Knobs":
        """One config as a length-1 batch, for the vectorised work and cost code."""
        return cls(**{k: np.asarray([v]) for k, v in vars(cls.of(p)).items()})


@dataclass(frozen=True, kw_only=True)
class Context:
    """Everything a rule may look at besides the knobs."""

    model: ModelSpec
    cluster: ClusterSpec
    workload: Workload
    allow_cross_node_tp: bool = False
    # Only for single configs: an explicit layout is checked by a scalar parser, not vectorised.
    layout_error: str | None = None
    pipeline_layout: str | None = None  # the explicit layout itself (the memory rule needs its stages)
    # Share of GPU memory kept free: a config fits when its peak <= capacity x (1 - headroom).
    memory_headroom: float = DEFAULT_MEMORY_HEADROOM
    # Training options the knobs do not carry (gradient dtype, recompute module list).
    memory_options: MemoryOptions = field(default_factory=MemoryOptions)

    @property
    def n(self) -> int:
        return self.cluster.num_gpus


@dataclass(frozen=True, kw_only=True)
class Rule:
    name: str
    explanation: str
    fix: str
    source: str
    ok: Callable[[Knobs, Context], Any]
    # Shows the offending values for one config; only called when `ok` is False.
    detail: Callable[[Knobs, Context], str]
    # Knobs the predicate reads; the space evaluator applies a rule as soon as these are expanded.
    uses: frozenset[str] = frozenset()
    megatron: bool = True  # False: autotune policy, Megatron itself would accept the config


@dataclass(frozen=True, kw_only=True)
class Violation:
    rule: str
    message: str
    fix: str


# --- helpers usable on ints and arrays ------------------------------------------------------------

def _dp(k: Knobs, c: Context) -> Any:
    return c.n // (k.tp * k.pp * k.cp)


def _num_microbatches(k: Knobs, c: Context) -> Any:
    return c.workload.global_batch_size // np.maximum(k.mbs * _dp(k, c), 1)


def _divides(a: Any, b: Any) -> Any:
    """a divides b, safe for a == 0 (never divides)."""
    return np.where(a > 0, b % np.maximum(a, 1) == 0, False)


def _pipeline_ok(k: Knobs, c: Context) -> Any:
    L = c.model.num_layers
    v = np.where(k.pp > 1, k.vpp, 1)
    slots = L + k.emb_slot + k.loss_slot
    even_ok = _divides(k.pp, slots) & _divides(v, slots // k.pp)
    # Uneven first/last (transformer_config.py "Uneven PP"): first, last divisible by vpp, the
    # middle layers split evenly over the middle stages, and per middle rank divisible by vpp.
    has_f, has_l = np.asarray(k.first > 0).astype(int), np.asarray(k.last > 0).astype(int)
    mid_layers = L - k.first * has_f - k.last * has_l
    mid_stages = k.pp - has_f - has_l
    uneven_ok = (
        (k.first >= 0) & (k.last >= 0) & ((has_f + has_l) > 0) & (k.emb_slot == 0) & (k.loss_slot == 0)
        & _divides(v, k.first) & _divides(v, k.last) & (mid_layers >= 0)
        & ((mid_layers > 0) == (mid_stages > 0))
        & np.where(mid_stages > 0, _divides(mid_stages, mid_layers) & _divides(v, mid_layers // np.maximum(mid_stages, 1)), True)
    )
    layout_ok = c.layout_error is None
    return np.where(k.split == SPLIT_UNEVEN, uneven_ok, np.where(k.split == SPLIT_LAYOUT, layout_ok, even_ok))


def _account_is_even(k: Knobs) -> Any:
    # Counting the embedding and the loss as one layer each takes one layer from the first and the last
    # virtual stage; with only those two (PP 1, or PP 2 without interleaving) that is the even split again,
    # e.g. 80 layers on PP 2: (80 + 2) / 2 - 1 = 40 per stage.
    chunks = np.where(k.pp > 1, k.pp * k.vpp, 1)
    return (k.split == SPLIT_ACCOUNT) & (k.emb_slot == 1) & (k.loss_slot == 1) & (chunks <= 2)


def _pipeline_detail(k: Knobs, c: Context) -> str:
    p = ParallelConfig(
        pipeline_model_parallel_size=int(k.pp), virtual_pipeline_model_parallel_size=int(k.vpp) if k.vpp > 1 else None,
        num_layers_in_first_pipeline_stage=int(k.first) if k.first > 0 else None,
        num_layers_in_last_pipeline_stage=int(k.last) if k.last > 0 else None,
        account_for_embedding_in_pipeline_split=bool(k.emb_slot), account_for_loss_in_pipeline_split=bool(k.loss_slot),
    )
    if k.split == SPLIT_LAYOUT:
        return c.layout_error or "invalid layout"
    if k.split == SPLIT_UNEVEN and (k.emb_slot or k.loss_slot):
        return "num_layers_in_first/last_pipeline_stage cannot be combined with account_for_*_in_pipeline_split"
    if k.first < 0:
        return f"no uneven first/last split of {c.model.num_layers} layers fits PP={k.pp}, VPP={k.vpp}"
    return pipeline.split_error(c.model.num_layers, p) or "invalid split"


def _tp_domain_ok(k: Knobs, c: Context) -> Any:
    # TP ranks are contiguous (innermost in Megatron's rank order), so the group at ranks
    # [g*TP, (g+1)*TP) straddles two domains unless TP divides the domain size, or the whole job
    # fits in one domain (an NVL72 rack running 64 GPUs).
    domain = c.cluster.nvlink_domain_size
    return c.allow_cross_node_tp | ((k.tp <= domain) & (_divides(k.tp, domain) | (c.n <= domain)))


def _ffn_widths(m: ModelSpec) -> list[int]:
    widths = [m.ffn_hidden_size] if m.num_dense_layers > 0 else []
    if m.moe is not None and m.moe.shared_expert_ffn_hidden_size:
        widths.append(m.moe.shared_expert_ffn_hidden_size)
    return widths


def _ffn_tp_ok(k: Knobs, c: Context) -> Any:
    ok = True
    for w in _ffn_widths(c.model):
        ok = ok & _divides(k.tp, w)
    return ok


_RULES: tuple[Rule, ...] = (
    Rule(
        name="world_size_dense",
        uses=frozenset(['tp', 'pp', 'cp']),
        explanation="The GPU count must be a multiple of TP x PP x CP, so that every data-parallel replica is whole.",
        fix="choose TP, PP and CP whose product divides the GPU count",
        source="megatron/core/parallel_state.py::initialize_model_parallel ('world_size is not divisible by')",
        ok=lambda k, c: _divides(k.tp * k.pp * k.cp, c.n),
        detail=lambda k, c: f"{c.n} GPUs not divisible by TP*PP*CP = {k.tp}*{k.pp}*{k.cp} = {k.tp * k.pp * k.cp}",
    ),
    Rule(
        name="world_size_expert",
        uses=frozenset(['pp', 'ep', 'etp']),
        explanation="The GPU count must also be a multiple of PP x EP x ETP: the expert mesh shares each stage's GPUs.",
        fix="choose EP and ETP whose product with PP divides the GPU count",
        source="megatron/core/parallel_state.py::initialize_model_parallel (expert_tensor_model_pipeline_parallel size)",
        ok=lambda k, c: _divides(k.pp * k.ep * k.etp, c.n),
        detail=lambda k, c: f"{c.n} GPUs not divisible by PP*EP*ETP = {k.pp}*{k.ep}*{k.etp} = {k.pp * k.ep * k.etp}",
    ),
    Rule(
        name="expert_parallel_needs_moe",
        uses=frozenset(['ep']),
        explanation="Expert parallelism distributes routed experts, so EP > 1 needs a MoE model.",
        fix="keep expert_model_parallel_size=1 for dense models",
        source="megatron/core/transformer/transformer_config.py ('num_moe_experts must be non None to use expert-parallel')",
        ok=lambda k, c: True if c.model.is_moe else (k.ep == 1),
        detail=lambda k, c: f"model {c.model.name} is dense but EP={k.ep}",
    ),
    Rule(
        name="expert_tensor_parallel_needs_moe",
        uses=frozenset(['etp']),
        explanation="ETP only shards routed experts; on a dense model it changes nothing but the GPU-count rule.",
        fix="keep expert_tensor_parallel_size=1 for dense models",
        source="autotune policy (Megatron accepts ETP > 1 on a dense model and ignores it)",
        ok=lambda k, c: True if c.model.is_moe else (k.etp == 1),
        detail=lambda k, c: f"model {c.model.name} is dense but ETP={k.etp}",
        megatron=False,
    ),
    Rule(
        name="attention_heads_tp",
        uses=frozenset(['tp']),
        explanation="Each TP rank holds whole attention heads, so TP must divide the number of heads.",
        fix="use a TP that divides num_attention_heads",
        source="megatron/core/transformer/transformer_config.py (num_attention_heads % tensor_model_parallel_size)",
        ok=lambda k, c: _divides(k.tp, c.model.num_attention_heads),
        detail=lambda k, c: f"num_attention_heads={c.model.num_attention_heads} not divisible by TP={k.tp}",
    ),
    Rule(
        name="query_groups_tp",
        uses=frozenset(['tp']),
        explanation="KV heads are split over TP ranks, or replicated when TP exceeds them: one must divide the other.",
        fix="use a TP that divides num_query_groups or is a multiple of it",
        source="megatron/core/transformer/transformer_config.py (num_query_groups must be a multiple or divisor of TP)",
        ok=lambda k, c: _divides(k.tp, c.model.num_query_groups) | _divides(c.model.num_query_groups, k.tp),
        detail=lambda k, c: f"num_query_groups={c.model.num_query_groups} and TP={k.tp}: neither divides the other",
    ),
    Rule(
        name="ffn_tp",
        uses=frozenset(['tp']),
        explanation="The dense MLP and shared-expert widths are split column-wise over TP ranks.",
        fix="use a TP that divides ffn_hidden_size (and the shared-expert size)",
        source="megatron/core/tensor_parallel/layers.py::ColumnParallelLinear (divide(output_size, world_size))",
        ok=_ffn_tp_ok,
        detail=lambda k, c: f"MLP widths {_ffn_widths(c.model)} not all divisible by TP={k.tp}",
    ),
    Rule(
        name="expert_ffn_etp",
        uses=frozenset(['etp']),
        explanation="Each routed expert's width is split over the expert-tensor-parallel ranks.",
        fix="use an ETP that divides moe_ffn_hidden_size",
        source="megatron/core/transformer/moe/experts.py (expert fc1/fc2 partitioned over ETP)",
        ok=lambda k, c: True if c.model.moe is None else _divides(k.etp, c.model.moe.moe_ffn_hidden_size),
        detail=lambda k, c: f"moe_ffn_hidden_size={c.model.moe.moe_ffn_hidden_size} not divisible by ETP={k.etp}",
    ),
    Rule(
        name="experts_ep",
        uses=frozenset(['ep']),
        explanation="Each EP rank holds the same number of whole experts.",
        fix="use an EP that divides num_experts",
        source="megatron/core/transformer/moe/moe_layer.py (num_moe_experts % ep_size == 0)",
        ok=lambda k, c: True if c.model.moe is None else _divides(k.ep, c.model.moe.num_experts),
        detail=lambda k, c: f"num_experts={c.model.moe.num_experts} not divisible by EP={k.ep}",
    ),
    Rule(
        name="moe_bias_etp",
        uses=frozenset(['etp']),
        explanation="Megatron supports biases in MoE expert layers only without expert tensor parallelism.",
        fix="use expert_tensor_parallel_size=1 for a model with add_bias_linear",
        source="megatron/core/transformer/transformer_config.py ('Bias in Moe is only supported when ETP==1')",
        ok=lambda k, c: True if not (c.model.is_moe and c.model.add_bias_linear) else (k.etp == 1),
        detail=lambda k, c: f"add_bias_linear MoE model with ETP={k.etp}",
    ),
    Rule(
        name="vpp_needs_pp",
        uses=frozenset(['pp', 'vpp']),
        explanation="The interleaved (virtual pipeline) schedule needs more than one pipeline stage.",
        fix="drop --vpp or use PP > 1",
        source="megatron/core/parallel_state.py::initialize_model_parallel ('should be greater than 1 with interleaved')",
        ok=lambda k, c: (k.vpp == 1) | (k.pp > 1),
        detail=lambda k, c: f"VPP={k.vpp} with PP={k.pp}",
    ),
    Rule(
        name="pipeline_layers",
        uses=frozenset(['pp', 'vpp', 'split']),
        explanation="Decoder layers must split over PP stages (and VPP chunks) by the chosen split rule.",
        fix="pick a PP/VPP that divides the layer count, or an uneven / account-for-embedding-and-loss split",
        source="megatron/core/transformer/transformer_config.py (pipeline split checks) and "
               "transformer_block.py::get_num_layers_to_build",
        ok=_pipeline_ok,
        detail=_pipeline_detail,
    ),
    Rule(
        name="pipeline_split_redundant",
        uses=frozenset(['pp', 'split']),
        explanation="This split gives the same per-stage layers as the plain even split, so it is searched once.",
        fix="use the even split",
        source="autotune policy (deduplication)",
        ok=lambda k, c: np.logical_not(_account_is_even(k)),
        detail=lambda k, c: f"account-for-embedding-and-loss split with PP={k.pp}, VPP={k.vpp} is the even split",
        megatron=False,
    ),
    Rule(
        name="sequence_parallel_needs_tp",
        uses=frozenset(['tp', 'sp']),
        explanation="Sequence parallelism shards along the TP group, so it needs TP > 1.",
        fix="turn sequence_parallel off when TP=1",
        source="megatron/core/model_parallel_config.py ('Cannot use sequence parallelism without tensor parallelism')",
        ok=lambda k, c: (k.sp == 0) | (k.tp > 1),
        detail=lambda k, c: f"sequence_parallel with TP={k.tp}",
    ),
    Rule(
        name="tp_ep_needs_sp",
        uses=frozenset(['tp', 'ep', 'sp']),
        explanation="With both TP > 1 and EP > 1, Megatron requires sequence parallelism for the MoE token dispatch.",
        fix="turn sequence_parallel on (or use TP=1 or EP=1)",
        source="megatron/core/model_parallel_config.py ('When using expert parallelism and tensor parallelism "
               "... sequence parallelism must be used'; a warning in core, an assert in Megatron-LM arguments.py)",
        ok=lambda k, c: np.logical_not((k.tp > 1) & (k.ep > 1)) | (k.sp == 1),
        detail=lambda k, c: f"TP={k.tp}, EP={k.ep} without sequence_parallel",
    ),
    Rule(
        name="context_parallel_seq",
        uses=frozenset(['cp']),
        explanation="Context parallelism splits each sequence into 2 x CP load-balanced chunks.",
        fix="use a CP with seq_length divisible by 2*CP",
        source="megatron/core/utils.py::get_batch_on_this_cp_rank (view(..., 2 * cp_size, seq // (2 * cp_size)))",
        ok=lambda k, c: (k.cp == 1) | _divides(2 * k.cp, c.workload.seq_length),
        detail=lambda k, c: f"seq_length={c.workload.seq_length} not divisible by 2*CP={2 * k.cp}",
    ),
    Rule(
        name="global_batch_divisible",
        uses=frozenset(['tp', 'pp', 'cp', 'mbs']),
        explanation="The global batch must be a whole number of micro-batches on every data-parallel rank.",
        fix="choose MBS and DP with MBS*DP dividing the global batch",
        source="megatron/core/num_microbatches_calculator.py (global_batch_size % (micro_batch_size * dp) == 0)",
        ok=lambda k, c: _divides(k.mbs * _dp(k, c), c.workload.global_batch_size),
        detail=lambda k, c: (f"global_batch_size={c.workload.global_batch_size} not divisible by "
                             f"MBS*DP={k.mbs}*{_dp(k, c)}"),
    ),
    Rule(
        name="interleaved_microbatches",
        uses=frozenset(['tp', 'pp', 'cp', 'vpp', 'mbs']),
        explanation="The interleaved schedule runs micro-batches in groups of PP, so their count must be a multiple of PP.",
        fix="raise the global batch, lower MBS, or drop VPP",
        source="megatron/core/pipeline_parallel/schedules.py::forward_backward_pipelining_with_interleaving "
               "(microbatch_group_size_per_vp_stage defaults to PP)",
        ok=lambda k, c: (k.vpp == 1) | (k.pp == 1) | _divides(k.pp, _num_microbatches(k, c)),
        detail=lambda k, c: f"{_num_microbatches(k, c)} micro-batches not a multiple of PP={k.pp} with VPP={k.vpp}",
    ),
    Rule(
        name="tp_in_nvlink_domain",
        uses=frozenset(['tp']),
        explanation="A TP group must stay inside one NVLink domain: TP across nodes destroys throughput.",
        fix="use TP <= GPUs per NVLink domain, or pass --allow-cross-node-tp",
        source="autotune topology policy (TP ranks are innermost in Megatron's tp-cp-ep-dp-pp order)",
        ok=_tp_domain_ok,
        detail=lambda k, c: f"TP={k.tp} but the NVLink domain has {c.cluster.nvlink_domain_size} GPUs",
        megatron=False,
    ),
    Rule(
        name="precision_supported",
        uses=frozenset([]),
        explanation="FP8 training needs FP8 tensor cores (Hopper or newer).",
        fix="use --precision bf16 on this GPU type",
        source="autotune hardware check (GPU datasheet)",
        ok=lambda k, c: (c.workload.precision != "fp8") | (c.cluster.gpu.fp8_tflops is not None),
        detail=lambda k, c: f"precision fp8 on {c.cluster.gpu.name}",
        megatron=False,
    ),
    Rule(
        name="memory",
        uses=frozenset(("tp", "pp", "cp", "ep", "etp", "vpp", "split", "sp", "mbs", "dist_opt", "recompute")),
        explanation="The estimated peak per-GPU memory (autotune.memory) must fit the GPU, less the headroom.",
        fix="use the distributed optimizer, recompute, more TP, PP or EP, or a smaller micro-batch "
            "(`autotune explain` lists the changes that fit)",
        source="autotune memory model (autotune/memory.py), checked against Megatron Core 0.16.1 allocations",
        ok=lambda k, c: _memory_ok(k, c),
        detail=lambda k, c: _memory_detail(k, c),
        megatron=False,
    ),
)


def _usable_gib(c: Context) -> float:
    return c.cluster.gpu.usable_memory_gib * (1 - c.memory_headroom)


def _memory_ok(k: Knobs, c: Context) -> Any:
    if c.layout_error is not None:
        return True  # the pipeline_layers rule already rejects it
    valid = (_dp(k, c) >= 1) & (c.n // (k.pp * k.ep * k.etp) >= 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        peak = peak_memory_gib_batch(c.model, c.cluster, c.workload, k, options=c.memory_options,
                                     layout=c.pipeline_layout)
    ok = np.logical_not(valid) | (peak <= _usable_gib(c))
    return ok if np.ndim(k.tp) else bool(np.asarray(ok).reshape(-1)[0])


def _memory_detail(k: Knobs, c: Context) -> str:
    peak = float(np.asarray(peak_memory_gib_batch(c.model, c.cluster, c.workload, k, options=c.memory_options,
                                                  layout=c.pipeline_layout)).reshape(-1)[0])
    return (f"estimated peak {peak:.1f} GiB per GPU > {_usable_gib(c):.1f} GiB usable "
            f"({c.cluster.gpu.usable_memory_gib:g} GiB x (1 - headroom {c.memory_headroom:g}))")

# The order knobs are expanded in when a space is enumerated: the mesh first, so most candidates are
# rejected before the cheap knobs multiply them.
KNOB_ORDER = ("tp", "pp", "cp", "ep", "etp", "vpp", "split", "sp", "mbs", "dist_opt", "recompute")


def _stage(rule: Rule) -> int:
    return max((KNOB_ORDER.index(k) for k in rule.uses), default=-1)


# Rules run in the order their knobs become known. A pruned candidate is charged to the first rule
# it fails in this order, both for one config and for a whole space.
RULES: tuple[Rule, ...] = tuple(sorted(_RULES, key=_stage))
RULES_BY_NAME = {r.name: r for r in RULES}


def context_for(model: ModelSpec, cluster: ClusterSpec, workload: Workload, parallel: ParallelConfig | None = None,
                allow_cross_node_tp: bool = False, memory_headroom: float = DEFAULT_MEMORY_HEADROOM,
                memory_options: MemoryOptions | None = None) -> Context:
    layout_err = None
    if parallel is not None and parallel.pipeline_model_parallel_layout is not None:
        layout_err = pipeline.split_error(model.num_layers, parallel, model.mtp_num_layers)
    return Context(model=model, cluster=cluster, workload=workload, allow_cross_node_tp=allow_cross_node_tp,
                   layout_error=layout_err, memory_headroom=memory_headroom,
                   memory_options=memory_options or MemoryOptions(),
                   pipeline_layout=parallel.pipeline_model_parallel_layout if parallel is not None else None)


@dataclass(frozen=True, kw_only=True)
class RuleResult:
    rule: Rule
    passed: bool
    message: str = ""


def check_all(model: ModelSpec, cluster: ClusterSpec, job: JobConfig, allow_cross_node_tp: bool = False,
              rules: tuple[Rule, ...] = RULES, memory_headroom: float = DEFAULT_MEMORY_HEADROOM,
              memory_options: MemoryOptions | None = None) -> list[RuleResult]:
    """Every rule's verdict on one config, in order (for `autotune explain`)."""
    ctx = context_for(model, cluster, job.workload, job.parallel, allow_cross_node_tp, memory_headroom,
                      memory_options)
    knobs = Knobs.of(job.parallel)
    out = []
    for rule in rules:
        passed = bool(rule.ok(knobs, ctx))
        out.append(RuleResult(rule=rule, passed=passed, message="" if passed else rule.detail(knobs, ctx)))
    return out


def violations(model: ModelSpec, cluster: ClusterSpec, job: JobConfig, allow_cross_node_tp: bool = False,
               **memory: Any) -> list[Violation]:
    """Failed rules only. `memory` passes memory_headroom / memory_options through to check_all."""
    return [Violation(rule=r.rule.name, message=r.message, fix=r.rule.fix)
            for r in check_all(model, cluster, job, allow_cross_node_tp, **memory) if not r.passed]


def is_feasible(model: ModelSpec, cluster: ClusterSpec, job: JobConfig, allow_cross_node_tp: bool = False) -> bool:
    return not violations(model, cluster, job, allow_cross_node_tp)


_KNOB_DEFAULTS = dict(tp=1, pp=1, vpp=1, cp=1, ep=1, etp=1, mbs=1, sp=0, dist_opt=1, recompute=0,
                      split=SPLIT_EVEN, first=0, last=0, emb_slot=0, loss_slot=0)


@dataclass
class ProductResult:
    """Feasible rows of a judged Cartesian product, and how many candidates each rule pruned."""

    num_candidates: int
    columns: dict[str, np.ndarray]
    pruned_by_rule: dict[str, int] = field(default_factory=dict)


DeriveFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def evaluate_product(values: dict[str, list[int]], ctx: Context, derive_split: DeriveFn,
                     rules: tuple[Rule, ...] = RULES) -> ProductResult:
    """Judge the Cartesian product of `values` (one list per knob in KNOB_ORDER) without building it.

    Knobs are expanded one at a time; after each, every rule whose knobs are now all known is
    applied and the failing rows dropped. A dropped row stands for all its combinations with the
    knobs not yet expanded, so it is counted that many times: the tally is exact, the work small.
    `derive_split` adds the columns that follow from (pp, vpp, split): first, last, emb_slot, loss_slot.
    """
    sizes = [len(values[k]) for k in KNOB_ORDER]
    total = int(np.prod(sizes, dtype=np.int64))
    cols: dict[str, np.ndarray] = {}
    rows = 1
    pruned: dict[str, int] = {}
    pending = list(rules)
    for i, knob in enumerate(KNOB_ORDER):
        new = np.asarray(values[knob], dtype=np.int32)
        cols = {k: np.repeat(v, len(new)) for k, v in cols.items()}
        cols[knob] = np.tile(new, rows)
        rows *= len(new)
        if knob == "split":
            cols.update(derive_split(cols))
        known = set(KNOB_ORDER[: i + 1])
        remaining = int(np.prod(sizes[i + 1:], dtype=np.int64))
        ready = [r for r in pending if r.uses <= known]
        pending = [r for r in pending if not r.uses <= known]
        for rule in ready:
            if not rows:
                break
            knobs = Knobs(**{**_KNOB_DEFAULTS, **cols})
            ok = np.broadcast_to(np.asarray(rule.ok(knobs, ctx), dtype=bool), (rows,))
            failing = int(rows - ok.sum())
            if failing:
                pruned[rule.name] = pruned.get(rule.name, 0) + failing * remaining
                cols = {k: v[ok] for k, v in cols.items()}
                rows = len(next(iter(cols.values())))
    return ProductResult(num_candidates=total, columns=cols, pruned_by_rule=pruned)
