"""fesaug: balance facial-expression datasets by synthesis (FERSNet, Zhao et al., ICPR 2020)."""

__version__ = "0.1.0"
