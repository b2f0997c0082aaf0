#!/usr/bin/env bash
# The test command: system packages, a build, the example policies checked, every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
swift build
./.build/debug/tollgate check policies/
swift test
# Opt-in: a short libFuzzer run of every parser target (Fuzz/README.md), e.g.
# TOLLGATE_FUZZ_SECONDS=10 scripts/test.sh for ten seconds per target (about a minute and a half).
if [[ -n "${TOLLGATE_FUZZ_SECONDS:-}" ]]; then
    scripts/fuzz.sh --duration "$TOLLGATE_FUZZ_SECONDS" request response chunked path credential client-ip sse_meter token_hints jwt webhook
fi
