"""A Prometheus page as tests read it: scraped over HTTP, parsed with prometheus_client's parser."""
from __future__ import annotations

import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


class Page:
    """One scrape, parsed: `get(name, **labels)` sums the samples of that name with those labels."""

    def __init__(self, text: str) -> None:
        self.samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    @classmethod
    def scrape(cls, url: str) -> Page:
        with urllib.request.urlopen(url, timeout=5) as response:
            return cls(response.read().decode())

    def get(self, name: str, **labels: str) -> float:
        found = [s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items()]
        assert found, f"no sample {name} {labels}"
        return sum(found)

    def per_replica(self, name: str) -> dict[str, float]:
        return {s.labels["replica"]: s.value for s in self.samples if s.name == name}


def until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
