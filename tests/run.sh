#!/usr/bin/env bash
# Set up (venv + test extras) and run the whole test suite. README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'
# tuned-lens, for the test that loads our translators with it: --no-deps, since its own
# requirements (torchdata, wandb, datasets) could replace the pinned torch
.venv/bin/pip install -q --no-deps tuned-lens==0.2.0
exec .venv/bin/python -m pytest "$@"
