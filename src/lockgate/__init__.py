"""Lockgate: an identity-aware access gateway for data pipelines."""

__version__ = "0.1.0"
