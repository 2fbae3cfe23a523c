"""An engine's side of moving a running request to another replica, stop-and-copy or live.

Stop-and-copy is one call on each side: `export_request` takes the request out with all its KV,
`import_request` seats it on the target. Live migration (Llumnix) splits the copy: the target
first reserves blocks (`reserve_migration`), the source copies the blocks completed so far while
the request keeps decoding (`export_blocks`, one stage) and the target writes them into the
reservation (`import_blocks`); only the last few blocks travel at the commit, when the source
stops the request between two steps (`export_request` from the first block not yet sent) and the
target seats it on its reservation (`import_request`). Downtime is the commit alone, so it does
not grow with the context. A reservation nobody follows up is freed by the watchdog
(`expire_migrations`), so an aborted migration leaks nothing on the target.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from shunter.mathutil import cdiv
from shunter.replica.engine_protocol import MIGRATION_WATCHDOG_S, KVStage, MigrationState
from shunter.replica.request import Request, RequestStatus

if TYPE_CHECKING:
    from shunter.clock import Clock
    from shunter.replica.grammar import Grammar
    from shunter.replica.detokenizer import IncrementalDetokenizer
    from shunter.replica.kv_cache_manager import KVCacheManager
    from shunter.replica.model_runner import ModelRunner
    from shunter.replica.scheduler import Scheduler
    from shunter.sampling_params import SamplingParams


def _copy(items: list | None) -> list | None:
    return None if items is None else list(items)


class Migration:
    """Mixed into `Engine`: the migration half of `EngineProtocol`, over the engine's parts."""

    scheduler: Scheduler
    kv: KVCacheManager
    runner: ModelRunner
    clock: Clock
    block_size: int
    eos_token_ids: tuple[int, ...]
    detokenizers: dict[str, IncrementalDetokenizer]

    _drained: list
    _constrained: set[str]

    def _track(self, request: Request) -> None: ...
    def _drain(self) -> None: ...
    def _grammar_of(self, request_id: str, params: SamplingParams, output_token_ids: list[int]) -> Grammar | None: ...

    # ---- source ------------------------------------------------------------------------------
    def export_request(self, request_id: str, from_block: int = 0,
                       epoch: int | None = None) -> MigrationState | None:
        self._drain()  # a step in flight lands first: the state never carries a token still on the device
        request = self.scheduler.requests.get(request_id)
        if request is None:
            return None
        # Its tokens drained just now go with the state, not in a step's outputs.
        self._drained = [o for o in self._drained if o.request_id != request_id]
        kv, first = None, 0
        if request.status is RequestStatus.RUNNING and request.num_computed_tokens > 0:
            if epoch is None or epoch == request.num_preemptions:
                first = from_block  # the blocks before it went ahead in stages and are still valid
            blocks = self.kv.blocks_of(request_id)[first: cdiv(request.num_computed_tokens, self.block_size)]
            kv = self.runner.read_blocks(blocks)
        generator = self.runner.generators.get(request_id)
        state = MigrationState(
            request_id=request_id,
            prompt_token_ids=request.prompt_token_ids,
            output_token_ids=list(request.output_token_ids),
            params=request.params,
            arrival_time=request.arrival_time,
            num_computed_tokens=request.num_computed_tokens if kv is not None else 0,
            num_cached_tokens=max(request.num_cached_tokens, 0),
            kv=kv,
            block_size=self.block_size,
            rng_state=generator.get_state() if generator is not None else None,
            kv_first_block=first,
            output_logprobs=request.output_logprobs,
            prompt_logprobs=request.prompt_logprobs,
        )
        self.scheduler.remove(request)
        self._constrained.discard(request_id)
        self.runner.remove_request(request_id)
        self.detokenizers.pop(request_id, None)
        self.runner.drop_generator(request_id)
        return state

    def export_blocks(self, request_id: str, first_block: int, min_blocks: int = 1) -> KVStage | None:
        request = self.scheduler.requests.get(request_id)
        if request is None:
            return None
        running = request.status is RequestStatus.RUNNING
        full = request.num_computed_tokens // self.block_size if running else 0
        blocks = self.kv.blocks_of(request_id)[first_block:full]
        if len(blocks) < min_blocks:
            blocks = []
        return KVStage(request_id, first_block, len(blocks), self.runner.read_blocks(blocks) if blocks else None,
                       cdiv(request.num_computed_tokens, self.block_size) if running else 0,
                       request.num_preemptions, self.block_size)

    def prefilled(self, request_id: str) -> bool:
        request = self.scheduler.requests.get(request_id)
        return request is not None and request.status is RequestStatus.RUNNING \
            and request.num_computed_tokens >= request.num_prompt_tokens

    # ---- target ------------------------------------------------------------------------------
    def reserve_migration(self, request_id: str, num_blocks: int) -> bool:
        if request_id in self.scheduler.requests:
            raise ValueError(f"request_id {request_id!r} is already in use")
        return self.kv.reserve(request_id, num_blocks, self.clock.now())

    def import_blocks(self, stage: KVStage) -> bool:
        held = self.kv.reservations.get(stage.request_id)
        if held is None or stage.block_size != self.block_size or stage.first_block > held.filled:
            return False
        if not self.kv.reserve(stage.request_id, stage.end_block, self.clock.now()):
            return False
        if stage.num_blocks:
            self.runner.write_blocks(held.block_ids[stage.first_block: stage.end_block], stage.kv)
        held.filled = max(held.filled, stage.end_block)
        return True

    def cancel_migration(self, request_id: str) -> int:
        return self.kv.release_reservation(request_id)

    def expire_migrations(self) -> list[str]:
        expired = self.kv.expired_reservations(self.clock.now(), MIGRATION_WATCHDOG_S)
        for request_id in expired:
            self.kv.release_reservation(request_id)
        return expired

    def import_request(self, state: MigrationState) -> int:
        if state.request_id in self.scheduler.requests:
            raise ValueError(f"request_id {state.request_id!r} is already in use")
        request = Request(
            state.request_id, list(state.prompt_token_ids), state.params, arrival_time=state.arrival_time,
            eos_token_ids=self.eos_token_ids, output_token_ids=list(state.output_token_ids),
            num_cached_tokens=state.num_cached_tokens, output_logprobs=_copy(state.output_logprobs),
            prompt_logprobs=_copy(state.prompt_logprobs),
            grammar=self._grammar_of(state.request_id, state.params, state.output_token_ids),
        )
        self._track(request)
        if state.rng_state is not None and request.request_id in self.runner.generators:
            self.runner.generators[request.request_id].set_state(state.rng_state)
        detok = self.detokenizers.get(request.request_id)
        if detok is not None:
            for token in request.output_token_ids:
                detok.add(token)
            detok.released = len(detok.text)  # the source replica streamed this text already
        held = self.kv.reservations.get(state.request_id)
        usable = state.kv is not None and state.block_size == self.block_size and state.num_computed_tokens > 0
        if usable and state.kv_first_block > 0:  # the blocks before it must have come in stages
            usable = held is not None and state.kv_first_block <= held.filled
        if not usable:
            self.kv.release_reservation(state.request_id)
            self.scheduler.add(request)
            return 0
        blocks = self.scheduler.admit_migrated(request, state.num_computed_tokens, reserved=held is not None)
        if blocks is None:
            return 0
        self.runner.write_blocks(blocks[state.kv_first_block: cdiv(state.num_computed_tokens, self.block_size)],
                                 state.kv)
        self.kv.cache_computed_blocks(request)
        return request.num_computed_tokens
