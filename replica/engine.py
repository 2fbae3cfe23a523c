"""The replica's engine: add requests, step, get tokens back.

One `step()` = schedule -> launch the model on one ragged batch -> read the tokens back, stop,
free. With async scheduling (the default where the runner supports it) a step's tokens are read
back after the next step has been scheduled and launched, so the host's work overlaps the
device's; placeholders (`request.PLACEHOLDER`) stand for tokens on their way.
"""
from __future__ import annotations

import logging
import random
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field

from shunter.clock import Clock, MonotonicClock
from shunter.replica.detokenizer import IncrementalDetokenizer
from shunter.replica.engine_config import EngineConfig
from shunter.replica.engine_protocol import CacheEvent, EngineOutput, EngineStats, ModelLimits
from shunter.replica.gc_tuning import tune_gc_for_serving
from shunter.replica.grammar import Grammar, GrammarCompiler
from shunter.replica.kv_cache_manager import KVCacheManager
from shunter.replica.kv_loads import LoadWatch
from shunter.replica.load_estimate import expected_blocks
from shunter.replica.logprobs import HostLogprobs, store_prompt_logprobs
from shunter.replica.migration import Migration
from shunter.replica.model_runner import ModelRunner
from shunter.replica.policies import make_policy
from shunter.replica.readback import PendingTokens
from shunter.replica.request import PLACEHOLDER, Request, RequestStatus
from shunter.replica.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from shunter.replica.speculative import NgramProposer, Speculator
from shunter.replica.step_staircase import MAX_TIMED_TOKENS, StepStaircase
from shunter.replica.threads import set_torch_threads
from shunter.replica.validation import validate_request
from shunter.sampling_params import SamplingParams

log = logging.getLogger(__name__)


@dataclass
class _Flight:
    """A launched step whose tokens the host has not read back yet. It holds only what settling
    and completing need (no `SchedulerOutput`): under async scheduling it outlives its step, and
    what outlives a step is what Python's garbage collector promotes and rescans."""

    pending: PendingTokens | list[int | None]  # a synchronous runner (fakes, the simulator) returns the list
    sampled: list[Request]  # the requests that sample in it, in order
    slots: list[int]  # where each one's token goes in its output_token_ids
    filled: list[Request]  # whose computed tokens crossed a block boundary: blocks to publish
    last: list[Request] = field(default_factory=list)  # whose token on the way is their last (length)
    finals: dict[str, Request] = field(default_factory=dict)  # ended while their token was on its way
    settled: bool = False
    constrained: bool = False  # a request in it follows a grammar: its next mask needs this step's token
    speculated: dict[str, int] = field(default_factory=dict)  # request id -> drafts it verifies
    num_tokens: int = 0  # tokens the step computes (its scheduled chunks', summed in `_launch`'s pass)


def _with_logprobs(out: EngineOutput, request: Request) -> None:
    """Give an output the log-probabilities of its tokens (the request's last ones), and the
    prompt's with output token 0."""
    n = len(out.new_token_ids)
    if request.output_logprobs is not None:
        out.new_logprobs = request.output_logprobs[len(request.output_logprobs) - n:] if n else []
    if request.prompt_logprobs is not None and n and out.num_output_tokens == n:
        out.prompt_logprobs = request.prompt_logprobs


