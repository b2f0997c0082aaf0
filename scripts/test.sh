#!/usr/bin/env bash
# The test command: system packages, a build, the example policies checked, every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
swift build
./.build/debug/tollgate check policies/
swift test
