"""`prepare_model`: a GGUF source is converted once, announced once; other sources are left alone."""
from __future__ import annotations

from shunter.replica.models import loader


def test_a_gguf_source_is_converted_once_and_announced_once(tmp_path, monkeypatch):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"")
    builds, announced = [], []

    def build(folder):
        builds.append(folder)
        (folder / "config.json").write_text("{}")

    monkeypatch.setattr(loader, "_cache_plan", lambda name: (tmp_path / "cache" / "m", "m:0", build))
    loader.prepare_model(str(gguf), announced.append)
    loader.prepare_model(str(gguf), announced.append)
    assert len(builds) == 1 and announced == [tmp_path / "cache" / "m"]
    assert (tmp_path / "cache" / "m" / "config.json").exists()


def test_random_and_folder_sources_need_no_conversion(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")

    def no_plan(name):
        raise AssertionError(f"{name} was converted")

    monkeypatch.setattr(loader, "_cache_plan", no_plan)
    loader.prepare_model("random:tiny", no_plan)
    loader.prepare_model(str(tmp_path), no_plan)
