#!/usr/bin/env bash
# One-call GPU check (see benchmarks/device_check.py): OUT_DIR [--quick], or --fetch-wheels.
# python3 is the GPU image's own Python (the one with its jax and torch); PYTHON overrides it.
set -euo pipefail
exec "${PYTHON:-python3}" "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/device_check.py" "$@"
