#!/usr/bin/env bash
# mypy --strict over the package, summed per module (most errors first), then mypy's own
# output. `make test` runs `mypy dockd` after ruff and fails on any error; this script is
# for seeing where the errors are (e.g. while merging the #13 branches).
#   scripts/mypy-report.sh            # whole package
#   scripts/mypy-report.sh dockd/x.py # some modules
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(.venv/bin/mypy "${@:-dockd}" 2>&1)
rc=$?
echo "$out" | grep -E '^[^:]+\.py:[0-9]+: error' | cut -d: -f1 | sort | uniq -c | sort -rn
echo "$out" | tail -1
[ "${VERBOSE:-0}" = 1 ] && echo "$out"
exit $rc