def _drop_placeholders(ids: list[int]) -> None:
    while ids and ids[-1] == PLACEHOLDER:
        ids.pop()


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
            self.runner.num_blocks, config.block_size, self.runner.num_cpu_blocks, config.enable_prefix_caching,
            cpu_prefix_cache=config.cpu_kv_gib is not None,
        )
        self.eos_token_ids = tuple(self.runner.config.eos_token_ids)
        self.limits = ModelLimits(self.runner.config.vocab_size, self.max_model_len, self.block_size,
                                  self.kv.num_blocks, self.eos_token_ids, getattr(self.runner, "kv_block_bytes", 0))
        policy = make_policy(config.policy, self.clock, **config.policy_settings)
        sched_config = SchedulerConfig(
            config.max_num_batched_tokens, config.max_num_seqs, config.preemption_mode, config.check_invariants,
            admission_watermark=config.admission_watermark, cache_aware_order=config.cache_aware_order,
            last_chunk_tokens=config.last_chunk_tokens,
        )
        # "auto" preemption compares recompute with swap, so it needs their measured prices.
        measure = getattr(self.runner, "measure_preemption_costs", None)
        costs = measure() if config.preemption_mode == "auto" and measure is not None else None
        staircase = self._measure_staircase(config)
        self.scheduler = Scheduler(sched_config, self.kv, policy, self.clock, costs, staircase)
        self._tile_boundaries = staircase.boundaries if staircase is not None else ()
        self.loads = LoadWatch(self.scheduler, config.cpu_load_timeout_s, self.clock)  # from the CPU tier
        self.detokenizers: dict[str, IncrementalDetokenizer] = {}
        self._rng = random.Random(config.seed)
        self._step_time_ema = 0.0
        # Async scheduling needs a runner that takes a placeholder's token from the device; by
        # default it is on where the runner's launch returns before the device has run the step.
        wanted = config.async_scheduling
        if wanted is None:
            wanted = config.persistent_batch and getattr(self.runner, "launch_returns_early", True)
        self.async_scheduling = wanted and getattr(self.runner, "supports_async_scheduling", False)
        self._flight: _Flight | None = None  # the launched step whose tokens are not read yet
        self._drained: list[EngineOutput] = []  # outputs of a step completed between two steps
        # Structured output (`replica/grammar.py`): requests whose grammar is being compiled wait
        # here, outside the scheduler; `_constrained` names those admitted with one (a superset:
        # it only saves looking for grammars in a step that has none).
        self.grammars = (GrammarCompiler(self.tokenizer, self.limits.vocab_size, self.eos_token_ids)
                         if self.tokenizer is not None else None)
        self._compiling: dict[str, tuple[Request, Future[Grammar]]] = {}
        self._constrained: set[str] = set()
        self.speculator = self._speculator(config)
        tune_gc_for_serving()

    def _speculator(self, config: EngineConfig) -> Speculator | None:
        if config.speculative is None:
            return None
        proposer = NgramProposer(config.ngram_max) if config.speculative == "ngram" else self.runner.draft
        return Speculator(config.num_speculative_tokens, self.max_model_len, proposer)

    def _measure_staircase(self, config: EngineConfig) -> StepStaircase | None:
        """Time steps of increasing size on the runner (`replica/step_staircase.py`), up to the
        budget (the only sizes a step can take), when asked
        or, by default, on a GPU and for RAD (which sizes its steps on it)."""
        measure = getattr(self.runner, "measure_step_staircase", None)
        wanted = config.measure_step_staircase
        if wanted is None:
            device = getattr(self.runner, "device", None)
            wanted = config.policy == "rad" or getattr(device, "type", None) == "cuda"
        if not wanted or measure is None:
            return None
        staircase = measure(min(config.max_num_batched_tokens, MAX_TIMED_TOKENS))
        if staircase is not None:
            log.info("step-time staircase: tile %s, boundaries %s", staircase.tile, list(staircase.boundaries))
        return staircase

    # ---- requests in -----------------------------------------------------------------------
    def add_request(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, arrival_time: float | None = None
    ) -> None:
        prompt_token_ids = list(prompt_token_ids)
        validate_request(prompt_token_ids, params, self.limits)
        if request_id in self.scheduler.requests or request_id in self._compiling:
            raise ValueError(f"request_id {request_id!r} is already in use")
        request = Request(
            request_id,
            prompt_token_ids,
            params,
            arrival_time=self.clock.now() if arrival_time is None else arrival_time,
            eos_token_ids=self.eos_token_ids,
        )
        compiler = self._grammar_compiler() if params.structured_output is not None else None
        self._track(request)
        if compiler is not None:
            self._compiling[request_id] = (request, compiler.compile(params.structured_output))
        else:
            self.scheduler.add(request)

    def _grammar_compiler(self) -> GrammarCompiler:
        if self.grammars is None:
            raise ValueError("structured_output: this model has no tokenizer to build a grammar's token mask from")
        return self.grammars

    def _grammar_of(self, request_id: str, params: SamplingParams, output_token_ids: list[int]) -> Grammar | None:
        """A migrated request's grammar, compiled here and now and advanced over its output so far."""
        if params.structured_output is None:
            return None
        grammar = self._grammar_compiler().compile_now(params.structured_output)
        grammar.replay(output_token_ids)
        self._constrained.add(request_id)
        return grammar

    def _admit_compiled(self) -> list[EngineOutput]:
        """Hand the requests whose grammar is ready to the scheduler; with nothing else to run,
        wait a little for one first (no spinning)."""
        if not self.scheduler.has_unfinished() and self._flight is None:
            wait([f for _, f in self._compiling.values()], timeout=0.005, return_when=FIRST_COMPLETED)
        outputs = []
        for request_id, (request, future) in list(self._compiling.items()):
            if not future.done():
                continue
            del self._compiling[request_id]
            try:
                request.grammar = future.result()
            except Exception as e:
                outputs.append(self._drop_uncompiled(request, str(e) if isinstance(e, ValueError) else
                                                     f"structured_output: the grammar did not compile: {e!r}"))
                continue
            self._constrained.add(request_id)
            self.scheduler.add(request)
        return outputs

    def _drop_uncompiled(self, request: Request, error: str | None = None) -> EngineOutput:
        """End a request that never reached the scheduler: aborted, or its grammar failed (`error`)."""
        request.status, request.finish_reason = RequestStatus.FINISHED, "abort"
        self.detokenizers.pop(request.request_id, None)
        self.runner.drop_generator(request.request_id)
        out = self._output(request, [], "")
        out.error = error
        return out

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
            compiling = self._compiling.pop(request_id, None)
            if compiling is None:
                return None
            compiling[1].cancel()
            return self._drop_uncompiled(compiling[0])
        return self._finish(request, "abort", [])

    # ---- one step --------------------------------------------------------------------------
    def step(self) -> list[EngineOutput]:
        """Schedule and launch a step; return what the last finished step made. Synchronously
        that is this step; with async scheduling the step before, whose tokens are read back
        only now, after this one was launched on the device."""
        outputs, self._drained = self._drained, []
        if self._compiling:
            outputs += self._admit_compiled()
        flight, self._flight = self._flight, None
        if flight is not None:
            self._settle(flight)
            if flight.constrained:  # a grammar's next mask needs this step's token: read it back now
                outputs += self._complete(flight)
                flight = None
        if self.loads.loads:
            self.loads.poll()
        if self.kv.offloads:
            self.kv.land_offloads()
        if not self.scheduler.has_unfinished():
            return outputs + (self._complete(flight) if flight is not None else [])
        started, clock_started = time.perf_counter(), self.clock.now()
        if self.speculator is not None:
            self.speculator.propose(self.scheduler.running)
        out = self.scheduler.schedule()
        if self.speculator is not None:
            out.speculated = self.speculator.fit_to({s.request.request_id: s.num_new_tokens for s in out.scheduled})
        outputs += self._leave(out, flight)
        launched = self._launch(out)
        if self.async_scheduling:
            self._flight = launched
            if flight is not None:
                outputs += self._complete(flight)
        else:
            self._settle(launched)
            outputs += self._complete(launched)
        elapsed = time.perf_counter() - started
        self.scheduler.observe_step(self.clock.now() - clock_started, launched.num_tokens)
        self._step_time_ema = elapsed if self._step_time_ema == 0 else 0.9 * self._step_time_ema + 0.1 * elapsed
        return outputs

    def _leave(self, out: SchedulerOutput, flight: _Flight | None) -> list[EngineOutput]:
        """Requests the schedule took off the device: preempted ones give back their rows; ended
        ones (deadlines) are reported, with their token on the way if one is."""
        for r in out.preempted:
            self.runner.remove_request(r.request_id)
        outputs = []
        for r in out.finished:
            if flight is not None and r.output_token_ids and r.output_token_ids[-1] == PLACEHOLDER:
                self.runner.remove_request(r.request_id)
                flight.finals[r.request_id] = r
            else:
                outputs.append(self._finish(r, r.finish_reason or "abort", []))
        return outputs

    def _launch(self, out: SchedulerOutput) -> _Flight:
        """Start the step on the runner; count its tokens as computed and give every request that
        samples a placeholder for its token, so the next schedule sees the tokens it will have."""
        if self._constrained:
            out.token_bitmask = self._token_mask(out)
        pending = self.runner.execute(out)
        self.kv.swaps_done(getattr(pending, "offloads", None))  # a runner that copies within the step has none
        if out.loading:  # a runner that copies within the step has no ticket: landed already
            self.loads.launched(out.loading, getattr(pending, "loads", None))
        flight = _Flight(pending, [], [], [], constrained=out.token_bitmask is not None, speculated=out.speculated)
        if out.decodes is not None and not out.speculated:
            return self._launch_decodes(flight, out.decodes)
        sampled, slots, filled, last = flight.sampled, flight.slots, flight.filled, flight.last
        limit, bs, speculated = self.max_model_len, self.block_size, out.speculated
        num_tokens_in_step = 0
        for s in out.scheduled:
            req = s.request
            n = s.num_new_tokens
            num_tokens_in_step += n
            computed = req.num_computed_tokens = req.num_computed_tokens + n
            if computed % bs < n and not (speculated and req.request_id in speculated):
                filled.append(req)  # a block filled (earlier ones, e.g. a prefix hit's, come along); drafts' wait
            ids = req.output_token_ids
            num_out = len(ids)
            num_tokens = req.num_prompt_tokens + num_out
            if computed == num_tokens:  # the chunk reached the end: a token is sampled
                sampled.append(req)
                slots.append(num_out)
                if num_out + 1 >= req.params.max_tokens or num_tokens + 1 >= limit:
                    last.append(req)
                ids.append(PLACEHOLDER)
        flight.num_tokens = num_tokens_in_step
        return flight

    def _launch_decodes(self, flight: _Flight, decodes: list[Request]) -> _Flight:
        """`_launch`'s pass for a step of one-token decodes (most steps): each computes its last
        token and samples the next."""
        slots, filled, last = flight.slots, flight.filled, flight.last
        limit, bs = self.max_model_len, self.block_size
        for req in decodes:
            computed = req.num_computed_tokens = req.num_computed_tokens + 1
            if computed % bs == 0:
                filled.append(req)
            ids = req.output_token_ids
            num_out = len(ids)
            slots.append(num_out)
            if num_out + 1 >= req.params.max_tokens or computed + 1 >= limit:
                last.append(req)
            ids.append(PLACEHOLDER)
        flight.sampled = decodes
        flight.num_tokens = len(decodes)
        return flight

    def _token_mask(self, out: SchedulerOutput):
        """The step's token bitmask, one row per request that samples; None if none follows a
        grammar. Their tokens are all known: a step with one completes before the next launches."""
        rows, row = [], 0
        for s in out.scheduled:
            if s.samples:
                if s.request.grammar is not None:
                    rows.append((row, s.request.grammar))
                row += 1
        return self.grammars.masks(rows, row) if rows else None  # type: ignore[union-attr]

    def _settle(self, flight: _Flight) -> None:
        """Before the next schedule, as if the step's tokens were in: publish the blocks it
        filled (their tokens are all known by now), and end the requests whose token on the way
        is their last for certain (length), so their seats and blocks free up in time."""
        if flight.settled:
            return
        flight.settled = True
        running = RequestStatus.RUNNING
        for req in flight.filled:
            if req.status is running:
                self.kv.cache_computed_blocks(req)
        for req in flight.last:
            if req.status is running:
                self.scheduler.finish(req, "length")
                self.runner.remove_request(req.request_id)
                flight.finals[req.request_id] = req

    def _complete(self, flight: _Flight) -> list[EngineOutput]:
        """Read the step's tokens back (the step's one sync), put them in place of the
        placeholders, detokenize, stop, and report."""
        pending = flight.pending
        host = None
        if isinstance(pending, list):  # a synchronous runner's: one per scheduled request, None where none sampled
            tokens = [t for t in pending if t is not None]
        else:
            tokens = pending.tokens()
            if pending.prompt is not None:
                store_prompt_logprobs(pending.prompt)
            host = HostLogprobs(pending.logprobs) if pending.logprobs is not None else None
        speculated = flight.speculated
        now = self.clock.now()
        outputs: list[EngineOutput] = []
        finals, finished, detokenizers = flight.finals, RequestStatus.FINISHED, self.detokenizers
        constrained = flight.constrained  # a request in the step follows a grammar
        for row, (req, j, token) in enumerate(zip(flight.sampled, flight.slots, tokens)):
            final = finals.get(req.request_id) if finals else None
            if req.status is finished and final is not req:
                continue  # aborted or ended meanwhile: its token is dropped with it
            if speculated and req.request_id in speculated:
                verdicts = pending.draft_verdicts[req.request_id]  # type: ignore[union-attr]
                outputs.append(self._complete_speculated(req, j, speculated[req.request_id], verdicts, token, now))
                continue
            req.output_token_ids[j] = token
            if host is not None and req.output_logprobs is not None:
                req.output_logprobs.append(host.at(row, token, req.params.logprobs or 0))
            if req.first_token_time is None:
                req.first_token_time = now
            req.last_token_time = now
            detok = detokenizers.get(req.request_id) if detokenizers else None
            new_text = detok.add(token) if detok is not None else ""
            # Length stops were found before the token came (`_settle`): they are the finals.
            stop = token in req.stop_ids or (detok is not None and detok.stopped)
            if constrained and req.grammar is not None and req.grammar.accept(token):
                stop = True  # the grammar is complete and allows nothing more
            if not stop and final is None:
                cached = req.num_cached_tokens
                out = EngineOutput(req.request_id, [token], j + 1, None, new_text, cached if cached > 0 else 0,
                                   req.arrival_time, req.first_token_time)
                if req.output_logprobs is not None or req.prompt_logprobs is not None:
                    _with_logprobs(out, req)
                outputs.append(out)
                continue
            if stop:
                req.finish_reason = "stop"  # a stop token comes before the length or deadline it also met
            outputs.append(self._finish(req, "stop" if stop else req.finish_reason or "abort", [token], new_text))
        return outputs

    def _complete_speculated(self, req: Request, slot: int, num_drafts: int, verdicts: list[tuple[bool, int]],
                             bonus: int, now: float) -> EngineOutput:
        """A request that verified `num_drafts` drafts (its output's last tokens before `slot`):
        keep those accepted and the token after them (a rejected draft's replacement, or the
        chunk's own sample, `bonus`), stop where a stop comes, count as computed only the KV of
        kept tokens, and publish the blocks they filled."""
        ids, base = req.output_token_ids, slot - num_drafts
        new = self.speculator.accept(ids[base:slot], verdicts, bonus)  # type: ignore[union-attr]
        del ids[base:]
        req.num_computed_tokens = req.num_prompt_tokens + base + len(new) - 1
        req.last_token_time = now
        detok = self.detokenizers.get(req.request_id)
        emitted, text, stop = [], "", False
        for token in new:
            ids.append(token)
            emitted.append(token)
            text += detok.add(token) if detok is not None else ""
            if token in req.stop_ids or (detok is not None and detok.stopped):
                stop = True
                break
        if stop:
            req.finish_reason = "stop"
            return self._finish(req, "stop", emitted, text)
        self.kv.cache_computed_blocks(req)
        cached = req.num_cached_tokens
        return EngineOutput(req.request_id, emitted, len(ids), None, text, cached if cached > 0 else 0,
                            req.arrival_time, req.first_token_time)

    def _drain(self) -> None:
        """Finish the step in flight now (its outputs go out with the next `step()`), so that no
        request has a token on its way (export needs them all)."""
        flight, self._flight = self._flight, None
        if flight is not None:
            self._settle(flight)
            self._drained += self._complete(flight)

    def _finish(self, request: Request, reason: str, new_tokens: list[int], new_text: str = "") -> EngineOutput:
        """End the request (if the scheduler has not) and report it; tokens still on their way
        (placeholders) are dropped with it."""
        ids = request.output_token_ids
        self._constrained.discard(request.request_id)
        if not request.is_finished:
            if request.status is RequestStatus.RUNNING:
                _drop_placeholders(ids)  # first: the policy learns the request's length as it finishes
            self.scheduler.finish(request, reason)
        _drop_placeholders(ids)  # a queued request's count in its queue's blocks, only after it left
        self.runner.remove_request(request.request_id)
        detok = self.detokenizers.pop(request.request_id, None)
        if detok is not None:
            new_text += detok.flush()
        self.runner.drop_generator(request.request_id)
        return self._output(request, new_tokens, new_text)

    @staticmethod
    def _output(request: Request, new_tokens: list[int], new_text: str) -> EngineOutput:
        out = EngineOutput(request.request_id, new_tokens, request.num_output_tokens, request.finish_reason,  # type: ignore[arg-type]
                           new_text, max(request.num_cached_tokens, 0), request.arrival_time,
                           request.first_token_time)
        if request.output_logprobs is not None or request.prompt_logprobs is not None:
            _with_logprobs(out, request)
        return out

    def request_ids(self) -> list[str]:
        """Every request this engine holds, its grammar compiling or in the scheduler."""
        return [*self._compiling, *self.scheduler.requests]

    def has_unfinished_requests(self) -> bool:
        return (self.scheduler.has_unfinished() or self._flight is not None or bool(self._drained)
                or bool(self._compiling))

    # ---- what the router sees --------------------------------------------------------------
    def stats(self) -> EngineStats:
        s = self.scheduler
        # Every step (the load report): a plain loop, names bound once, `kv.blocks_of` inlined,
        # each request's expected blocks worked out once; its growth is clipped at zero.
        growth, block_size, tables = 0, self.block_size, self.kv.block_tables
        for r in s.running:
            expected = r.expected_blocks
            if expected < 0:
                expected = r.expected_blocks = expected_blocks(r.num_prompt_tokens, r.params, block_size)
            held = len(tables.get(r.request_id, ()))
            if expected > held:
                growth += expected - held
        queries = self.kv.prefix_queries
        return EngineStats(
            num_running=len(s.running) + len(s.loading),
            num_waiting=len(s.waiting) + len(self._compiling),
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
            step_tile_boundaries=self._tile_boundaries,
            spec_draft_tokens=self.speculator.stats.drafted if self.speculator is not None else 0,
            spec_accepted_tokens=self.speculator.stats.accepted if self.speculator is not None else 0,
            **self._cpu_tier_stats(),
        )

    def _cpu_tier_stats(self) -> dict[str, int]:
        tier = self.kv.cpu_tier
        if tier is None:
            return {}
        block_bytes, t = self.limits.kv_block_bytes, tier.stats
        return {"kv_cpu_blocks_total": self.kv.num_cpu_blocks, "kv_cpu_blocks_cached": len(tier),
                "prefix_hits_cpu": t.hit_tokens, "cpu_offload_bytes": t.offloaded_blocks * block_bytes,
                "cpu_load_bytes": t.loaded_blocks * block_bytes, "cpu_evicted_blocks": t.evicted_blocks,
                "cpu_load_timeouts": t.load_timeouts}

    def drain_cache_events(self) -> list[CacheEvent]:
        return self.kv.drain_events()
