"""The exported contract suite (registry.testing.contract.inbox) on every backend of BACKENDS."""

from registry.testing.contract.inbox import *  # noqa: F403
