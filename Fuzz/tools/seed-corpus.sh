#!/usr/bin/env bash
# Regenerates Fuzz/corpus/ from the repository's own test cases (Tests/RuntimeTests case
# tables, dumped by DumpSeeds.swift), the black-box seeds and corpus.py's lists.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=.build-fuzz/seeds
mkdir -p .build-fuzz
rm -rf "$out"
T=Tests/RuntimeTests
R=Sources/Runtime
# Compiled as module "Runtime" so the tests' `import Runtime` is the module itself.
swiftc -parse-as-library -module-name Runtime $R/IOBuffer.swift $R/HTTP1/*.swift \
    $T/HTTP1RequestParserTests.swift $T/HTTP1ResponseParserTests.swift $T/ChunkedDecoderTests.swift \
    $T/HTTP1TestSupport.swift $T/GuardedBytes.swift Fuzz/tools/DumpSeeds.swift \
    -o .build-fuzz/dump-seeds 2> >(grep -v -e "; ignoring import" -e '^ *[0-9]* |' -e '^ *|' >&2)
.build-fuzz/dump-seeds "$out"
python3 Fuzz/tools/corpus.py build "$out"
