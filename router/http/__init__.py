"""The OpenAI-compatible HTTP front door: wire shapes, request plans, text streams, errors, the gateway."""
from shunter.surface import surface

__all__, __getattr__ = surface(__name__, {
    "gateway": ["HttpGateway"],
})
