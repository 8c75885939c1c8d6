"""The exported property suite (registry.testing.property) on every backend of BACKENDS."""

from registry.testing.property import *  # noqa: F403
