"""Balance: resolve per-class targets, pick sources, synthesize, gate and write a balanced set.

``from fesaug.balance import balance, BalanceConfig`` is the library form of ``fesaug balance``.
"""

from fesaug.utils.lazy import lazy_exports

__all__ = ["BalanceConfig", "BalanceResult", "Targets", "balance", "resolve_targets"]
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "BalanceConfig": ".run",
        "BalanceResult": ".run",
        "balance": ".run",
        "Targets": ".targets",
        "resolve_targets": ".targets",
    },
)
