"""Writing an experiment down: JSON and a plot in loadtest/results/sim/, a section in docs/results.md.

Each experiment owns one section of docs/results.md between `<!-- sim:NAME -->` markers; running
it again replaces that section and nothing else, so other parts of the page (and other
experiments' sections) are left alone.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from shunter.loadtest.sim.experiments.common import Result

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = ROOT / "loadtest" / "results" / "sim"
RESULTS_MD = ROOT / "docs" / "results.md"
INTRO = """## Simulator (`shunter bench sim`)

Discrete-event simulation on a virtual clock (`loadtest/sim/`): every replica is the real
`Engine` (scheduler, policies, KV cache manager, block pool) over a runner whose steps take the
time a cost model gives; the cluster routes with the router's own policies, prefix index,
placement functions and `Rebalancer`. Cost models are in `loadtest/sim/costs/`, each with its
`source`: analytic rooflines for GPUs (peak numbers from datasheets, efficiency factors assumed)
and a fit to step times measured here on the CPU (`python -m shunter.loadtest.sim.fit_costs`).
The H100 models' per-step host overhead is calibrated from one measured H100 engine run
(`gpu-crosscheck` below); their peaks and efficiencies are still assumed. The same script
measures and fits a GPU model (`--device cuda --model random:llama-3-8b`); none is committed
yet. Each section below is written by the command it names; numbers are virtual-time results of
that model, not measurements on a GPU."""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    if value is None:
        return "-"
    return str(value)


def table(result: Result) -> str:
    lines = ["| " + " | ".join(result.columns) + " |", "|" + "---|" * len(result.columns)]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in result.columns) + " |" for row in result.rows]
    return "\n".join(lines)


def write(result: Result, command: str, out_dir: Path = RESULTS_DIR, results_md: Path | None = RESULTS_MD) -> Path:
    """JSON (+ PNG) under `out_dir`; the experiment's section of `results_md` (None: skip it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {k: v for k, v in asdict(result).items() if k != "plot"}
    data["command"] = command
    json_path = out_dir / f"{result.name}.json"
    json_path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    png = None
    if result.plot is not None:
        png = out_dir / f"{result.name}.png"
        result.plot(png)
    if results_md is not None:
        update_section(results_md, "intro", INTRO)
        update_section(results_md, result.name, section(result, command, json_path, png, results_md.parent))
    return json_path


def section(result: Result, command: str, json_path: Path, png: Path | None, base: Path) -> str:
    rel = lambda p: os.path.relpath(p, base)  # noqa: E731
    parts = [f"### {result.title}", "",
             f"`{command}` ({result.wall_s:.0f} s on this machine) · [JSON]({rel(json_path)})", "", table(result), ""]
    if png is not None:
        parts += [f"![{result.name}]({rel(png)})", ""]
    parts += [f"- **Anchor:** {result.anchor}", f"- **Ours:** {result.ours}", f"- **Agreement:** {result.verdict}"]
    settings = {k: v for k, v in result.settings.items() if not isinstance(v, (list, dict))}
    if settings:
        parts.append("- **Settings:** " + "; ".join(f"{k}: {v}" for k, v in settings.items()))
    parts += [f"- {note}" for note in result.notes]
    return "\n".join(parts)


def update_section(path: Path, name: str, body: str) -> None:
    start, end = f"<!-- sim:{name} -->", f"<!-- /sim:{name} -->"
    block = f"{start}\n{body}\n{end}"
    text = path.read_text() if path.exists() else "# Results\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
