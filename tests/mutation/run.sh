#!/usr/bin/env bash
# Mutation testing of xnn's core maths with mutmut 3 (configured in pyproject.toml [tool.mutmut]).
# Not part of CI: run it before resolving core-maths work (docs/testing.md).
#
#   tests/mutation/run.sh                 # every mutant of the core maths (long: ~1 h on 2 cores)
#   tests/mutation/run.sh "xnn.optim*"    # one module (mutmut's name globs)
#   tests/mutation/run.sh --score         # only print the scores of the last run
#
# Mutants live in mutants/ (git-ignored); `mutmut show NAME` prints one; `mutmut browse` is interactive.
# The tests run on the CPU device only (-k "not standin and not gpu"): the stand-in and a GPU run the
# same xnn code, so they add time but no kills.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
command -v mutmut >/dev/null || { echo "pip install mutmut  (3.x)" >&2; exit 2; }
# the copied tests find data next to the checkout, not next to mutants/
export XNN_HOME="${XNN_HOME:-$(cd .. && pwd)/shared/data}"
if [ "${1:-}" != "--score" ]; then
    # new or changed tests: start from a fresh copy (mutmut keeps results per function hash otherwise)
    [ "${MUTMUT_KEEP:-0}" = 1 ] || rm -rf mutants
    mutmut run "$@" || true
fi
mutmut results --all true 2>/dev/null | python3 tests/mutation/score.py
