"""Shunter: serve a language model from many replicas.

`from shunter import LLM, SamplingParams` is the offline API; LLM lives in the replica layer
and is imported lazily so that this package (the shared types) never imports a higher layer.
"""
from pathlib import Path

from shunter import source_layout

source_layout.install(Path(__file__).parent)  # before any sub-package is imported

from shunter.outputs import RequestOutput  # noqa: E402
from shunter.sampling_params import SamplingParams  # noqa: E402

__all__ = ["LLM", "SamplingParams", "RequestOutput"]


def __getattr__(name: str):
    if name == "LLM":
        from shunter.replica.llm import LLM

        return LLM
    raise AttributeError(f"module 'shunter' has no attribute {name!r}")
