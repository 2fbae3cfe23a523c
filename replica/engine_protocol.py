"""The engine contract: what a replica's loop, the offline `LLM` and the router may ask of an engine.

`Engine` (the real model) and `shunter.testing.fake_engine.FakeEngine` (a deterministic
stand-in for benchmarks and tests) both implement `EngineProtocol` and speak only the types
defined here, so a change to one that the other does not follow fails
`tests/replica/test_engine_protocol.py`. Like vLLM v1's `EngineCoreOutput`, a step's result is
a per-request delta (`EngineOutput`); whole results are assembled above the engine.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple, Protocol, Sequence, runtime_checkable

from shunter.logprobs import TokenLogprobs
from shunter.sampling_params import SamplingParams

if TYPE_CHECKING:
    import torch

FinishReason = Literal["stop", "length", "abort", "deadline"]
MIGRATION_WATCHDOG_S = 10.0  # a reservation left this long without a stage or commit is freed


class CacheEvent(NamedTuple):
    """What the router's prefix index learns from: a block hash appeared or disappeared, in
    device memory or in the prefix cache's CPU tier. A named tuple, not a frozen dataclass:
    two are made for every block a prompt fills (stored, then evicted), and a frozen
    dataclass's constructor sets each field through `object.__setattr__`."""

    kind: Literal["stored", "evicted"]
    block_hash: int
    tier: Literal["device", "cpu"] = "device"


@dataclass(frozen=True, slots=True)
class ModelLimits:
    """What a request is checked against before any engine sees it (`replica/validation.py`)."""

    vocab_size: int
    max_model_len: int  # prompt + output tokens, at most
    block_size: int  # tokens per KV block
    num_kv_blocks: int  # one request may hold at most this many
    eos_token_ids: tuple[int, ...] = ()
    kv_block_bytes: int = 0  # one block's KV over all layers (what a migration moves per block); 0: none


@dataclass(slots=True)
class EngineOutput:
    """One request's progress in one step: the tokens (and text) this step made, maybe the end."""

    request_id: str
    new_token_ids: list[int]
    num_output_tokens: int  # output tokens so far on this engine, these included
    finish_reason: FinishReason | None = None
    new_text: str = ""  # the text these tokens released (empty without a tokenizer)
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    arrival_time: float = 0.0
    first_token_time: float | None = None
    # When the request asks (`SamplingParams.logprobs`): one per new token. With output token 0
    # come the prompt's (`prompt_logprobs`), one per prompt token, None for the first.
    new_logprobs: list[TokenLogprobs] | None = None
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    # Set when the engine took the request but then found it cannot be served (a grammar that no
    # output satisfies): it ends with finish_reason "abort", and the caller sees this as a bad request.
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(slots=True)
class EngineStats:
    """An engine's state after its last step: what the load report, `shunter status` and the
    metrics show. The `prefix_*` and `num_*` counts are cumulative over the engine's life."""

    num_running: int
    num_waiting: int
    num_swapped: int
    kv_blocks_total: int
    kv_blocks_in_use: int  # held by live requests
    kv_blocks_cached: int  # free but holding a reusable prefix
    prefix_hit_rate: float  # prompt tokens served from the cache / prompt tokens looked up
    prefix_queries: int  # prompt tokens looked up in the prefix cache, since the engine started
    prefix_hits: int  # of those, found cached
    num_preemptions: int
    num_swaps: int
    num_recomputed_tokens: int
    blocks_expected_growth: int  # blocks running requests will still take (`replica/load_estimate.py`)
    blocks_waiting: int  # blocks the queued prompts will take
    num_steps: int
    mean_step_time: float  # seconds, exponential moving average
    # Token counts after which the step time jumps (tile boundaries), timed at start-up; () if not
    # timed or if the time rises as a ramp (`replica/step_staircase.py`).
    step_tile_boundaries: tuple[int, ...] = ()
    # Speculative decoding: draft tokens verified, and of those accepted, since the engine started.
    spec_draft_tokens: int = 0
    spec_accepted_tokens: int = 0
    # The prefix cache's CPU tier (`--cpu-kv-gib`; all 0 without it): the CPU pool's blocks and
    # those holding a prefix copy now; cumulative: prompt tokens found there (also counted in
    # prefix_hits), bytes copied to it and loaded back, copies evicted, loads given up on
    # (`cpu_load_timeout_s`: their requests computed those tokens instead).
    kv_cpu_blocks_total: int = 0
    kv_cpu_blocks_cached: int = 0
    prefix_hits_cpu: int = 0
    cpu_offload_bytes: int = 0
    cpu_load_bytes: int = 0
    cpu_evicted_blocks: int = 0
    cpu_load_timeouts: int = 0


