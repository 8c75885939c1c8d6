"""The exported contract suite (registry.testing.contract.hosts) on every backend of BACKENDS."""

from registry.testing.contract.hosts import *  # noqa: F403
