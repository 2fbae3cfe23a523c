"""The gRPC front door: the Generation service, request conversion, and `shunter status` (its client)."""
from shunter.surface import surface

__all__, __getattr__ = surface(__name__, {
    "frontend": ["Frontend"],
})
