"""`shunter bench structured`: what structured output costs, against the same work unconstrained.

Time per token: `--batch` requests at once, each constrained to a JSON schema (bounded fields),
greedy; then the same prompts unconstrained with EOS ignored and each request's output length
set to what its constrained run produced, so both sides run the same steps over the same tokens.
The runs alternate on one engine for `--rounds` rounds (constrained first, then unconstrained
first, ...); the overhead is the ratio of their summed times (and of their CPU times, which on a
shared machine are closer to what each would take alone). Issue 27's goal: <= 10% at batch 32.

First token of a new schema: one request at a time, max_tokens=1, each with a schema never seen
before (its property names are new, so no cached grammar serves it), against the same prompt
unconstrained; the median difference is the new schema's first-token overhead (goal < 50 ms).
The engine's first structured request also wraps the tokenizer for the grammar library; that
one-time cost is reported apart (a server does it at start-up, `ReplicaCore`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def schema(tag: str) -> dict:
    """A train record with bounded fields; `tag` makes its property names (and grammar) new."""
    return {"type": "object", "additionalProperties": False, "required": [f"name{tag}", f"cars{tag}", f"kind{tag}"],
            "properties": {f"name{tag}": {"type": "string", "maxLength": 24},
                           f"cars{tag}": {"type": "integer", "minimum": 1, "maximum": 120},
                           f"kind{tag}": {"enum": ["freight", "passenger", "mixed"]}}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=32, help="requests at once in the time-per-token runs")
    parser.add_argument("--max-tokens", type=int, default=96, help="cap on each constrained output")
    parser.add_argument("--rounds", type=int, default=2, help="constrained/unconstrained rounds on one engine")
    parser.add_argument("--new-schemas", type=int, default=8, help="first-token runs, each with a new schema")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: loadtest/results/bench_structured.json)")


def _timed(llm, prompts: list[str], params) -> tuple[float, float, list]:
    cpu, wall = time.process_time(), time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    return time.perf_counter() - wall, time.process_time() - cpu, outs


def per_token(llm, args: argparse.Namespace) -> dict:
    from shunter import SamplingParams

    prompts = [f"Describe freight train number {i} as JSON:" for i in range(args.batch)]
    constrained = [SamplingParams(max_tokens=args.max_tokens, temperature=0, structured_output={"json": schema("")})
                   for _ in prompts]
    _, _, outs = _timed(llm, prompts, constrained)  # warm-up; its lengths set the unconstrained run's
    lengths = [len(o.outputs[0].token_ids) for o in outs]
    valid = sum(o.outputs[0].finish_reason == "stop" and _parses(o.outputs[0].text) for o in outs)
    free = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in lengths]
    runs: dict[str, list[tuple[float, float]]] = {"constrained": [], "unconstrained": []}
    for r in range(args.rounds):
        for name in (("constrained", "unconstrained") if r % 2 == 0 else ("unconstrained", "constrained")):
            wall, cpu, outs = _timed(llm, prompts, constrained if name == "constrained" else free)
            assert [len(o.outputs[0].token_ids) for o in outs] == lengths  # greedy: the same lengths every run
            runs[name].append((wall, cpu))
    tokens = sum(lengths) * args.rounds
    on, off = (sum(w for w, _ in runs[k]) for k in ("constrained", "unconstrained"))
    on_cpu, off_cpu = (sum(c for _, c in runs[k]) for k in ("constrained", "unconstrained"))
    return {"batch": args.batch, "output_tokens_per_run": sum(lengths), "valid_outputs": valid,
            "runs": runs, "constrained_ms_per_token": 1e3 * on / tokens, "unconstrained_ms_per_token": 1e3 * off / tokens,
            "overhead": on / off - 1, "cpu_overhead": on_cpu / off_cpu - 1}


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def first_token(llm, args: argparse.Namespace) -> dict:
    from shunter import SamplingParams

    prompt = ["Describe a freight train as JSON:"]
    ttft = lambda params: _timed(llm, prompt, params)[0]  # noqa: E731 (max_tokens=1: the whole run is the first token)
    ttft(SamplingParams(max_tokens=4, temperature=0))  # warm-up: the engine's first step
    tokenizer_wrap = ttft(SamplingParams(max_tokens=1, temperature=0, structured_output={"json": schema("w")}))
    plain, new = [], []
    for i in range(args.new_schemas):
        plain.append(ttft(SamplingParams(max_tokens=1, temperature=0)))
        new.append(ttft(SamplingParams(max_tokens=1, temperature=0, structured_output={"json": schema(f"n{i}")})))
    cached = [ttft(SamplingParams(max_tokens=1, temperature=0, structured_output={"json": schema("n0")}))
              for _ in range(args.new_schemas)]
    return {"first_structured_request_s": tokenizer_wrap, "plain_s": plain, "new_schema_s": new,
            "cached_schema_s": cached,
            "new_schema_overhead_ms": 1e3 * (statistics.median(new) - statistics.median(plain)),
            "cached_schema_overhead_ms": 1e3 * (statistics.median(cached) - statistics.median(plain))}


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    from shunter import LLM

    if args.threads:
        torch.set_num_threads(args.threads)
    llm = LLM(model=args.model, max_num_seqs=max(args.batch, 1))
    first = first_token(llm, args)
    tpot = per_token(llm, args)
    result = {"command": args._invocation, "model": args.model,
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                         f"torch {torch.__version__}",
              "load_average": os.getloadavg(), "per_token": tpot, "first_token": first}
    out = args.out or RESULTS / "bench_structured.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out.with_suffix(".png"))
    console = Console()
    console.print(f"batch {tpot['batch']}: {tpot['constrained_ms_per_token']:.2f} ms/token constrained, "
                  f"{tpot['unconstrained_ms_per_token']:.2f} unconstrained: overhead {tpot['overhead']:+.1%} "
                  f"(CPU time {tpot['cpu_overhead']:+.1%}; goal <= 10%); "
                  f"{tpot['valid_outputs']}/{tpot['batch']} outputs parse")
    console.print(f"first token of a new schema: {first['new_schema_overhead_ms']:+.1f} ms over unconstrained "
                  f"(goal < 50 ms), of a cached one {first['cached_schema_overhead_ms']:+.1f} ms; the engine's first "
                  f"structured request took {first['first_structured_request_s'] * 1e3:.0f} ms (tokenizer wrap)")
    console.print(f"saved {out}")
    return 0


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tpot, first = result["per_token"], result["first_token"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.bar(["unconstrained", "JSON schema"], [tpot["unconstrained_ms_per_token"], tpot["constrained_ms_per_token"]],
             color=["grey", "tab:blue"])
    left.set_ylabel("ms per output token")
    left.set_title(f"batch {tpot['batch']}: overhead {tpot['overhead']:+.1%}", fontsize=9)
    right.boxplot([[s * 1e3 for s in first[k]] for k in ("plain_s", "cached_schema_s", "new_schema_s")])
    right.set_xticks([1, 2, 3], ["unconstrained", "cached schema", "new schema"])
    right.set_ylabel("first token (ms), batch 1")
    right.set_title(f"new schema: {first['new_schema_overhead_ms']:+.1f} ms", fontsize=9)
    fig.suptitle(f"structured output, {result['model']} ({result['machine']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from shunter.loadtest.bench_cli import run_bench

    return run_bench("structured", __doc__.splitlines()[0], add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
