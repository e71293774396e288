"""Audit: class histograms (real vs synthetic), imbalance, subjects and integrity problems of a manifest."""

from fesaug.utils.lazy import lazy_exports

__all__ = ["AuditReport", "audit", "plot_report"]
__getattr__, __dir__ = lazy_exports(__name__, {"AuditReport": ".report", "audit": ".report", "plot_report": ".report"})
