#!/usr/bin/env bash
# README command 2: install (CPU torch) and run lint, the type check and the test suite (unit + integration, not slow/gpu).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
ruff check lplkit tests benchmarks pipelines
ruff format --check lplkit tests benchmarks pipelines
mypy  # over lplkit/, configured in pyproject.toml [tool.mypy]
python -m pytest tests "$@"
