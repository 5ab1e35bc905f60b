#!/bin/sh
# Reload soak (make soak-reload): see reload_soak.py for what it checks and its knobs
# (SOAK_SECONDS shortens a first try). Usage: tests/soak/reload_soak.sh [BUILD_DIR]
set -e
here=$(dirname "$0")
export SUITE_BUILD="$(cd "${1:-$here/../../build}" && pwd)"
exec python3 "$here/reload_soak.py"
