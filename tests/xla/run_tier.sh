#!/usr/bin/env bash
# The XLA tier (`make test-xla`, XLA_TIER_DEVICE=TPU: `make test-tpu`): tests/support/run_tier.sh.
# Kept at this path for the commands that README.md, bench/ and requirements-tpu.txt name.
exec bash "$(dirname "$0")/../support/run_tier.sh" xla "$@"
