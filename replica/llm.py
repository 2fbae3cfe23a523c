"""The offline API, shaped like vLLM's: `LLM(model=...).generate(prompts, SamplingParams(...))`."""
from __future__ import annotations

import sys
from typing import Any, Sequence

from shunter.outputs import RequestOutput
from shunter.replica.engine import Engine
from shunter.replica.engine_config import EngineConfig
from shunter.sampling_params import SamplingParams

Prompt = str | Sequence[int]


class LLM:
    def __init__(self, model: str = "smollm2-135m-instruct", **engine_settings: Any) -> None:
        self.engine = Engine(EngineConfig(model=model, **engine_settings))
        self._counter = 0

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            if self.engine.tokenizer is None:
                raise ValueError("prompt: this model has no tokenizer; pass token ids")
            return list(self.engine.tokenizer(prompt).input_ids)
        return [int(t) for t in prompt]

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool | None = None,
    ) -> list[RequestOutput]:
        """Run every prompt to completion, batched continuously; outputs in prompt order.

        Every prompt is validated before any is queued, so one bad prompt leaves the engine untouched."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        params = sampling_params or SamplingParams()
        params_list = list(params) if isinstance(params, Sequence) else [params] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError(f"sampling_params: {len(params_list)} given for {len(prompts)} prompts")
        token_lists = [self.encode(p) for p in prompts]
        for tokens, p in zip(token_lists, params_list):
            self.engine.validate(tokens, p)
        ids = []
        for tokens, p in zip(token_lists, params_list):
            request_id = f"offline-{self._counter}"
            self._counter += 1
            self.engine.add_request(request_id, tokens, p)
            ids.append(request_id)
        return self._run(ids, use_tqdm)

    def _run(self, ids: list[str], use_tqdm: bool | None) -> list[RequestOutput]:
        finished: dict[str, RequestOutput] = {}
        show = sys.stderr.isatty() if use_tqdm is None else use_tqdm
        bar = None
        if show:
            from tqdm import tqdm

            bar = tqdm(total=len(ids), desc="generate", unit="req", dynamic_ncols=True)
        while self.engine.has_unfinished_requests():
            for out in self.engine.step():
                if out.finished:
                    finished[out.request_id] = out
                    if bar is not None:
                        bar.update(1)
        if bar is not None:
            bar.close()
        return [finished[i] for i in ids]