@dataclass
class MigrationState:
    """A running request packed for a move to another replica: its state and its KV blocks."""

    request_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    params: SamplingParams
    arrival_time: float
    num_computed_tokens: int
    num_cached_tokens: int
    # Per layer (k, v) of shape [num_blocks, block_size, num_kv_heads, head_dim] on the CPU,
    # covering the blocks of the first num_computed_tokens tokens from `kv_first_block` on (the
    # ones before it went ahead in a live migration's stages); None means the target recomputes.
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    block_size: int = 16
    rng_state: torch.Tensor | None = None  # the request's sampling generator, so seeded sampling continues
    kv_first_block: int = 0
    # As the request keeps them (`Request.output_logprobs`, `.prompt_logprobs`): the router sends
    # those of the tokens its client has not had yet, and the target goes on from them.
    output_logprobs: list[TokenLogprobs] | None = None
    prompt_logprobs: list[TokenLogprobs | None] | None = None

    def without_kv(self) -> MigrationState:
        """The same request with no KV: the target recomputes its tokens."""
        from dataclasses import replace

        return replace(self, kv=None, num_computed_tokens=0, kv_first_block=0)


@dataclass
class KVStage:
    """Blocks of a running request copied out while it keeps running: one stage of a live
    migration. Only full blocks go (their KV no longer changes); the commit sends the rest."""

    request_id: str
    first_block: int  # the request's block index of the first block in `kv`
    num_blocks: int
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None  # as MigrationState.kv; None when num_blocks is 0
    computed_blocks: int  # blocks its computed tokens touch now: what a commit after this stage still sends
    epoch: int  # its preemptions so far: a commit in another epoch sends every block again
    block_size: int = 16

    @property
    def end_block(self) -> int:
        return self.first_block + self.num_blocks


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer the serving path uses."""

    def __call__(self, text: str) -> object: ...  # .input_ids: list[int]
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...


@runtime_checkable
class EngineProtocol(Protocol):
    """Not thread-safe: one thread (the replica loop, or `LLM`) owns an engine."""

    limits: ModelLimits
    tokenizer: Tokenizer | None

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                    arrival_time: float | None = None) -> None:
        """Queue a request; ValueError naming the field if it cannot be served."""

    def abort_request(self, request_id: str) -> EngineOutput | None:
        """Finish it now ("abort") and free what it holds; None if it is not here."""

    def step(self) -> list[EngineOutput]:
        """Run one iteration; an output for every request that made a token or finished."""

    def has_unfinished_requests(self) -> bool: ...

    def stats(self) -> EngineStats: ...

    def drain_cache_events(self) -> list[CacheEvent]:
        """Prefix-cache changes since the last call."""

    def export_request(self, request_id: str, from_block: int = 0, epoch: int | None = None) -> MigrationState | None:
        """Take a request out with its computed KV from block `from_block` on (the blocks before
        it went ahead in stages; all of them if it was preempted since `epoch`); None if it is not here."""

    def import_request(self, state: MigrationState) -> int:
        """Resume an exported request (into its reservation, if one was made); returns the tokens
        resumed with KV (0: it recomputes)."""

    # ---- live migration: the source copies blocks out while the request runs, the target holds
    # blocks for it and fills them; `export_request`/`import_request` commit ----------------------
    def export_blocks(self, request_id: str, first_block: int, min_blocks: int = 1) -> KVStage | None:
        """The request's full blocks from `first_block` on, copied while it keeps running (none
        copied when fewer than `min_blocks` are new: the commit takes them); None if it is not here."""

    def prefilled(self, request_id: str) -> bool:
        """Whether the request's whole prompt is computed (or in the step in flight): its first
        token is made; False if it is not here."""

    def reserve_migration(self, request_id: str, num_blocks: int) -> bool:
        """Hold `num_blocks` blocks (in all) for a request migrating in; False if they cannot be
        spared (nothing changes)."""

    def import_blocks(self, stage: KVStage) -> bool:
        """Copy a stage into the request's reservation (grown if needed); False if it cannot be
        (no reservation, out of blocks, another block size): the migration aborts."""

    def cancel_migration(self, request_id: str) -> int:
        """Free a reservation (the migration aborted); the blocks it held."""

    def expire_migrations(self) -> list[str]:
        """Free reservations with no follow-up for `MIGRATION_WATCHDOG_S`; their request ids."""
