"""Routing: where a new request goes (policies, prefix index, load reports) and which running ones move (rebalancer)."""
from shunter.surface import surface

__all__, __getattr__ = surface(__name__, {
    "disaggregation": ["DEFAULT_THRESHOLD_TOKENS", "Disaggregated"],
    "load": ["LoadReport", "Migration", "RequestLoad", "RoutingRequest", "imbalanced"],
    "load_index": ["LoadIndex"],
    "placement": ["apply_stats", "request_load", "reserve", "routing_policy", "routing_request"],
    "policies": ["DEFAULT", "PrefixAware", "REGISTRY", "make_routing_policy"],
    "prefix_index": ["PrefixIndex"],
    "rebalancer": ["MEASURES", "Rebalancer"],
})
