"""autotune: find the fastest Megatron Core parallelism config that fits, with few GPU-hours."""

__version__ = "0.1.0"
