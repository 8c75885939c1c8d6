"""The exported contract suite (registry.testing.contract.validation) on every backend."""

from registry.testing.contract.validation import *  # noqa: F403
