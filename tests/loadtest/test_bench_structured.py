"""`bench structured` at toy size on SmolLM2: both measures run, the lengths match and the numbers add up."""
from __future__ import annotations

import json

import pytest

from shunter import cli

pytestmark = pytest.mark.slow


def test_time_per_token_and_a_new_schemas_first_token_are_measured(tmp_path, smollm2_folder):
    out = tmp_path / "structured.json"
    assert cli.main(["bench", "structured", "--batch", "2", "--max-tokens", "40", "--rounds", "1",
                     "--new-schemas", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    tpot, first = result["per_token"], result["first_token"]
    assert tpot["valid_outputs"] == 2 and len(tpot["runs"]["constrained"]) == len(tpot["runs"]["unconstrained"]) == 1
    on = sum(w for w, _ in tpot["runs"]["constrained"])
    assert tpot["constrained_ms_per_token"] == pytest.approx(1e3 * on / tpot["output_tokens_per_run"])
    assert len(first["new_schema_s"]) == len(first["plain_s"]) == len(first["cached_schema_s"]) == 1
    assert out.with_suffix(".png").stat().st_size > 0
