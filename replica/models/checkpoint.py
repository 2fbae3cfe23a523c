"""Hugging Face checkpoints in memory and on disk: read a folder, read a GGUF, write a folder.

A checkpoint is a HF `config.json` dict, tensors named as in HF, a tokenizer (or None) and the
generation config's eos ids. Every model source becomes one, so there is one way to build our
model and one way to write a folder that `LlamaForCausalLM.from_pretrained` (the test oracle)
reads too.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
_GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")
# Keys of a transformers config that describe where it came from, not the model.
_DROP_KEYS = ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version")


@dataclass
class Checkpoint:
    hf_config: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    tokenizer: Any | None = None
    generation_eos: list[int] = field(default_factory=list)


def read_hf_config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text())


def read_generation_eos(folder: Path) -> list[int]:
    """eos ids from `generation_config.json` (what HF `generate` stops on), [] if absent."""
    path = folder / "generation_config.json"
    if not path.exists():
        return []
    eos = json.loads(path.read_text()).get("eos_token_id")
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def read_tokenizer(folder: Path) -> Any | None:
    """A plain `tokenizer.json` tokenizer (our cached folders) is loaded by its class directly:
    `AutoTokenizer` first imports the model's config module, ~2 s of a 3 s load."""
    if not any((folder / name).exists() for name in TOKENIZER_FILES):
        return None
    config_path = folder / "tokenizer_config.json"
    tokenizer_class = json.loads(config_path.read_text()).get("tokenizer_class") if config_path.exists() else None
    if tokenizer_class in _GENERIC_TOKENIZERS and (folder / "tokenizer.json").exists():
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(folder)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def iter_folder_tensors(folder: Path, device: torch.device | str = "cpu"):
    """(name, tensor) for every tensor of `*.safetensors` (sharded or not), else `*.bin`."""
    files = sorted(folder.glob("*.safetensors"))
    if files:
        from safetensors import safe_open

        for path in files:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        return
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if not bins:
        raise FileNotFoundError(f"no *.safetensors or pytorch_model*.bin in {folder}")
    for path in bins:
        yield from torch.load(path, map_location=device, weights_only=True).items()


def read_gguf(path: Path) -> Checkpoint:
    """De-quantize a GGUF file with transformers (float32) and take its state dict and config."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("de-quantizing %s (once; takes a while)", path)
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    config = {k: v for k, v in hf.config.to_dict().items() if k not in _DROP_KEYS}
    if not config.get("architectures"):
        config["architectures"] = [type(hf).__name__]
    config["dtype"] = "float32"
    eos = hf.generation_config.eos_token_id
    generation_eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    tensors = {k: v.detach().float() for k, v in hf.state_dict().items()}
    return Checkpoint(config, tensors, tokenizer, generation_eos)


def write_hf_folder(ckpt: Checkpoint, folder: Path) -> None:
    """config.json, model.safetensors (a tied lm_head left out, as HF does), tokenizer files and
    generation_config.json: a folder both our loader and transformers read."""
    from safetensors.torch import save_file

    (folder / "config.json").write_text(json.dumps(ckpt.hf_config, indent=2, sort_keys=True))
    tensors = dict(ckpt.tensors)
    if ckpt.hf_config.get("tie_word_embeddings"):
        tensors.pop("lm_head.weight", None)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"), {"format": "pt"})
    if ckpt.tokenizer is not None:
        ckpt.tokenizer.save_pretrained(folder)
    generation: dict[str, Any] = {
        k: ckpt.hf_config[k] for k in ("bos_token_id", "pad_token_id") if ckpt.hf_config.get(k) is not None
    }
    if ckpt.generation_eos:
        eos = ckpt.generation_eos
        generation["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2))
