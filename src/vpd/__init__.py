"""vpd-replication: adVersarial Parameter Decomposition, reproducibly, from corpus to paper figures."""

__version__ = "0.1.0"
