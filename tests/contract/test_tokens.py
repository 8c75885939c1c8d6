"""The exported contract suite (registry.testing.contract.tokens) on every backend of BACKENDS."""

from registry.testing.contract.tokens import *  # noqa: F403
