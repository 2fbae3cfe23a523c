"""Security at both front doors: API keys, TLS, their options, and refusing bytes that are no valid message."""
from shunter.surface import surface

__all__, __getattr__ = surface(__name__, {
    "options": ["options", "Security"],
    "auth": ["check_bearer"],
    "decode_guard": ["DecodeGuard"],
})
