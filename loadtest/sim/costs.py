"""Step-time models: how long one engine step takes, given what the scheduler put in it.

A step is summarized as a `StepShape` (tokens computed, sequences, logit rows, KV tokens read,
attended (query, key) pairs, KV tokens swapped). Two kinds of model map a shape to seconds:

* `LinearCost`: seconds = a weighted sum of the shape's features, fitted by least squares to
  step times measured on a real engine (`fit_costs.py`: SmolLM2 on this CPU; any model on a
  GPU when one is lent). The tokens a step computes enter piecewise (one feature per segment
  between powers of two), because a matmul's time is not linear in its rows at small sizes:
  on this CPU 4 rows cost far more than 2 and 16 hardly more than 8;
* `RooflineCost`: the larger of the step's FLOPs over the peak and its bytes over the memory
  bandwidth (`loadtest/roofline.py`'s arithmetic), each derated by an efficiency factor, plus a
  fixed per-step overhead: an analytic model from published peak numbers. A model that names a
  `staircase.tile_tokens` prices the weights' FLOPs for the step's tokens rounded up to a whole
  tile, as GEMMs run them: the step-time staircase (`replica/step_staircase.py`), flat where the
  step is memory-bound and in stairs where it is compute-bound.

Each model is a JSON file under `costs/` whose `source` says how it was obtained. A `CostModel`
also knows the model's shape the engine needs (vocabulary, context, KV bytes per token) and how
many KV blocks fit on the device.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from shunter.loadtest.roofline import ModelCost
from shunter.replica.models.config import ModelConfig
from shunter.replica.preemption import PreemptionCosts
from shunter.replica.scheduler import SchedulerOutput
from shunter.replica.step_staircase import STRIDE, StepStaircase

COSTS_DIR = Path(__file__).resolve().parent / "costs"
# Segments of the step's token count: `tokens_A_B` counts the step's tokens between A and B.
TOKEN_KNOTS = (0, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_SEGMENTS = tuple(f"tokens_{a}_{b}" for a, b in zip(TOKEN_KNOTS, TOKEN_KNOTS[1:])) + (f"tokens_{TOKEN_KNOTS[-1]}_up",)
FEATURES = ("fixed", *TOKEN_SEGMENTS, "num_seqs", "num_rows", "kv_tokens", "attn_keys", "swap_tokens")
SHAPE_FIELDS = ("num_tokens", "num_seqs", "num_rows", "kv_tokens", "attn_keys", "swap_tokens")


@dataclass(frozen=True, slots=True)
class StepShape:
    num_tokens: int = 0  # tokens computed (prefill chunks and decodes)
    num_seqs: int = 0  # sequences in the batch
    num_rows: int = 0  # sequences that sample a token (logit rows)
    kv_tokens: int = 0  # cached tokens the step's queries read: sum of (start + new)
    attn_keys: int = 0  # (query, key) pairs attended
    swap_tokens: int = 0  # KV tokens swapped between device and CPU (preemption's swaps)

    @classmethod
    def of(cls, out: SchedulerOutput, block_size: int) -> StepShape:
        """The shape of a scheduled step, before it launches (its requests' computed counts are the chunks' starts)."""
        # The CPU tier's copies, both ways, run beside the step (`SimRunner`).
        swapped = (len(out.blocks_to_swap_in) + len(out.blocks_to_swap_out)) * block_size
        if out.decodes is not None:  # one token each, each sampled; a decode attends to its start + 1 keys
            n = len(out.decodes)
            kv = sum([r.num_computed_tokens for r in out.decodes]) + n
            return cls(n, n, n, kv, kv, swapped)
        tokens = rows = kv = keys = 0
        for s in out.scheduled:
            n, start, req = s.num_new_tokens, s.start, s.request
            tokens += n
            kv += start + n
            keys += n * start + n * (n + 1) // 2
            rows += start + n == req.num_prompt_tokens + len(req.output_token_ids)  # `.samples`, inlined: hot
        return cls(tokens, len(out.scheduled), rows, kv, keys, swapped)

    def features(self) -> list[float]:
        """The values of `FEATURES`, in order."""
        n = self.num_tokens
        segments = [min(max(n - a, 0), b - a) for a, b in zip(TOKEN_KNOTS, TOKEN_KNOTS[1:])]
        return [1.0, *segments, max(n - TOKEN_KNOTS[-1], 0), self.num_seqs, self.num_rows, self.kv_tokens,
                self.attn_keys, self.swap_tokens]


class StepModel(Protocol):
    def step_seconds(self, shape: StepShape) -> float: ...


@dataclass(frozen=True)
class LinearCost:
    """seconds = sum of coefficient x feature (`FEATURES`; "fixed" is per step)."""

    coefficients: dict[str, float]
    weights: tuple[float, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        unknown = set(self.coefficients) - set(FEATURES)
        if unknown:
            raise ValueError(f"unknown cost features {sorted(unknown)}; known: {FEATURES}")
        object.__setattr__(self, "weights", tuple(self.coefficients.get(name, 0.0) for name in FEATURES))

    def step_seconds(self, shape: StepShape) -> float:
        return sum(w * x for w, x in zip(self.weights, shape.features()))


@dataclass(frozen=True)
class RooflineCost:
    """max(FLOPs / (peak x flops_efficiency), bytes / (bandwidth x bandwidth_efficiency))
    + overhead_s + swapped bytes / swap bandwidth."""

    model: ModelCost
    peak_flops: float
    bandwidth: float
    flops_efficiency: float
    bandwidth_efficiency: float
    overhead_s: float
    swap_bytes_per_s: float
    tile_tokens: int = 1  # GEMM rows run in tiles of this many tokens (1: no staircase)
    # Once per simulated step: the products computed once (the same floats), the model's methods inlined.
    _flops_s: float = field(init=False, repr=False, compare=False)
    _bytes_s: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_flops_s", self.peak_flops * self.flops_efficiency)
        object.__setattr__(self, "_bytes_s", self.bandwidth * self.bandwidth_efficiency)

    def step_seconds(self, shape: StepShape) -> float:
        m, tile = self.model, self.tile_tokens
        tiled = -(-shape.num_tokens // tile) * tile
        compute = (2 * m.layer_params * tiled + 2 * m.head_params * shape.num_rows
                   + m.attn_flops_per_key * shape.attn_keys) / self._flops_s  # m.flops(...)
        memory = (m.weight_bytes + m.kv_bytes_per_token * shape.kv_tokens) / self._bytes_s  # m.bytes(...)
        swap = shape.swap_tokens * m.kv_bytes_per_token / self.swap_bytes_per_s
        return self.overhead_s + max(compute, memory) + swap


@dataclass(frozen=True)
class CostModel:
    """A step model with the facts about the model and device a simulated replica needs."""

    name: str
    source: str
    step: StepModel
    vocab_size: int
    max_model_len: int
    kv_bytes_per_token: int
    kv_capacity_bytes: float | None = None  # device memory left for KV; None: give num_kv_blocks
    eos_token_ids: tuple[int, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def step_seconds(self, shape: StepShape) -> float:
        return self.step.step_seconds(shape)

    def kv_blocks(self, block_size: int) -> int:
        """Device KV blocks that fit beside the weights (the engine's pool size)."""
        if self.kv_capacity_bytes is None:
            raise ValueError(f"cost model {self.name!r} does not know its device memory: give num_kv_blocks")
        return int(self.kv_capacity_bytes // (self.kv_bytes_per_token * block_size))

    def transfer_seconds(self, num_tokens: int, link_bytes_per_s: float, latency_s: float) -> float:
        """Moving the KV of `num_tokens` tokens to another replica."""
        return latency_s + num_tokens * self.kv_bytes_per_token / link_bytes_per_s

    def kv_copy_seconds(self, num_tokens: int) -> float:
        """Gathering the KV of `num_tokens` tokens out of the device pool into a staging buffer (or
        scattering it back in): priced as a swap of that many tokens one way, what the model knows
        of copies between the pool and host memory."""
        if num_tokens <= 0:
            return 0.0
        return max(self.step_seconds(StepShape(swap_tokens=num_tokens)) - self.step_seconds(StepShape()), 0.0)

    def staircase(self, max_tokens: int) -> StepStaircase:
        """What the runner's start-up timing finds, priced by the model: one-sequence prefill
        steps of 16, 32, ... tokens."""
        sizes = list(range(STRIDE, max(max_tokens, STRIDE) + 1, STRIDE))
        return StepStaircase.from_timings(
            sizes, [self.step_seconds(StepShape(n, 1, 1, n, n * (n + 1) // 2)) for n in sizes])

    def preemption_costs(self, block_size: int, probe_tokens: int = 256) -> PreemptionCosts:
        """What the real runner measures at start-up, priced by the model: a prefill of
        `probe_tokens` per token, and one block's swap one way."""
        prefill = StepShape(probe_tokens, 1, 1, probe_tokens, probe_tokens * (probe_tokens + 1) // 2)
        swap = self.step_seconds(StepShape(swap_tokens=block_size)) - self.step_seconds(StepShape())
        return PreemptionCosts(self.step_seconds(prefill) / probe_tokens, max(swap, 1e-12), block_size)


def _roofline(raw: dict[str, Any]) -> tuple[RooflineCost, ModelConfig, float]:
    hw, eff, m = raw["hardware"], raw["efficiency"], raw["model"]
    if "random_shape" in m:  # one of the engine's own `random:` shapes, named rather than copied
        from shunter.replica.models.random_shapes import random_config

        config = random_config(m["random_shape"])
    else:
        config = ModelConfig(**{k: v for k, v in m.items() if k not in ("name", "max_model_len")})
    dtype_bytes = raw["dtype_bytes"]
    cost = ModelCost.of(config, dtype_bytes)
    embedding = 0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size * dtype_bytes
    kv_capacity = hw["memory_bytes"] * raw["memory_utilization"] - cost.weight_bytes - embedding - raw["reserved_bytes"]
    tile = raw.get("staircase", {}).get("tile_tokens", 1)
    if not isinstance(tile, int) or tile < 1:
        raise ValueError(f"staircase.tile_tokens must be an integer >= 1, got {tile!r}")
    step = RooflineCost(cost, hw["peak_flops"], hw["bandwidth"], eff["flops"], eff["bandwidth"], eff["overhead_s"],
                        hw["swap_bytes_per_s"], tile)
    return step, config, kv_capacity


def load_cost_model(name_or_path: str | Path) -> CostModel:
    """A model by file name under `costs/` (without .json) or by path."""
    path = Path(name_or_path)
    if path.suffix != ".json":
        path = COSTS_DIR / f"{name_or_path}.json"
    if not path.exists():
        raise ValueError(f"no cost model {str(name_or_path)!r}; known: {available()}")
    raw = json.loads(path.read_text())
    m = raw["model"]
    if raw["kind"] == "linear":
        return CostModel(raw["name"], raw["source"], LinearCost(raw["coefficients"]), m["vocab_size"],
                         m["max_model_len"], m["kv_bytes_per_token"], raw.get("kv_capacity_bytes"),
                         tuple(m.get("eos_token_ids", ())), raw)
    if raw["kind"] == "roofline":
        step, config, kv_capacity = _roofline(raw)
        return CostModel(raw["name"], raw["source"], step, config.vocab_size, m["max_model_len"],
                         step.model.kv_bytes_per_token, kv_capacity, tuple(config.eos_token_ids), raw)
    raise ValueError(f"{path}: kind must be 'linear' or 'roofline', got {raw['kind']!r}")


def available() -> list[str]:
    return sorted(p.stem for p in COSTS_DIR.glob("*.json"))


def mean_abs_rel_error(model: StepModel, samples: list[tuple[StepShape, float]]) -> float:
    """How far a model's step times are from measured ones, on average (relative)."""
    errors = [abs(model.step_seconds(s) - t) / t for s, t in samples if t > 0]
    return sum(errors) / len(errors) if errors else math.nan
