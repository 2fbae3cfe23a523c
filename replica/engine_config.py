"""Engine settings: small, validated, and free of anything learned at run time."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shunter.replica.speculative import SPECULATIVE_METHODS
from shunter.replica.step_staircase import STRIDE as STAIRCASE_STRIDE

PREEMPTION_MODES = ("recompute", "swap", "auto")


@dataclass
class EngineConfig:
    model: str = "smollm2-135m-instruct"
    block_size: int = 16
    num_kv_blocks: int | None = None  # None: size the pool from free memory
    max_num_batched_tokens: int = 512
    max_num_seqs: int = 64
    enable_prefix_caching: bool = True
    preemption_mode: str = "recompute"  # "recompute" | "swap" | "auto" (per victim, the cheaper measured way)
    admission_watermark: float | None = None  # admit only while predicted KV use stays under this fraction
    swap_space: float = 4.0  # GiB of CPU memory for swapped-out KV blocks
    # GiB of CPU memory for one KV pool serving both swap and a second tier of the prefix cache
    # (`replica/cpu_prefix_cache.py`); None: no CPU tier, and a swap pool of `swap_space` when
    # preemption may swap.
    cpu_kv_gib: float | None = None
    # A load from that tier not landed this long after its step launched it is given up on: its
    # request computes those tokens instead (`replica/kv_loads.py`).
    cpu_load_timeout_s: float = 1.0
    policy: str = "fcfs"
    policy_settings: dict[str, Any] = field(default_factory=dict)
    # Within a class, waiting requests with more cached prefix blocks first (`policies/cache_order.py`).
    cache_aware_order: bool = False
    # A prefill's last chunk takes at most this many tokens (0: as many as fit): set on P/D
    # prefill replicas (`serve --prefill-last-chunk-tokens`), whose last chunk is the KV a hand-off's commit carries.
    last_chunk_tokens: int = 0
    # Time steps of 16, 32, ... tokens at start-up to find the step-time staircase's tiles
    # (`replica/step_staircase.py`). None: on a GPU (about a second), and on the CPU only for
    # `policy="rad"`, which needs them (there a prefill of a few hundred tokens takes ~1 s).
    measure_step_staircase: bool | None = None
    device: str | None = None  # None: cuda if available, else cpu
    dtype: str | None = None  # None: float32 on CPU, bfloat16 on CUDA
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    kv_memory_fraction: float = 0.05  # of free host memory for the KV pool when num_kv_blocks is None (CPU)
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False  # CUDA: run decode steps eagerly instead of replaying CUDA graphs
    # Schedule step N+1 and prepare its inputs while the device runs step N (runners that can take
    # an input token from the device; the simulator's runner steps synchronously). None: where
    # the runner's launch returns before the device has run the step (a GPU); on the CPU a launch
    # computes the step, so there is nothing to overlap and each token would only come out a step
    # later (`ModelRunner.launch_returns_early`).
    async_scheduling: bool | None = None
    # Step inputs from the persistent batch, changed only where requests joined, left or grew;
    # False packs every step from scratch (the path before it: a baseline, without async scheduling).
    persistent_batch: bool = True
    num_threads: int | None = None  # torch's CPU threads; None: the CPUs this process is given (replica/threads.py)
    # Speculative decoding (`replica/speculative.py`): "ngram" proposes up to
    # `num_speculative_tokens` drafts a step from the context itself (n-grams of up to
    # `ngram_max` tokens), "draft" from `speculative_model` (`replica/draft_model.py`; the
    # model's own name shares its weights, cut to its first `speculative_draft_layers` layers).
    # It steps synchronously on packed inputs (both set so when it is on).
    speculative: str | None = None  # None with speculative_model set: "draft"
    speculative_model: str | None = None
    speculative_draft_layers: int | None = None  # None: all of the draft's layers
    num_speculative_tokens: int = 4
    ngram_max: int = 3
    seed: int = 0
    check_invariants: bool = False

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two >= 1, got {self.block_size}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError(f"num_kv_blocks must be >= 1 or None, got {self.num_kv_blocks}")
        if self.swap_space < 0:
            raise ValueError(f"swap_space must be >= 0 GiB, got {self.swap_space}")
        if self.cpu_kv_gib is not None and not self.cpu_kv_gib > 0:
            raise ValueError(f"cpu_kv_gib must be > 0 GiB or None, got {self.cpu_kv_gib}")
        if not self.cpu_load_timeout_s > 0:
            raise ValueError(f"cpu_load_timeout_s must be > 0 seconds, got {self.cpu_load_timeout_s}")
        if not 0 < self.kv_memory_fraction <= 1:
            raise ValueError(f"kv_memory_fraction must be in (0, 1], got {self.kv_memory_fraction}")
        if self.preemption_mode not in PREEMPTION_MODES:
            raise ValueError(f"preemption_mode must be one of {', '.join(PREEMPTION_MODES)}, got {self.preemption_mode!r}")
        if self.admission_watermark is not None and not 0 < self.admission_watermark <= 1:
            raise ValueError(f"admission_watermark must be in (0, 1] or None, got {self.admission_watermark}")
        if self.last_chunk_tokens < 0:
            raise ValueError(f"last_chunk_tokens must be >= 0, got {self.last_chunk_tokens}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or None, got {self.num_threads}")
        self._check_speculative()
        if self.async_scheduling and not self.persistent_batch:
            raise ValueError("async_scheduling needs persistent_batch (packed inputs take no token from the device)")
        if self.cache_aware_order and self.policy == "static":
            raise ValueError("cache_aware_order: static batching admits whole batches in arrival order; "
                             "there is no queue order to make cache-aware")
        if self.policy == "rad" and self.max_num_batched_tokens < STAIRCASE_STRIDE:
            raise ValueError(f"max_num_batched_tokens: {self.max_num_batched_tokens} is below the finest tile the "
                             f"start-up timing resolves ({STAIRCASE_STRIDE} tokens); policy rad sizes steps in tiles")
        if self.dtype not in (None, "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")

    def _check_speculative(self) -> None:
        if self.speculative is None and self.speculative_model is not None:
            self.speculative = "draft"
        if self.speculative is None:
            if self.speculative_draft_layers is not None:
                raise ValueError("speculative_draft_layers: set without speculative_model")
            return
        if self.speculative not in SPECULATIVE_METHODS:
            raise ValueError(f"speculative must be one of {', '.join(SPECULATIVE_METHODS)} or None, "
                             f"got {self.speculative!r}")
        if (self.speculative == "draft") != (self.speculative_model is not None):
            raise ValueError(f"speculative_model: speculative={self.speculative!r} "
                             + ("takes no draft model" if self.speculative_model else "needs a draft model"))
        if self.speculative_draft_layers is not None and self.speculative_draft_layers < 1:
            raise ValueError(f"speculative_draft_layers must be >= 1 or None, got {self.speculative_draft_layers}")
        if self.num_speculative_tokens < 1 or self.ngram_max < 1:
            raise ValueError("num_speculative_tokens and ngram_max must be >= 1, got "
                             f"{self.num_speculative_tokens} and {self.ngram_max}")
        self.async_scheduling = self.persistent_batch = False  # the next drafts need this step's tokens
