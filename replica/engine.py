"""The replica's engine: add requests, step, get tokens back.

One `step()` = schedule -> run the model on one ragged batch -> append tokens, stop, free.
"""
from __future__ import annotations

import logging
import random
import time

from shunter.clock import Clock, MonotonicClock
from shunter.replica.detokenizer import IncrementalDetokenizer
from shunter.replica.engine_config import EngineConfig
from shunter.replica.engine_protocol import CacheEvent, EngineOutput, EngineStats, ModelLimits
from shunter.replica.kv_cache_manager import KVCacheManager
from shunter.replica.load_estimate import remaining_blocks
from shunter.replica.migration import Migration
from shunter.replica.model_runner import ModelRunner
from shunter.replica.policies import make_policy
from shunter.replica.request import Request
from shunter.replica.scheduler import Scheduler, SchedulerConfig
from shunter.replica.threads import set_torch_threads
from shunter.replica.validation import validate_request
from shunter.sampling_params import SamplingParams

log = logging.getLogger(__name__)


class Engine(Migration):
    """Implements `EngineProtocol` over the real model (or, in tests, a scripted runner); its
    migration half is `Migration` (`replica/migration.py`)."""

    def __init__(self, config: EngineConfig, clock: Clock | None = None, runner: ModelRunner | None = None) -> None:
        """`runner` replaces the model (tests pass a scripted fake); by default the model is loaded."""
        self.config = config
        self.clock = clock or MonotonicClock()
        if runner is None:
            set_torch_threads(config.num_threads)
        self.runner = runner or ModelRunner.create(config)
        self.tokenizer = self.runner.tokenizer
        self.max_model_len = self.runner.max_model_len
        self.block_size = config.block_size
        self.kv = KVCacheManager(
            self.runner.num_blocks, config.block_size, self.runner.num_cpu_blocks, config.enable_prefix_caching
        )
        self.eos_token_ids = tuple(self.runner.config.eos_token_ids)
        self.limits = ModelLimits(self.runner.config.vocab_size, self.max_model_len, self.block_size,
                                  self.kv.num_blocks, self.eos_token_ids, getattr(self.runner, "kv_block_bytes", 0))
        policy = make_policy(config.policy, self.clock, **config.policy_settings)
        sched_config = SchedulerConfig(
            config.max_num_batched_tokens, config.max_num_seqs, config.preemption_mode, config.check_invariants,
            admission_watermark=config.admission_watermark,
        )
        # "auto" preemption compares recompute with swap, so it needs their measured prices.
        measure = getattr(self.runner, "measure_preemption_costs", None)
        costs = measure() if config.preemption_mode == "auto" and measure is not None else None
        self.scheduler = Scheduler(sched_config, self.kv, policy, self.clock, costs)
        self.detokenizers: dict[str, IncrementalDetokenizer] = {}
        self._rng = random.Random(config.seed)
        self._step_time_ema = 0.0

    # ---- requests in -----------------------------------------------------------------------
    def add_request(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, arrival_time: float | None = None
    ) -> None:
        prompt_token_ids = list(prompt_token_ids)
        validate_request(prompt_token_ids, params, self.limits)
        if request_id in self.scheduler.requests:
            raise ValueError(f"request_id {request_id!r} is already in use")
        request = Request(
            request_id,
            prompt_token_ids,
            params,
            arrival_time=self.clock.now() if arrival_time is None else arrival_time,
            eos_token_ids=self.eos_token_ids,
        )
        self._track(request)
        self.scheduler.add(request)

    def _track(self, request: Request) -> None:
        params = request.params
        seed = params.seed if params.seed is not None else self._rng.getrandbits(63)
        if not params.greedy:
            self.runner.add_generator(request.request_id, seed)
        if self.tokenizer is not None:
            self.detokenizers[request.request_id] = IncrementalDetokenizer(self.tokenizer, params.stop)

    def abort_request(self, request_id: str) -> EngineOutput | None:
        request = self.scheduler.requests.get(request_id)
        if request is None:
            return None
        return self._finish(request, "abort", [])

    # ---- one step --------------------------------------------------------------------------
    def step(self) -> list[EngineOutput]:
        if not self.scheduler.has_unfinished():
            return []
        started, clock_started = time.perf_counter(), self.clock.now()
        out = self.scheduler.schedule()
        tokens = self.runner.execute(out)
        self.kv.swaps_done()
        outputs = [self._finish(r, r.finish_reason or "abort", []) for r in out.finished]
        now = self.clock.now()
        for scheduled, token in zip(out.scheduled, tokens):
            self.scheduler.advance(scheduled)
            if token is not None:
                outputs.append(self._append_token(scheduled.request, token, now))
        elapsed = time.perf_counter() - started
        self.scheduler.observe_step(self.clock.now() - clock_started, out.num_tokens)
        self._step_time_ema = elapsed if self._step_time_ema == 0 else 0.9 * self._step_time_ema + 0.1 * elapsed
        return outputs

    def _append_token(self, request: Request, token: int, now: float) -> EngineOutput:
        request.output_token_ids.append(token)
        if request.first_token_time is None:
            request.first_token_time = now
        request.last_token_time = now
        detok = self.detokenizers.get(request.request_id)
        new_text = detok.add(token) if detok else ""
        reason = self._stop_reason(request, token, detok)
        if reason is not None:
            return self._finish(request, reason, [token], new_text)
        return self._output(request, [token], new_text)

    def _stop_reason(self, request: Request, token: int, detok: IncrementalDetokenizer | None) -> str | None:
        params = request.params
        if (not params.ignore_eos and token in request.eos_token_ids) or token in params.stop_token_ids:
            return "stop"
        if detok is not None and detok.stopped:
            return "stop"
        if request.num_output_tokens >= params.max_tokens or request.num_tokens >= self.max_model_len:
            return "length"
        return None

    def _finish(self, request: Request, reason: str, new_tokens: list[int], new_text: str = "") -> EngineOutput:
        if not request.is_finished:
            self.scheduler.finish(request, reason)
        detok = self.detokenizers.pop(request.request_id, None)
        if detok is not None:
            new_text += detok.flush()
        self.runner.drop_generator(request.request_id)
        return self._output(request, new_tokens, new_text)

    @staticmethod
    def _output(request: Request, new_tokens: list[int], new_text: str) -> EngineOutput:
        return EngineOutput(request.request_id, new_tokens, request.num_output_tokens, request.finish_reason,  # type: ignore[arg-type]
                            new_text, max(request.num_cached_tokens, 0), request.arrival_time,
                            request.first_token_time)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    # ---- what the router sees --------------------------------------------------------------
    def stats(self) -> EngineStats:
        s = self.scheduler
        # Every step (the load report): a plain loop, names bound once, `kv.blocks_of` inlined.
        growth, block_size, tables = 0, self.block_size, self.kv.block_tables
        for r in s.running:
            growth += remaining_blocks(len(r.prompt_token_ids), r.params, block_size, len(tables.get(r.request_id, ())))
        queries = self.kv.prefix_queries
        return EngineStats(
            num_running=len(s.running),
            num_waiting=len(s.waiting),
            num_swapped=len(s.swapped),
            kv_blocks_total=self.kv.num_blocks,
            kv_blocks_in_use=self.kv.num_blocks_in_use(),
            kv_blocks_cached=self.kv.num_blocks_cached(),
            prefix_hit_rate=self.kv.prefix_hits / queries if queries else 0.0,
            prefix_queries=queries,
            prefix_hits=self.kv.prefix_hits,
            num_preemptions=s.stats.num_preemptions,
            num_swaps=s.stats.num_swaps_out,
            num_recomputed_tokens=s.stats.num_recomputed_tokens,
            blocks_expected_growth=growth,
            blocks_waiting=s.queued_blocks,
            num_steps=s.num_steps,
            mean_step_time=self._step_time_ema,
        )

    def drain_cache_events(self) -> list[CacheEvent]:
        return self.kv.drain_events()
