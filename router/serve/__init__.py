"""`shunter serve`: its options and start-up, in memory or with replicas shared through Redis."""
from shunter.surface import surface

__all__, __getattr__ = surface(__name__, {
    "cache_size_options": ["cache_size_options"],
    "disaggregation_options": ["disaggregation_options"],
})
