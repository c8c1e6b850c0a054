"""mesh-log-analyzer: known Istio problems in mesh logs, as incidents."""

__version__ = "0.1.0"
