"""Make Megatron Core 0.16.1 train on CPU with gloo, for real end-to-end tests without a GPU.

Megatron assumes CUDA everywhere (allocations on `torch.cuda.current_device()`, CUDA RNG
states, streams, `Tensor.type() == 'torch.cuda.FloatTensor'` checks in the optimizers) and a few
code paths only exist with Transformer Engine or NCCL. Each patch below is the smallest change
that lets that path run on CPU, says why, and is applied only by `enable()`, which the worker
calls only on the CPU backend. Nothing here changes the math Megatron does.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch.overrides import TorchFunctionMode

_ENABLED = False


def _is_cuda_device(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # A bare int is a CUDA ordinal (Megatron passes torch.cuda.current_device()).
    return isinstance(device, int) and not isinstance(device, bool)


_CPU = torch.device("cpu")


def _backward_under(mode, tensors, grad_tensors=None, retain_graph=None, create_graph=False, inputs=None):
    """torch.autograd.backward's body after its torch-function dispatch, run with `mode` pushed.

    Calling torch.autograd.backward itself under the re-pushed mode would dispatch to the mode
    again, forever; this is the part after that dispatch (torch/autograd/__init__.py).
    """
    from torch.autograd import _engine_run_backward, _make_grads, _tensor_or_tensors_to_tuple

    tensors = (tensors,) if isinstance(tensors, torch.Tensor) else tuple(tensors)
    with mode:
        grads = _make_grads(tensors, _tensor_or_tensors_to_tuple(grad_tensors, len(tensors)), is_grads_batched=False)
        _engine_run_backward(tensors, grads, create_graph if retain_graph is None else retain_graph, create_graph,
                             tuple(inputs) if inputs is not None else (), allow_unreachable=True,
                             accumulate_grad=True)


class CudaToCpuMode(TorchFunctionMode):
    """Rewrites every CUDA device argument to CPU and makes `.cuda()` a no-op.

    A mode is popped while its own handler runs. torch.autograd.backward and Tensor.backward
    dispatch to the mode, so the whole backward pass would run inside the handler, un-patched,
    and custom autograd backwards (Megatron's all-to-all, TP mappings) would allocate on CUDA.
    Those two entry points therefore run the backward with the mode pushed again.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda or func is torch.Tensor.pin_memory:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            # Megatron's optimizers branch on 'torch.cuda.FloatTensor' etc.; report the CUDA name.
            return func(*args).replace("torch.", "torch.cuda.", 1)
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs["device"] = _CPU
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False  # pinned host memory needs a CUDA allocator
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], _CPU, *args[2:])
        if func is torch.device and args and _is_cuda_device(args[0]):
            return _CPU  # e.g. `with torch.device(torch.cuda.current_device()):` in YaRN RoPE
        if func is torch.autograd.backward:
            return _backward_under(self, *args, **kwargs)
        if func is torch.Tensor.backward:
            tensor, *rest = args
            gradient = rest[0] if rest else kwargs.pop("gradient", None)
            return _backward_under(self, tensor, gradient, *rest[1:], **kwargs)
        return func(*args, **kwargs)


