"""The exported contract suite (registry.testing.contract.sessions) on every backend of BACKENDS."""

from registry.testing.contract.sessions import *  # noqa: F403
