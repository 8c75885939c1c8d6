"""The exported contract suite (registry.testing.contract.store) on every backend of BACKENDS."""

from registry.testing.contract.store import *  # noqa: F403
