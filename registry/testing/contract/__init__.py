"""The contract suite (SPEC 3): one module per part of the protocol, each a set of pytest tests
on the fixtures of :mod:`registry.testing.plugin`. A backend's tests import them whole::

    from registry.testing.contract.sessions import *  # noqa: F403
"""
