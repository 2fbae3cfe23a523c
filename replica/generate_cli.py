"""`shunter generate`: stream one prompt's completion from a local engine."""
from __future__ import annotations

import argparse
import sys

from shunter.replica.threads import available_cpus


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the prompt text")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model name, HF folder, .gguf file or random:<shape>")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=-1)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    parser.add_argument("--num-threads", type=int, default=None,
                        help="torch CPU threads (default: the CPUs this process may use, here %d)" % available_cpus())


def run(args: argparse.Namespace) -> int:
    from shunter.replica.engine import Engine
    from shunter.replica.engine_config import EngineConfig
    from shunter.sampling_params import SamplingParams

    try:
        params = SamplingParams(
            max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed
        )
        engine = Engine(EngineConfig(model=args.model, num_threads=args.num_threads))
        if engine.tokenizer is None:
            raise ValueError(f"model: {args.model} has no tokenizer, so it cannot take a text prompt")
        if args.chat:
            messages = [{"role": "user", "content": args.prompt}]
            text = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            ids = list(engine.tokenizer(text, add_special_tokens=False).input_ids)
        else:
            ids = list(engine.tokenizer(args.prompt).input_ids)
        engine.add_request("cli", ids, params)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    while engine.has_unfinished_requests():
        for out in engine.step():
            sys.stdout.write(out.new_text)
            sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
