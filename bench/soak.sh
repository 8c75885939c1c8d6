#!/usr/bin/env bash
# The heavy runs kept out of CI: 200 SIGKILL rounds per backend and a long Hypothesis profile.
# Usage: bench/soak.sh   (from the repository root, with the dev extra installed in .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
CCR_CRASH_ROUNDS=200 HYPOTHESIS_PROFILE=soak .venv/bin/python -m pytest -q \
  tests/faults/test_crash.py tests/property tests/migration/test_roundtrip.py