class _NullStream:
    """Stands in for torch.cuda.Stream/Event: CPU work is already ordered."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, *args, **kwargs):
        pass

    def wait_event(self, *args, **kwargs):
        pass

    def record_event(self, *args, **kwargs):
        return _NullStream()

    def record(self, *args, **kwargs):
        pass

    def synchronize(self):
        pass

    def query(self):
        return True

    def wait(self, *args, **kwargs):
        pass

    def elapsed_time(self, other):
        return 0.0


def _patch_torch_cuda() -> None:
    """torch.cuda entry points Megatron calls unconditionally, redirected to CPU equivalents."""
    cuda = torch.cuda
    cuda.current_device = lambda: 0
    cuda.device_count = lambda: 1
    cuda.set_device = lambda *a, **k: None
    cuda.synchronize = lambda *a, **k: None
    cuda.Stream = _NullStream
    cuda.Event = _NullStream
    cuda.current_stream = lambda *a, **k: _NullStream()
    cuda.default_stream = lambda *a, **k: _NullStream()
    cuda.stream = lambda *a, **k: contextlib.nullcontext()
    cuda.empty_cache = lambda: None
    # The RNG tracker forks "CUDA" generator states for dropout and init; on CPU the CPU
    # generator plays that role, so tracker semantics (distinct TP/EP streams) are kept.
    cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    cuda.set_rng_state = lambda state, device="cuda": torch.set_rng_state(state)
    # Not torch.manual_seed: that calls torch.cuda.manual_seed_all back.
    cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(seed)
    cuda.memory_allocated = lambda *a, **k: 0
    cuda.max_memory_allocated = lambda *a, **k: 0
    cuda.memory_reserved = lambda *a, **k: 0
    cuda.max_memory_reserved = lambda *a, **k: 0


def _patch_megatron_rng() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    # Same reason as the torch.cuda RNG redirect: these helpers read torch.cuda.default_generators.
    mrandom._get_cuda_rng_state = lambda device="cuda", clone=False, graph_safe=False: (
        torch.get_rng_state().clone() if clone else torch.get_rng_state()
    )
    mrandom._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: torch.set_rng_state(new_state)


def _patch_moe() -> None:
    from megatron.core.transformer.moe import moe_utils

    # moe_utils only binds te_general_gemm when Transformer Engine imports, yet the router's
    # fp32 gemm tests `te_general_gemm is not None`: without TE that is a NameError.
    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None

    # The alltoall dispatcher passes split sizes as tensors; gloo's all_to_all_single accepts
    # only lists of ints (NCCL takes either).
    real_all_to_all_single = torch.distributed.all_to_all_single

    def all_to_all_single(output, input, output_split_sizes=None, input_split_sizes=None, **kw):
        if isinstance(output_split_sizes, torch.Tensor):
            output_split_sizes = output_split_sizes.tolist()
        if isinstance(input_split_sizes, torch.Tensor):
            input_split_sizes = input_split_sizes.tolist()
        return real_all_to_all_single(output, input, output_split_sizes, input_split_sizes, **kw)

    # megatron/core/tensor_parallel/mappings.py looks these up on torch.distributed at call time,
    # so the wrappers are process-wide; they change nothing for calls gloo already accepts, and
    # only this worker process runs them.
    torch.distributed.all_to_all_single = all_to_all_single
    _patch_uneven_collectives()


def _patch_uneven_collectives() -> None:
    """With EP x ETP the dispatcher gathers/scatters a different token count per ETP rank
    (mappings.py::_gather_along_first_dim / _reduce_scatter_along_first_dim with split sizes).
    Gloo's all_gather needs equal sizes (pad, gather, slice) and gloo has no reduce_scatter
    (all-reduce the whole input, keep this rank's slice: same result, more traffic)."""
    import torch.distributed as dist

    real_all_gather, real_all_reduce = dist.all_gather, dist.all_reduce

    def all_gather(tensor_list, tensor, group=None, async_op=False):
        if all(t.shape == tensor.shape for t in tensor_list):
            return real_all_gather(tensor_list, tensor, group=group, async_op=async_op)
        rows = max(t.shape[0] for t in tensor_list)
        padded = tensor.new_zeros((rows, *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        buffers = [torch.empty_like(padded) for _ in tensor_list]
        real_all_gather(buffers, padded, group=group)
        for out, buf in zip(tensor_list, buffers):
            out.copy_(buf[: out.shape[0]])
        return None

    def reduce_scatter(output, input_list, op=dist.ReduceOp.SUM, group=None, async_op=False):
        full = torch.cat([t.reshape(t.shape[0], -1) if t.dim() else t.reshape(1, 1) for t in input_list])
        real_all_reduce(full, op=op, group=group)
        rank = dist.get_rank(group)
        start = sum(t.shape[0] for t in input_list[:rank])
        output.copy_(full[start: start + input_list[rank].shape[0]].reshape(output.shape))
        return None

    dist.all_gather = all_gather
    dist.reduce_scatter = reduce_scatter


def _patch_sequence_parallel_norm() -> None:
    from megatron.core.transformer import torch_norm

    # WrappedTorchNorm refuses sequence_parallel because it does not tag its weights for the SP
    # grad all-reduce. Accept it and tag them, which is what TENorm does on GPU.
    original_new = torch_norm.WrappedTorchNorm.__new__

    @functools.wraps(original_new)
    def new(cls, config, hidden_size, eps=1e-5, persist_layer_norm=False, zero_centered_gamma=False,
            normalization="LayerNorm"):
        sp = config.sequence_parallel
        config.sequence_parallel = False  # only for the duration of the original's check
        try:
            norm = original_new(cls, config, hidden_size, eps, persist_layer_norm, zero_centered_gamma,
                                normalization)
        finally:
            config.sequence_parallel = sp
        for param in norm.parameters():
            param.sequence_parallel = sp
        return norm

    torch_norm.WrappedTorchNorm.__new__ = new


def enable() -> CudaToCpuMode:
    """Apply every patch once (idempotent) and return the device-rewriting mode to enter."""
    global _ENABLED
    if not _ENABLED:
        _patch_torch_cuda()
        _patch_megatron_rng()
        _patch_moe()
        _patch_sequence_parallel_norm()
        _ENABLED = True
    return CudaToCpuMode()
