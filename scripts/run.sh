#!/usr/bin/env bash
# Set up the venv and run the whole workflow on a config (default: config/config.yaml).
# Extra arguments go to snakemake, e.g. `bash scripts/run.sh --configfile config/ci.yaml`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec snakemake --cores all --rerun-incomplete "$@"
