"""Prometheus metrics: request metrics where streams are served, engine and router collectors, the pages."""
from shunter.surface import surface

__all__, __getattr__ = surface(__name__, {
    "options": ["options", "MetricsAddress"],
    "pages": ["FrontendMetrics", "MetricsPage", "serve_frontend_metrics", "serve_replica_metrics"],
    "requests": ["StreamMetrics"],
})
