"""Compare two lm-evaluation-harness runs of the same task, sample by sample.

    python loadtest/lm_eval/compare.py A_DIR B_DIR [--labels shunter hf] [--tol 1e-4] [--acc-points 0.5] [--json OUT]

Each DIR is an lm_eval `--output_path` run with `--log_samples` (searched recursively for one
`samples_*.jsonl` and one `results_*.json`). For every (document, choice) pair it takes the
loglikelihood lm-eval recorded (`resps`: [[loglikelihood, is_greedy]] per choice) and prints the
largest absolute difference between the two runs, how many differ by more than `--tol`, the
is_greedy flags that differ, each run's accuracy from its results file, and whether the issue's
goals hold (accuracy within `--acc-points` points, every loglikelihood within `--tol`). Exit 1
when a goal is missed, 2 when the runs do not cover the same requests. Standard library only, so
any Python runs it.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys


def _one(directory: str, pattern: str) -> str:
    found = sorted(glob.glob(os.path.join(directory, "**", pattern), recursive=True))
    if len(found) != 1:
        sys.exit(f"{directory}: expected one {pattern}, found {len(found)}: {found}")
    return found[0]


def load(directory: str) -> tuple[dict, dict[tuple[int, int], tuple[float, bool, str, str]]]:
    """The results file's task results, and per (doc_id, choice): loglikelihood, is_greedy, context, continuation."""
    with open(_one(directory, "results_*.json")) as f:
        results = json.load(f)["results"]
    samples = {}
    with open(_one(directory, "samples_*.jsonl")) as f:
        for line in f:
            s = json.loads(line)
            for i, resp in enumerate(s["resps"]):
                (ll, greedy), = resp  # one response per request for loglikelihood
                args = s["arguments"][f"gen_args_{i}"]
                samples[(s["doc_id"], i)] = (float(ll), str(greedy) == "True", args["arg_0"], args["arg_1"])
    return results, samples


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="the run under test (Shunter)")
    ap.add_argument("b", help="the reference run (lm-eval's hf model)")
    ap.add_argument("--labels", nargs=2, default=["shunter", "hf"], metavar=("A", "B"), help="names of the two runs")
    ap.add_argument("--tol", type=float, default=1e-4, help="largest |loglikelihood difference| allowed")
    ap.add_argument("--acc-points", type=float, default=0.5, help="largest accuracy difference allowed, in points")
    ap.add_argument("--json", help="also write the comparison here")
    args = ap.parse_args()
    a, b = args.labels
    a_results, x = load(args.a)
    b_results, y = load(args.b)
    if x.keys() != y.keys():
        print(f"the runs differ in requests: {len(x.keys() - y.keys())} only in {a}, "
              f"{len(y.keys() - x.keys())} only in {b}")
        return 2
    mismatched = [k for k in x if x[k][2:] != y[k][2:]]
    if mismatched:
        print(f"{len(mismatched)} requests have different context/continuation text, e.g. {mismatched[0]}")
        return 2
    diffs = {k: abs(x[k][0] - y[k][0]) for k in x}
    worst = max(diffs, key=diffs.get)
    over = sorted(k for k, d in diffs.items() if d > args.tol)
    greedy = sorted(k for k in x if x[k][1] != y[k][1])
    # the choice each run picks (the largest loglikelihood of a document's choices), as lm-eval's acc does
    docs = sorted({d for d, _ in x})
    pick = {name: {d: max((i for dd, i in run if dd == d), key=lambda i: run[(d, i)][0]) for d in docs}
            for name, run in ((a, x), (b, y))}
    picks_differ = [d for d in docs if pick[a][d] != pick[b][d]]
    task = next(iter(a_results))
    acc = {name: {m: v for m, v in r[task].items() if m in ("acc,none", "acc_norm,none")}
           for name, r in ((a, a_results), (b, b_results))}
    acc_gap = 100 * abs(acc[a]["acc,none"] - acc[b]["acc,none"])
    out = {
        "task": task,
        "labels": [a, b],
        "requests": len(x),
        "documents": len(docs),
        "max_abs_diff": diffs[worst],
        "max_abs_diff_at": {"doc_id": worst[0], "choice": worst[1], a: x[worst][0], b: y[worst][0]},
        "mean_abs_diff": sum(diffs.values()) / len(diffs),
        "mean_signed_diff": sum(x[k][0] - y[k][0] for k in x) / len(x),
        "tol": args.tol,
        "over_tol": len(over),
        "over_tol_at": [{"doc_id": d, "choice": i, "diff": diffs[(d, i)]} for d, i in over],
        "is_greedy_differs": len(greedy),
        "picked_choice_differs": len(picks_differ),
        "accuracy": acc,
        "acc_diff_points": acc_gap,
        "goal_acc": acc_gap <= args.acc_points,
        "goal_loglikelihood": not over,
    }
    print(f"task {task}: {out['requests']} loglikelihood requests over {out['documents']} documents")
    print(f"max |loglikelihood {a} - {b}| = {out['max_abs_diff']:.3g} (doc {worst[0]}, choice {worst[1]}: "
          f"{x[worst][0]!r} vs {y[worst][0]!r}); mean {out['mean_abs_diff']:.3g}, "
          f"mean signed {out['mean_signed_diff']:+.3g}")
    print(f"over {args.tol:g}: {len(over)}; is_greedy differs: {len(greedy)}; "
          f"picked choice differs: {len(picks_differ)}")
    for name in (a, b):
        print(f"{name}: acc {acc[name]['acc,none']:.4f}, acc_norm {acc[name]['acc_norm,none']:.4f}")
    print(f"accuracy difference: {acc_gap:.2f} points (goal <= {args.acc_points:g}): "
          f"{'met' if out['goal_acc'] else 'MISSED'}; every loglikelihood within {args.tol:g}: "
          f"{'met' if out['goal_loglikelihood'] else 'MISSED'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
    return 0 if out["goal_acc"] and out["goal_loglikelihood"] else 1


if __name__ == "__main__":
    sys.exit(main())
