"""Build Megatron Core GPTModel chunks from a ModelSpec and a ParallelConfig.

Call after `torch.distributed` and `megatron.core.parallel_state.initialize_model_parallel` are
set up; each rank gets the chunks it owns (one per virtual pipeline stage). The mapping from our
names to TransformerConfig follows megatron/training/arguments.py::core_transformer_config_from_args
(megatron-core 0.16.1).
"""

from __future__ import annotations

from typing import Literal

import torch

from autotune.config import ParallelConfig
from autotune.model_spec import ModelSpec
from autotune.pipeline import megatron_virtual_stages
from autotune.run_settings import RunSettings

LayerSpecKind = Literal["transformer_engine", "local"]


class UnsupportedModelError(RuntimeError):
    """The model needs a Megatron feature this backend cannot build (reported as status 'unsupported')."""


def padded_vocab_size(vocab_size: int, tensor_model_parallel_size: int, divisible_by: int = 128) -> int:
    """Megatron-LM pads the vocabulary to a multiple of 128 * TP
    (megatron/training/tokenizer/tokenizer.py::_vocab_size_with_padding)."""
    multiple = divisible_by * tensor_model_parallel_size
    return -(-vocab_size // multiple) * multiple


def choose_layer_spec(backend: str) -> LayerSpecKind:
    """Transformer Engine on a GPU node when it imports; the local (pure-torch) spec otherwise."""
    if backend != "gpu":
        return "local"
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return "local"
    return "transformer_engine"


def _activation(spec: ModelSpec):
    import torch.nn.functional as F
    from megatron.core.activations import squared_relu

    return {"swiglu": F.silu, "gelu": F.gelu, "squared_relu": squared_relu}[spec.activation]


def transformer_config_kwargs(model: ModelSpec, parallel: ParallelConfig, *, dtype: torch.dtype,
                              use_cpu_initialization: bool, run: RunSettings | None = None) -> dict:
    """The TransformerConfig fields of this model and config; needs no process group or GPU, and
    Megatron validates them when the config is built.

    `run`: the run settings the trial really runs with; only its FP8 fields matter here. None: no FP8.
    MLA fields are added by transformer_config.
    """
    kwargs = dict(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        kv_channels=model.kv_channels,
        gated_linear_unit=model.gated_mlp,
        activation_func=_activation(model),
        normalization=model.normalization,
        qk_layernorm=model.qk_layernorm,
        add_bias_linear=model.add_bias_linear,
        add_qkv_bias=model.add_qkv_bias,
        # Dropout off: runs are short throughput probes, and TP1-vs-TP2 loss checks need determinism.
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        virtual_pipeline_model_parallel_size=megatron_virtual_stages(parallel),
        context_parallel_size=parallel.cp,
        expert_model_parallel_size=parallel.ep,
        expert_tensor_parallel_size=parallel.etp,
        sequence_parallel=parallel.sequence_parallel,
        account_for_embedding_in_pipeline_split=parallel.account_for_embedding_in_pipeline_split,
        account_for_loss_in_pipeline_split=parallel.account_for_loss_in_pipeline_split,
        num_layers_in_first_pipeline_stage=parallel.num_layers_in_first_pipeline_stage,
        num_layers_in_last_pipeline_stage=parallel.num_layers_in_last_pipeline_stage,
        pipeline_model_parallel_layout=parallel.pipeline_model_parallel_layout,
        recompute_granularity=parallel.recompute_granularity,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        use_cpu_initialization=use_cpu_initialization,
        # Loss is summed per token and normalised by the token count over DP x CP
        # (megatron/training pretrain_gpt.py loss_func); a local mean is CP-times too large.
        calculate_per_token_loss=True,
        masked_softmax_fusion=False,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        mtp_num_layers=model.mtp_num_layers or None,  # Megatron-LM --mtp-num-layers
    )
    if run is not None and run.fp8_format is not None:
        # What Megatron-LM's --fp8-format / --fp8-recipe / --fp8-param-gather set
        # (arguments.py core_transformer_config_from_args: fp8_param = args.fp8_param_gather).
        kwargs.update(fp8=run.fp8_format, fp8_recipe=run.fp8_recipe, fp8_param=run.fp8_param_gather)
    if parallel.recompute_granularity == "full":
        kwargs.update(recompute_method="uniform", recompute_num_layers=1)
    if model.moe is not None:
        moe = model.moe
        kwargs.update(
            num_moe_experts=moe.num_experts,
            moe_router_topk=moe.router_topk,
            moe_ffn_hidden_size=moe.moe_ffn_hidden_size,
            moe_shared_expert_intermediate_size=moe.shared_expert_ffn_hidden_size or None,
            moe_layer_freq=[0] * moe.num_dense_layers + [1] * model.num_moe_layers,
            moe_token_dispatcher_type="alltoall",
            moe_router_load_balancing_type="aux_loss",
            moe_aux_loss_coeff=1e-2,
            # Grouped GEMM needs TE or the grouped_gemm CUDA extension.
            moe_grouped_gemm=False,
        )
    return kwargs


def transformer_config(model: ModelSpec, parallel: ParallelConfig, *, dtype: torch.dtype,
                       use_cpu_initialization: bool, run: RunSettings | None = None):
    """A TransformerConfig (or MLATransformerConfig) carrying every knob; Megatron validates it."""
    from megatron.core.transformer import TransformerConfig

    kwargs = transformer_config_kwargs(model, parallel, dtype=dtype, use_cpu_initialization=use_cpu_initialization,
                                       run=run)
    if model.mla is not None:
        from megatron.core.transformer import MLATransformerConfig

        m = model.mla
        kwargs.pop("kv_channels")
        return MLATransformerConfig(
            **kwargs, multi_latent_attention=True, q_lora_rank=m.q_lora_rank, kv_lora_rank=m.kv_lora_rank,
            qk_head_dim=m.qk_head_dim, qk_pos_emb_head_dim=m.qk_pos_emb_head_dim, v_head_dim=m.v_head_dim,
        )
    return TransformerConfig(**kwargs)


def _block_spec(config, layer_spec: LayerSpecKind, vp_stage: int | None):
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec

    spec = get_gpt_decoder_block_spec(
        config, use_transformer_engine=layer_spec == "transformer_engine",
        normalization=config.normalization, vp_stage=vp_stage,
    )
    _use_local_cp_attention(spec.layer_specs, config, layer_spec)
    return spec


def _use_local_cp_attention(layer_specs, config, layer_spec: LayerSpecKind) -> None:
    if layer_spec == "local" and config.context_parallel_size > 1:
        # The local DotProductAttention refuses CP; swap in the all-gather CP attention.
        from trial_runner.cp_attention import AllGatherCPAttention

        for layer in layer_specs:
            layer.submodules.self_attention.submodules.core_attention = AllGatherCPAttention


def _mtp_spec(config, layer_spec: LayerSpecKind, vp_stage: int | None):
    """The multi-token-prediction block of this chunk, or None (no MTP, or not on this chunk). As Megatron-LM's
    gpt_builders does, the MTP layer copies the spec of the model's last decoder layer."""
    if not config.mtp_num_layers:
        return None
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_layer_specs, get_gpt_mtp_block_spec

    use_te = layer_spec == "transformer_engine"
    last = get_gpt_decoder_layer_specs(config, use_transformer_engine=use_te, normalization=config.normalization)[-1]
    _use_local_cp_attention([last], config, layer_spec)
    return get_gpt_mtp_block_spec(config, last, use_transformer_engine=use_te, vp_stage=vp_stage)


def build_model_chunks(model: ModelSpec, parallel: ParallelConfig, *, seq_length: int,
                       dtype: torch.dtype = torch.float32, layer_spec: LayerSpecKind = "local",
                       use_cpu_initialization: bool = True, run: RunSettings | None = None) -> list[torch.nn.Module]:
    """This rank's GPTModel chunks (one per virtual pipeline stage), not yet wrapped in DDP.

    Needs initialised parallel state. Raises Megatron's own ValueError/AssertionError for configs
    it refuses, and UnsupportedModelError for models the chosen layer spec cannot build.
    """
    from megatron.core import parallel_state
    from megatron.core.enums import ModelType
    from megatron.core.models.gpt import GPTModel

    if model.mla is not None and layer_spec == "local":
        # megatron-core 0.16.1's local DotProductAttention has no k_channels/v_channels, which
        # MLASelfAttention passes to its core attention.
        raise UnsupportedModelError(
            f"model {model.name!r} uses multi-latent attention, which needs Transformer Engine's core attention; "
            "the local layer spec cannot build it. Run this trial on a GPU node with transformer_engine installed"
        )
    if run is not None and run.fp8_format is not None and layer_spec != "transformer_engine":
        raise UnsupportedModelError(
            "precision fp8 needs Transformer Engine on a GPU node; this run uses the local layer spec. "
            "Use precision bf16 or run on a GPU node with transformer_engine installed"
        )
    config = transformer_config(model, parallel, dtype=dtype, use_cpu_initialization=use_cpu_initialization, run=run)
    vocab = padded_vocab_size(model.vocab_size, parallel.tp)
    vpp = megatron_virtual_stages(parallel)  # an explicit layout sets the chunk count itself
    chunks: list[torch.nn.Module] = []
    for vp_stage in (range(vpp) if vpp else [None]):
        chunk = GPTModel(
            config=config,
            transformer_layer_spec=_block_spec(config, layer_spec, vp_stage),
            mtp_block_spec=_mtp_spec(config, layer_spec, vp_stage),
            vocab_size=vocab,
            max_sequence_length=max(seq_length, model.max_position_embeddings),
            pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
            post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
            share_embeddings_and_output_weights=model.tie_embeddings,
            position_embedding_type=model.position_embedding_type,
            vp_stage=vp_stage,
        )
        chunk.model_type = ModelType.encoder_or_decoder  # the pipeline schedules read this
        chunks.append(chunk)
    return chunks


def count_local_parameters(chunks: list[torch.nn.Module]) -> int:
    """Parameters this rank holds (shared embedding/output weights counted once per rank)."""
    seen: set[int] = set()
    total = 0
    for chunk in chunks:
        for p in chunk.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total
