"""Runs one scheduled step on the model: move swapped blocks, prepare inputs, forward, sample.

`execute` launches a step and returns at once with its tokens still on their way back
(`readback.PendingTokens`): on a GPU nothing in it waits for the device, so the engine can
schedule the next step while this one runs. The step's inputs come from the persistent batch
(`input_batch.py`, `step_inputs.py`); a decode whose input token is the previous step's sample,
not yet read back (async scheduling), takes it from the device.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch

from shunter.kernels import ops as kernels
from shunter.mathutil import cdiv
from shunter.replica.decode_graphs import DecodeGraphs
from shunter.replica.device_timeline import DeviceTimeline
from shunter.replica.draft_model import DraftModel, load_draft
from shunter.replica.engine_config import EngineConfig
from shunter.replica import kv_staging
from shunter.replica.host_fence import HostFence
from shunter.replica.kv_loads import CudaLoad, LoadTicket
from shunter.replica.kv_offloads import Offloader, OffloadTicket
from shunter.replica.kv_staging import StagedKV
from shunter.replica.input_batch import InputBatch
from shunter.replica.logprobs import PromptLogprobs, compute_prompt_logprobs, prompt_spans
from shunter.replica.memory import CudaMemory, activation_peak, num_cpu_blocks, num_device_blocks
from shunter.replica.models.kv_layout import allocate_kv_caches, kv_bytes_per_block
from shunter.replica.models.loader import LoadedModel, load_model
from shunter.replica.packing import Chunk, pack
from shunter.replica.preemption import PreemptionCosts
from shunter.replica.profile_run import run_dummy_step
from shunter.replica.readback import PendingTokens, Readback
from shunter.replica.sampler import RequestRng, sample, verify_drafts
from shunter.replica.scheduler import SchedulerOutput
from shunter.replica.step_inputs import SamplingInputs, Sizes, Staging, StepInputs
from shunter.replica.step_staircase import STRIDE, StepStaircase

log = logging.getLogger(__name__)
# Step-time staircases measured in this process, by what they depend on (model, device, dtype,
# threads, sizes timed): the same hardware gives the same staircase, and a RAD engine's start-up
# spent most of its time timing steps (17 s for SmolLM2 on one CPU core).
_STAIRCASES: dict[tuple, StepStaircase] = {}


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelRunner:
    """Owns the model, the device KV pool and the CPU swap pool; knows nothing of scheduling."""

    supports_async_scheduling = True  # fills a placeholder input token from the device

    def __init__(
        self, loaded: LoadedModel, num_blocks: int, block_size: int, num_cpu_blocks: int, max_model_len: int,
        max_num_seqs: int = 64, max_num_batched_tokens: int = 512, persistent_batch: bool = True,
    ) -> None:
        self.model = loaded.model
        self.model_name = loaded.name
        self.config = loaded.config
        self.tokenizer = loaded.tokenizer
        self.max_model_len = max_model_len
        self.num_blocks, self.num_cpu_blocks = num_blocks, num_cpu_blocks
        self.block_size = block_size
        first = next(self.model.parameters())
        self.device, self.dtype = first.device, first.dtype
        # Whether `execute` returns before the device has run the step (CUDA's queue), so async
        # scheduling overlaps the host's next schedule with it; on the CPU it computes the step.
        self.launch_returns_early = self.device.type == "cuda"
        self.kv_caches = allocate_kv_caches(self.config, num_blocks, block_size, self.dtype, self.device)
        self.kv_block_bytes = kv_bytes_per_block(self.config, block_size, self.dtype)
        pin = self.device.type == "cuda"
        self.cpu_caches = (
            allocate_kv_caches(self.config, num_cpu_blocks, block_size, self.dtype, "cpu", pin_memory=pin)
            if num_cpu_blocks
            else []
        )
        self.swap_out_fence = HostFence(self.device)  # swap-outs land in the CPU pool asynchronously
        self._load_stream: torch.cuda.Stream | None = None  # loads from the CPU tier (a GPU's, made at the first)
        # The CPU tier's copies: beside the steps on a GPU; on the CPU within the step (both pools
        # are host memory, and a copying thread slows the step's matmuls on the same cores about
        # as much as the copy takes: `docs/results.md`, issue 26).
        self.offloader = Offloader(self._copy_to_cpu, self.device) if self.device.type == "cuda" else None
        self.generators: dict[str, RequestRng] = {}  # the random (non-greedy) requests' streams
        self.decode_graphs: DecodeGraphs | None = None  # CUDA graphs of decode steps (`use_decode_graphs`)
        max_blocks = cdiv(max_model_len, block_size)
        # None: every step packed again from lists (`EngineConfig.persistent_batch` off).
        vocab = self.config.vocab_size
        self.batch = InputBatch(max_num_seqs, max_model_len, block_size, vocab) if persistent_batch else None
        self.staging = Staging(max(max_num_batched_tokens, max_num_seqs), max_num_seqs, max_blocks, self.device)
        self.readback = Readback(max_num_seqs, self.device, max(max_num_batched_tokens, max_num_seqs))
        self._last_tokens: torch.Tensor | None = None  # the last step's samples, on the device
        self.timeline: DeviceTimeline | None = None  # set by a benchmark to see the device's idle time
        self.draft: DraftModel | None = None  # speculative decoding's draft model (`create`)

    @classmethod
    def create(cls, config: EngineConfig) -> "ModelRunner":
        """Load the model, then size both KV pools from what memory is left."""
        device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = DTYPES[config.dtype] if config.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
        loaded = load_model(config.model, device=device, dtype=dtype)
        max_model_len = config.max_model_len or loaded.config.max_position_embeddings
        block_bytes = kv_bytes_per_block(loaded.config, config.block_size, dtype)
        draft = None
        if config.speculative == "draft":
            assert config.speculative_model is not None  # EngineConfig's check
            draft = load_draft(config.speculative_model, config.speculative_draft_layers, loaded)
        # A draft's pool has as many blocks as the target's: a block costs both.
        pool_block_bytes = block_bytes + (kv_bytes_per_block(draft.config, config.block_size, dtype) if draft else 0)
        memory, activation_bytes = None, 0
        if device.type == "cuda" and config.num_kv_blocks is None:
            memory = CudaMemory(device)
            num_tokens = min(config.max_num_batched_tokens, max_model_len)
            activation_bytes = activation_peak(memory, lambda: run_dummy_step(
                loaded.model, loaded.config, config.block_size, num_tokens, config.max_num_seqs, dtype, device))
            log.info("profiling step of %d tokens: %.2f GiB of activations", num_tokens, activation_bytes / 2**30)
        num_blocks = num_device_blocks(config, device, pool_block_bytes, max_model_len, memory, activation_bytes)
        cpu_blocks = num_cpu_blocks(config, block_bytes)
        log.info("model %s on %s: %d KV blocks, %d CPU blocks", config.model, device, num_blocks, cpu_blocks)
        runner = cls(loaded, num_blocks, config.block_size, cpu_blocks, max_model_len, config.max_num_seqs,
                     config.max_num_batched_tokens, config.persistent_batch)
        runner.draft = DraftModel(draft, num_blocks, config.block_size) if draft is not None else None
        if device.type == "cuda" and not config.enforce_eager:
            runner.use_decode_graphs(config.max_num_seqs, capture=True)
        return runner

    def use_decode_graphs(self, max_num_seqs: int, capture: bool) -> None:
        """Replay decode steps from graphs captured per batch size, each when first used
        (`capture=False`: the same padded static buffers, run eagerly, as on the CPU)."""
        max_blocks = cdiv(self.max_model_len, self.block_size)
        self.decode_graphs = DecodeGraphs(self.model, self.kv_caches, max_num_seqs, max_blocks, self.device, capture)
        if self.offloader is not None:
            self.decode_graphs.before_capture = self.offloader.wait
        log.info("decode graphs for batch sizes up to %d, captured when first used", self.decode_graphs.sizes[-1])

    def add_generator(self, request_id: str, seed: int) -> None:
        self.generators[request_id] = RequestRng(seed)

    def drop_generator(self, request_id: str) -> None:
        self.generators.pop(request_id, None)

    def _seed_of(self, request_id: str) -> int:
        rng = self.generators.get(request_id)
        return rng.seed if rng is not None else 0

    def remove_request(self, request_id: str) -> None:
        """The request left the device (finished, aborted, preempted, exported): free its row."""
        if self.batch is not None:
            self.batch.remove(request_id)
        if self.draft is not None:
            self.draft.release(request_id)

    def swap(self, pairs: list[tuple[int, int]], to_cpu: bool) -> None:
        """Copy blocks between the device pool and the CPU pool: one batched copy per layer and direction."""
        if not pairs:
            return
        if not to_cpu:
            self.swap_out_fence.wait()  # a swap-in reads the CPU pool on the CPU: earlier swap-outs must have landed
        src, dst = (self.kv_caches, self.cpu_caches) if to_cpu else (self.cpu_caches, self.kv_caches)
        _copy_blocks(pairs, src, dst)
        if to_cpu:
            self.swap_out_fence.record()

    def offload(self, pairs: list[tuple[int, int]]) -> OffloadTicket | None:
        """Copy published blocks to the CPU tier (`replica/kv_offloads.py`): on a GPU on the
        offloader's thread and copy stream, returning at once; on the CPU now (None: landed)."""
        if not pairs:
            return None
        if self.offloader is None:
            self._copy_to_cpu(pairs)
            return None
        return self.offloader.start(pairs)

    def _copy_to_cpu(self, pairs: list[tuple[int, int]]) -> None:
        _copy_blocks(pairs, self.kv_caches, self.cpu_caches)

    def load(self, pairs: list[tuple[int, int]]) -> LoadTicket | None:
        """Copy prefix blocks from the CPU tier into the device pool (`replica/kv_loads.py`): on
        a GPU on the load stream, after what the step's stream has queued so far (the swap-outs,
        which may read a block a load then overwrites), returning when they are queued; on the
        CPU now (None: landed)."""
        if not pairs:
            return None
        if self.device.type != "cuda":
            self.swap(pairs, to_cpu=False)
            return None
        if self._load_stream is None:
            self._load_stream = torch.cuda.Stream(self.device)
        self._load_stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._load_stream):
            self.swap(pairs, to_cpu=False)
            event = torch.cuda.Event()
            event.record()
        return CudaLoad(event)

    def read_blocks(self, block_ids: list[int]) -> StagedKV:
        """The KV of some blocks in host memory, for a migration; on a GPU still landing when this
        returns (`kv_staging.py`: the engine thread does not wait for the copy)."""
        return kv_staging.read(self.kv_caches, block_ids)

    def write_blocks(self, block_ids: list[int], kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        if self.offloader is not None:  # a reserved block may be one a copy to the CPU tier still reads
            self.offloader.wait()
        ids = torch.tensor(block_ids, dtype=torch.long, device=self.device)
        for (k, v), (src_k, src_v) in zip(self.kv_caches, kv_staging.landed(kv)):
            k[ids] = src_k.to(self.device, k.dtype)
            v[ids] = src_v.to(self.device, v.dtype)

    @torch.inference_mode()
    def measure_preemption_costs(self, num_tokens: int = 256) -> PreemptionCosts:
        """Time one prefill and one swap-out at start-up, so "auto" preemption can compare them.

        Writes scratch KV into blocks that no request holds yet (start-up), publishes no hash."""
        blocks = min(self.num_blocks, cdiv(num_tokens, self.block_size))
        tokens = min(num_tokens, blocks * self.block_size)
        chunk = Chunk([1] * tokens, 0, list(range(blocks)), True)
        batch = pack([chunk], self.block_size, self.device)
        timings = []
        for _ in range(3):  # the first run warms up; keep the fastest of the others
            started = time.perf_counter()
            self.model.compute_logits(self.model(batch.input_ids, batch.positions, self.kv_caches, batch.attn)[-1:])
            self._sync()
            timings.append(time.perf_counter() - started)
        per_token = min(timings[1:]) / tokens
        per_block = math.inf
        moved = min(blocks, self.num_cpu_blocks)
        if moved:
            pairs = [(i, i) for i in range(moved)]
            swap_timings = []
            for _ in range(3):
                started = time.perf_counter()
                self.swap(pairs, to_cpu=True)
                self._sync()
                swap_timings.append(time.perf_counter() - started)
            per_block = min(swap_timings[1:]) / moved
        log.info("preemption costs: recompute %.3g s/token, swap %.3g s/block", per_token, per_block)
        return PreemptionCosts(per_token, per_block, self.block_size)

    @torch.inference_mode()
    def measure_step_staircase(self, max_tokens: int, stride: int = STRIDE, repeats: int = 3) -> StepStaircase:
        """Time a one-sequence prefill step of `stride`, 2 x `stride`, ... up to `max_tokens`
        tokens (a warm-up run, then the fastest of `repeats`), and find the tile boundaries.

        Writes scratch KV into blocks that no request holds yet (start-up), publishes no hash."""
        top = min(max_tokens, self.num_blocks * self.block_size)
        key = (self.model_name, str(self.device), self.dtype, torch.get_num_threads(), self.block_size, top, stride,
               repeats)
        known = _STAIRCASES.get(key)
        if known is not None:
            log.info("step-time staircase: measured earlier in this process for %s on %s", self.model_name, self.device)
            return known
        sizes = list(range(stride, top + 1, stride)) or [top]
        times = []
        for n in sizes:
            chunk = Chunk([1] * n, 0, list(range(cdiv(n, self.block_size))), True)
            batch = pack([chunk], self.block_size, self.device)
            best = math.inf
            for i in range(repeats + 1):
                started = time.perf_counter()
                self.model.compute_logits(self.model(batch.input_ids, batch.positions, self.kv_caches, batch.attn)[-1:])
                self._sync()
                if i:  # the first run warms up
                    best = min(best, time.perf_counter() - started)
            times.append(best)
        staircase = _STAIRCASES[key] = StepStaircase.from_timings(sizes, times)
        return staircase

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> PendingTokens:
        """Launch the step; the tokens of the scheduled requests that sample (a prefill chunk that
        isn't the last does not), in order, come with `PendingTokens.tokens()`."""
        if out.after_offloads and self.offloader is not None:  # the step writes a block a copy may still read
            self.offloader.wait()
        # Copies to the CPU first: a block they read may be handed to a request this step writes.
        self.swap(out.blocks_to_swap_out, to_cpu=True)
        offloads = self.offload(out.blocks_to_offload)
        self.swap(out.blocks_to_swap_in, to_cpu=False)
        loads = self.load(out.blocks_to_load)
        if not out.scheduled:
            return PendingTokens(torch.zeros(0, dtype=torch.int64), None, loads=loads, offloads=offloads)
        inputs = self._prepare(out)
        batch = inputs.batch
        if inputs.sizes.fills:  # async scheduling: inputs the host has not seen yet
            assert self._last_tokens is not None, "a placeholder input without a step before it"
            batch.input_ids.index_copy_(0, inputs.fill_dst, self._last_tokens.index_select(0, inputs.fill_src))
        if self.decode_graphs is not None and self.decode_graphs.fits(batch):
            hidden = self.decode_graphs.run(batch)
        else:
            hidden = self.model(batch.input_ids, batch.positions, self.kv_caches, batch.attn)
        drafts = self._drafts(out, hidden.device) if out.speculated else None
        if drafts is None:
            logits = self.model.compute_logits(hidden[batch.logits_indices])
        else:  # one pass over the lm-head's weights for the sampled rows and the drafts' rows
            num_sampled = batch.logits_indices.numel()
            both = self.model.compute_logits(hidden[torch.cat([batch.logits_indices, drafts.rows])])
            logits = both[:num_sampled]
            accepted, replacement = verify_drafts(both[num_sampled:], drafts.sampling, drafts.tokens)
            verdicts = list(zip(accepted.tolist(), replacement.tolist()))
        sampled = sample(logits, inputs.sampling, out.token_bitmask)
        self._last_tokens = sampled.tokens
        prompt = self._prompt_logprobs(out, hidden)
        pending = self.readback.start(sampled.tokens, sampled.logprobs, prompt)
        pending.loads, pending.offloads = loads, offloads
        if drafts is not None:
            pending.draft_verdicts = _split(verdicts, drafts.counts)
        if self.timeline is not None:
            self.timeline.end()
        return pending

    def _drafts(self, out: SchedulerOutput, device: torch.device) -> Drafts:
        """The drafts of the step's speculating requests (the last tokens of each one's chunk),
        the rows whose logits judge them (each chunk's rows but its last, which the sampler
        covers), and how each is sampled: its request's settings, drawing for the output index
        the draft stands at. Rows follow the scheduled order: speculation packs every step."""
        assert self.batch is None, "speculation runs on packed inputs"
        rows, tokens, params, seeds, draws, counts, offset = [], [], [], [], [], [], 0
        for s in out.scheduled:
            req = s.request
            m = out.speculated.get(req.request_id, 0)
            if m:
                base = req.num_output_tokens - m  # its drafts are its output's last m tokens
                rows.extend(range(offset, offset + m))
                tokens.extend(req.output_token_ids[base:])
                params.extend([req.params] * m)
                seeds.extend([self._seed_of(req.request_id)] * m)
                draws.extend(range(base, base + m))
                counts.append((req.request_id, m))
            offset += s.num_new_tokens
        as_long = lambda xs: torch.tensor(xs, dtype=torch.long, device=device)  # noqa: E731
        return Drafts(as_long(rows), as_long(tokens), SamplingInputs.of(params, seeds, draws, self.config.vocab_size,
                                                                        device), counts)

    def _prompt_logprobs(self, out: SchedulerOutput, hidden: torch.Tensor) -> PromptLogprobs | None:
        """The prompt log-probabilities this step's prefill chunks owe, from their hidden states
        (nothing to look at unless a row asks: the batch counts them)."""
        if self.batch is not None and not self.batch.prompt_logprob_rows:
            return None
        spans = prompt_spans(out.scheduled)
        return compute_prompt_logprobs(spans, hidden, self.model.compute_logits) if spans else None

    def _prepare(self, out: SchedulerOutput) -> StepInputs:
        """The step's inputs on the device."""
        if self.batch is None:
            return self._pack_from_scratch(out)
        step = self.batch.update(out.scheduled, self._seed_of, out.decodes)
        if self.timeline is not None:
            self.timeline.begin()
        return self.staging.stage(self.batch, step)

    def _pack_from_scratch(self, out: SchedulerOutput) -> StepInputs:
        """Every step's inputs packed from Python lists (`packing.pack`), as before the
        persistent batch: the baseline `bench step` compares with, and an oracle for tests."""
        chunks = [Chunk(s.request.token_slice(s.start, s.start + s.num_new_tokens), s.start, s.block_ids, s.samples)
                  for s in out.scheduled]
        if self.timeline is not None:
            self.timeline.begin()
        batch = pack(chunks, self.block_size, self.device)
        sampled = [s.request for s, c in zip(out.scheduled, chunks) if c.sample]
        sampling = SamplingInputs.of([r.params for r in sampled], [self._seed_of(r.request_id) for r in sampled],
                                     [r.num_output_tokens for r in sampled], self.config.vocab_size, self.device)
        sizes = Sizes(batch.input_ids.numel(), len(chunks), len(sampled), batch.attn.block_tables.shape[1], 0,
                      batch.attn.max_query_len, sampling.all_greedy, sampling.filtered, sampling.num_logprobs)
        empty = torch.zeros(0, dtype=torch.int64, device=self.device)
        return StepInputs(batch, sampling, empty, empty, sizes)


@dataclass
class Drafts:
    rows: torch.Tensor  # int64 [D]: rows of the step's hidden states that judge the drafts
    tokens: torch.Tensor  # int64 [D]
    sampling: SamplingInputs  # per draft
    counts: list[tuple[str, int]]  # (request id, its drafts), in order


def _split(tokens: list, counts: list[tuple[str, int]]) -> dict[str, list]:
    """`tokens` cut into each request's run, in order."""
    out, at = {}, 0
    for request_id, m in counts:
        out[request_id], at = tokens[at:at + m], at + m
    return out


def _copy_blocks(pairs: list[tuple[int, int]], src: list, dst: list) -> None:
    """(source block, destination block) copies between two pools: one batched copy per layer."""
    src_ids = torch.tensor([p[0] for p in pairs], dtype=torch.long)
    dst_ids = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    for (src_k, src_v), (dst_k, dst_v) in zip(src, dst):
        kernels.copy_blocks(src_k, dst_k, src_ids, dst_ids)
        kernels.copy_blocks(src_v, dst_v, src_ids, dst_ids)
