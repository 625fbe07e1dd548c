#!/usr/bin/env bash
# The JAX tier (`make test-jax`): tests/support/run_tier.sh.
# Kept at this path for the commands that README.md and requirements-jax.txt name.
exec bash "$(dirname "$0")/../support/run_tier.sh" jax "$@"
