"""This distribution's side of the exported suites: which stores registry.testing.plugin tests.

Loaded with ``-p ccr_extjson.pytest_plugin`` next to ``-p registry.testing.plugin`` (or from a
conftest's ``pytest_plugins``); the one thing a backend provides is this hook.
"""

from __future__ import annotations

import pytest

from registry.testing.backend import Backend


def pytest_ccr_backends(config: pytest.Config) -> dict[str, Backend]:
    # The store keeps its files under data_dir, so the file tests (modes, damage) apply too.
    return {"extjson": Backend({"backend": "extjson"}, keeps_files=True)}
