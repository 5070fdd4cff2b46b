"""Data: the cache (XNN_HOME), MNIST, images."""
from .cache import fetch, home

__all__ = ["fetch", "home"]
