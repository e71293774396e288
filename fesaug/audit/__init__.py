"""Audit: class histograms (real vs synthetic), imbalance, subjects and integrity problems of a manifest."""

from typing import TYPE_CHECKING

from fesaug.utils.lazy import lazy_exports

# Static twins of the lazy names, for type checkers and the API reference (griffe reads source,
# not the runtime); never executed.
if TYPE_CHECKING:
    from fesaug.audit.report import AuditReport, audit, plot_report

__all__ = ["AuditReport", "audit", "plot_report"]
__getattr__, __dir__ = lazy_exports(__name__, {"AuditReport": ".report", "audit": ".report", "plot_report": ".report"})
