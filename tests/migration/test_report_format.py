"""The stored import report speaks the CLI's one timestamp format."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from registry.migrate import import_json, stored_report
from tests.conftest import LEGACY_SAMPLES

ISO_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def test_the_import_time_is_iso_utc_with_z(tmp_path: Path) -> None:
    shutil.copytree(LEGACY_SAMPLES / "real", tmp_path / "legacy")
    report = import_json(tmp_path / "legacy", tmp_path / "ccr.db")
    stored = stored_report(tmp_path / "ccr.db")
    assert stored is not None
    assert ISO_Z.fullmatch(report.imported_at) and stored.imported_at == report.imported_at
    assert ISO_Z.fullmatch(report.to_dict()["imported_at"])
