"""The offline API, shaped like vLLM's: `LLM(model=...).generate(prompts, SamplingParams(...))`
and `LLM.chat(messages)`, returning `RequestOutput`s with `outputs[i].text` / `.token_ids`
(and, when asked, `outputs[i].logprobs` and `prompt_logprobs`, in vLLM's shape)."""
from __future__ import annotations

import dataclasses
import sys
from typing import Any, Mapping, Sequence

from shunter.outputs import RequestOutput
from shunter.replica.chat import chat_prompt_ids
from shunter.replica.engine import Engine
from shunter.replica.engine_config import EngineConfig
from shunter.replica.output_collector import OutputCollector
from shunter.replica.validation import validate_request
from shunter.sampling_params import SamplingParams

Prompt = str | Sequence[int]
Message = dict[str, str]  # {"role": ..., "content": ...}


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
            validate_request(tokens, _sample_params(p, 0), self.engine.limits)
        tokenizer = self.engine.tokenizer
        collector = OutputCollector(decode=None if tokenizer is None else lambda t: tokenizer.decode([t]))
        held: dict[str, list[tuple[str, list[int], SamplingParams]]] = {}
        ids = []
        for prompt, tokens, p in zip(prompts, token_lists, params_list):
            request_id = f"offline-{self._counter}"
            self._counter += 1
            text = prompt if isinstance(prompt, str) else None
            first, *rest = collector.expect(request_id, text, tokens, p.n)
            self.engine.add_request(first, tokens, _sample_params(p, 0))
            if rest:  # added once the first has computed (and cached) the prompt's blocks
                held[first] = [(engine_id, tokens, _sample_params(p, i)) for i, engine_id in enumerate(rest, 1)]
            ids.append(request_id)
        return self._run(ids, collector, held, use_tqdm)

    def chat(
        self,
        messages: list[Message] | list[list[Message]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool | None = None,
    ) -> list[RequestOutput]:
        """Generate a reply to each conversation, rendered with the model's chat template."""
        if not getattr(self.engine.tokenizer, "chat_template", None):
            raise ValueError("messages: this model has no chat template; use generate()")
        conversations = [messages] if messages and isinstance(messages[0], Mapping) else messages
        prompts = [chat_prompt_ids(self.engine.tokenizer, conversation, field=f"messages[{c}]")
                   for c, conversation in enumerate(conversations)]
        return self.generate(prompts, sampling_params, use_tqdm)

    def _run(self, ids: list[str], collector: OutputCollector,
             held: dict[str, list[tuple[str, list[int], SamplingParams]]], use_tqdm: bool | None) -> list[RequestOutput]:
        """Step until every request is done. The samples in `held` wait for their first
        sibling's first token: by then its prompt blocks are in the prefix cache, so the
        other samples share them instead of computing the prompt again."""
        finished: dict[str, RequestOutput] = {}
        show = sys.stderr.isatty() if use_tqdm is None else use_tqdm
        bar = None
        if show:
            from tqdm import tqdm

            bar = tqdm(total=len(ids), desc="generate", unit="req", dynamic_ncols=True)
        while self.engine.has_unfinished_requests():
            outs = self.engine.step()
            refused = next((o.error for o in outs if o.error is not None), None)
            if refused is not None:  # found unservable after it was taken: refuse the whole call, leave nothing
                for engine_id in self.engine.request_ids():
                    self.engine.abort_request(engine_id)
                while self.engine.has_unfinished_requests():
                    self.engine.step()
                raise ValueError(refused)
            for out in outs:
                for engine_id, tokens, params in held.pop(out.request_id, ()):
                    self.engine.add_request(engine_id, tokens, params)
            for out in collector.fold(outs):
                finished[out.request_id] = out
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        return [finished[i] for i in ids]


def _sample_params(params: SamplingParams, index: int) -> SamplingParams:
    """The engine runs one sequence per request: sample `index` of `n`, with its own seed. The
    first sample alone computes the prompt's log-probabilities (so the others share its blocks)."""
    if params.n == 1:
        return params
    seed = None if params.seed is None else params.seed + index
    return dataclasses.replace(params, n=1, seed=seed, prompt_logprobs=params.prompt_logprobs if index == 0 else None)
