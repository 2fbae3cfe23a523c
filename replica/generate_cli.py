"""`shunter generate`: stream one prompt's completion from a local engine.

The text goes to stdout; why it stopped (the finish reason) goes to stderr, so a reply cut at
--max-tokens is never mistaken for a whole one.
"""
from __future__ import annotations

import argparse
import sys

from shunter.cli_args import int_at_least
from shunter.replica import speculative as speculative_options
from shunter.replica.threads import available_cpus

STOPPED = {"length": "stopped at --max-tokens {max_tokens} or the model's context", "stop": "end of text or a stop string"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the prompt text")
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="smollm2-135m-instruct, a Hugging Face folder, a .gguf file or random:<shape>")
    parser.add_argument("--max-tokens", type=int, default=64, help="most tokens to generate")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: keep this much probability mass")
    parser.add_argument("--top-k", type=int, default=-1, help="keep the k likeliest tokens (-1: all)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    parser.add_argument("--no-async-scheduling", action="store_true",
                        help="step synchronously: schedule the next step only once this one's tokens are back")
    speculative_options.add_arguments(parser)
    parser.add_argument("--num-threads", type=int_at_least(1), default=None,
                        help=f"torch CPU threads (default: the CPUs this process may use, here {available_cpus()})")


def finish_line(reason: str | None, max_tokens: int) -> str:
    why = STOPPED.get(reason or "", "")
    return f"shunter: finish reason: {reason}" + (f" ({why.format(max_tokens=max_tokens)})" if why else "")


def run(args: argparse.Namespace) -> int:
    from shunter.replica.models.sources import model_source
    from shunter.sampling_params import SamplingParams

    try:  # everything that can be wrong with the options, before the model loads
        params = SamplingParams(
            max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed
        )
        try:
            model_source(args.model)
        except ValueError as e:
            raise ValueError(f"--model: {e}") from None
        speculative_options.check_draft_model(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from shunter.replica.chat import chat_prompt_ids
    from shunter.replica.engine import Engine
    from shunter.replica.engine_config import EngineConfig

    try:
        engine = Engine(EngineConfig(model=args.model, num_threads=args.num_threads,
                                     async_scheduling=False if args.no_async_scheduling else None,
                                     **speculative_options.engine_settings(args)))
        if engine.tokenizer is None:
            raise ValueError(f"--model: {args.model} has no tokenizer, so it cannot take a text prompt")
        if args.chat:
            ids = chat_prompt_ids(engine.tokenizer, [{"role": "user", "content": args.prompt}], field="--chat")
        else:
            ids = list(engine.tokenizer(args.prompt).input_ids)
        engine.add_request("cli", ids, params)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    reason = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            sys.stdout.write(out.new_text)
            sys.stdout.flush()
            reason = out.finish_reason or reason
    sys.stdout.write("\n")
    sys.stdout.flush()
    print(finish_line(reason, args.max_tokens), file=sys.stderr)
    return 0
