#!/usr/bin/env bash
# Builds and runs the fuzz targets for a bounded time each; see Fuzz/README.md.
#
#   scripts/fuzz.sh [--duration S] [--seed N] [--build-only] [target...]
#
# Targets (default: all, in this order):
#   request response chunked path credential client-ip   libFuzzer (-sanitize=fuzzer,address)
#   sse_meter token_hints                                 libFuzzer: credit metering (Policy/Credits)
#   jwt                                                   libFuzzer: JWT verification (Policy/JWT, OpenSSL)
#   webhook                                               libFuzzer: webhook secrets and signature checks
#   proxy                                                 black-box, the real binary with ASan
#   h2 tls                                                black-box HTTP/2 (h2c) and TLS record path
#                                                         (python with h2: FUZZ_PYTHON, /usr/bin/python3)
#   credits                                               black-box metered path: priced requests, SSE answers
#
# Prints per target: executions, seconds, crashes found (h2, tls, credits: crashes + hangs +
# oracle violations). Crash inputs go to Fuzz/crashes/<target>/ with a reproduction command.
# Exit status 1 when a crash was found, 2 when a build failed. Long runs are niced (FUZZ_NICE,
# default 10).
set -uo pipefail
cd "$(dirname "$0")/.."

duration=60
seed=$(( $(date +%s) % 100000 ))
build_only=0
targets=()
all_targets=(request response chunked path credential client-ip sse_meter token_hints jwt webhook proxy h2 tls credits)
while (($#)); do
    case "$1" in
        --duration) duration="$2"; shift 2 ;;
        --duration=*) duration="${1#*=}"; shift ;;
        --seed) seed="$2"; shift 2 ;;
        --seed=*) seed="${1#*=}"; shift ;;
        --build-only) build_only=1; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
((${#targets[@]})) || targets=("${all_targets[@]}")
nice_level="${FUZZ_NICE:-10}"
out=.build-fuzz
mkdir -p "$out"

R=Sources/Runtime
P=Sources/Policy
S=Fuzz/Targets/Support
http1=("$R/IOBuffer.swift" "$R"/HTTP1/*.swift "$S/FuzzSupport.swift" "$S/HTTP1Drive.swift")

# The sources of each libFuzzer target: the parsing files themselves (compiled into the
# target's module, so `package`/`public` access needs nothing), the shared support, the
# entry point. Policy's KeyHash needs one symbol of Decision.swift: PolicyShim.swift.
sources() {
    case "$1" in
        request)    echo "${http1[@]}" Fuzz/Targets/RequestTarget.swift ;;
        response)   echo "${http1[@]}" Fuzz/Targets/ResponseTarget.swift ;;
        chunked)    echo "${http1[@]}" Fuzz/Targets/ChunkedTarget.swift ;;
        path)       echo "$P/PathNormalizer.swift $S/FuzzSupport.swift Fuzz/Targets/PathTarget.swift" ;;
        credential) echo "$P/CredentialRule.swift $P/KeyFormat.swift $P/KeyHash.swift $S/PolicyShim.swift" \
                         "$S/FuzzSupport.swift Fuzz/Targets/CredentialTarget.swift" ;;
        client-ip)  echo "$P/IPRules.swift $S/FuzzSupport.swift Fuzz/Targets/ClientIPTarget.swift" ;;
        sse_meter)  echo "$P"/Credits/*.swift "$S/FuzzSupport.swift Fuzz/Targets/SSEMeterTarget.swift" ;;
        token_hints) echo "$P"/Credits/*.swift "$S/FuzzSupport.swift Fuzz/Targets/TokenHintsTarget.swift" ;;
        jwt)        echo "$P"/JWT/*.swift "$S/JWTShim.swift $S/FuzzSupport.swift Fuzz/Targets/JWTTarget.swift" ;;
        webhook)    echo "$P/SecuritySpec.swift $P/WebhookSignature.swift $S/FuzzSupport.swift Fuzz/Targets/WebhookTarget.swift" ;;
        *) return 1 ;;
    esac
}
dict_of() {
    case "$1" in
        request|response) echo Fuzz/dict/http1.dict ;;
        chunked) echo Fuzz/dict/chunked.dict ;;
        path) echo Fuzz/dict/path.dict ;;
        credential) echo Fuzz/dict/credential.dict ;;
        client-ip) echo Fuzz/dict/ip.dict ;;
        sse_meter) echo Fuzz/dict/sse.dict ;;
        token_hints) echo Fuzz/dict/json.dict ;;
        jwt) echo Fuzz/dict/jwt.dict ;;
        webhook) echo Fuzz/dict/webhook.dict ;;
    esac
}
max_len_of() {
    case "$1" in
        request|response) echo 20000 ;;   # past the 16 KiB head limit
        chunked) echo 9000 ;;             # past the 4 KiB extension/trailer limits
        sse_meter|token_hints) echo 8192 ;;
        jwt) echo 9000 ;;                 # past the 8 KiB token limit
        *) echo 4096 ;;
    esac
}

build_libfuzzer() {
    local t="$1" bin="$out/$1" srcs
    srcs=$(sources "$t") || { echo "fuzz.sh: unknown target $t" >&2; return 2; }
    # Rebuild when a source is newer than the binary.
    if [[ -x "$bin" ]] && [[ -z "$(find $srcs -newer "$bin" 2>/dev/null)" ]]; then return 0; fi
    echo "building $t" >&2
    # shellcheck disable=SC2086
    if ! nice -n "$nice_level" swiftc -sanitize=fuzzer,address -parse-as-library -O -g \
            -module-name "Fuzz_${t//-/_}" -I Sources/COpenSSL $srcs -o "$bin" 2> "$out/$t.build.log"; then
        grep -v "ld.gold: warning" "$out/$t.build.log" >&2
        return 2
    fi
}

build_proxy() {
    echo "building tollgate with AddressSanitizer (.build-asan)" >&2
    if ! nice -n "$nice_level" swift build --scratch-path .build-asan -Xswiftc -sanitize=address \
            > "$out/proxy.build.log" 2>&1; then
        tail -30 "$out/proxy.build.log" >&2
        return 2
    fi
}

count_artifacts() { find "$1" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) 2>/dev/null | wc -l; }

results=()
status=0
record() { results+=("$(printf '%-11s %12s %8s %8s' "$1" "$2" "$3" "$4")"); }

run_libfuzzer() {
    local t="$1" crashes="Fuzz/crashes/$1" work="$out/corpus/$1" log="$out/$1.log"
    mkdir -p "$crashes" "$work"
    local before after start end execs
    before=$(count_artifacts "$crashes")
    start=$(date +%s)
    echo "fuzzing $t for ${duration}s (seed $seed)" >&2
    # New units go to the first directory (.build-fuzz, not committed); Fuzz/corpus/<t> is
    # the committed seed corpus. Swift's backtracer is off: libFuzzer/ASan report instead.
    SWIFT_BACKTRACE=enable=no ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:symbolize=1}" \
        timeout --kill-after=30 $((duration + 300)) nice -n "$nice_level" "$out/$t" "$work" "Fuzz/corpus/$t" \
        -dict="$(dict_of "$t")" -max_len="$(max_len_of "$t")" -max_total_time="$duration" -timeout=10 \
        -rss_limit_mb=2048 -seed="$seed" -artifact_prefix="$crashes/" -print_final_stats=1 > "$log" 2>&1
    local rc=$?
    end=$(date +%s)
    execs=$(grep -a 'stat::number_of_executed_units' "$log" | tail -1 | awk '{print $2}')
    [[ -n "$execs" ]] || execs=$(grep -ao '^#[0-9]*' "$log" | tail -1 | tr -d '#')
    after=$(count_artifacts "$crashes")
    local found=$((after - before))
    if ((rc != 0 && found == 0)); then found=1; fi
    record "$t" "${execs:-?}" "$((end - start))" "$found"
    if ((found > 0)); then
        status=1
        local artifact
        artifact=$(grep -ao "Test unit written to [^ ]*" "$log" | tail -1 | sed 's/Test unit written to //')
        echo "== $t: CRASH (exit $rc), log $log" >&2
        grep -a -m3 -e 'FUZZ INVARIANT VIOLATED' -e 'ERROR: AddressSanitizer' -e 'Fatal error' -e 'ERROR: libFuzzer' "$log" >&2
        grep -a -A12 -m1 -e '==ERROR' -e 'deadly signal' "$log" | grep -a ' in ' | head -8 >&2
        if [[ -n "$artifact" ]]; then
            cp "$log" "$artifact.log"
            echo "   input: $artifact    reproduce: $out/$t $artifact" >&2
        fi
    fi
}

run_proxy() {
    local log="$out/proxy.log" start end line execs found
    start=$(date +%s)
    echo "fuzzing proxy for ${duration}s (seed $seed)" >&2
    timeout --kill-after=30 $((duration + 300)) nice -n "$nice_level" python3 Fuzz/blackbox/proxy_fuzz.py \
        --binary .build-asan/debug/tollgate --duration "$duration" --seed "$seed" 2>&1 | tee "$log" | grep -a 'crash\|saved' >&2
    end=$(date +%s)
    line=$(grep -a '^proxy: executions=' "$log" | tail -1)
    execs=$(sed -n 's/.*executions=\([0-9]*\).*/\1/p' <<< "$line")
    found=$(sed -n 's/.*crashes=\([0-9]*\).*/\1/p' <<< "$line")
    if [[ -z "$line" ]]; then found=1; echo "== proxy: the fuzzer did not finish; see $log" >&2; tail -5 "$log" >&2; fi
    record proxy "${execs:-?}" "$((end - start))" "${found:-?}"
    if [[ "${found:-1}" != 0 ]]; then status=1; fi
}

# h2, tls, credits: the black-box HTTP/2, TLS and metered-path fuzzers (Fuzz/blackbox/h2_fuzz.py,
# tls_fuzz.py, credits_fuzz.py) on the same ASan binary; they need python's h2/hpack packages,
# hence their own interpreter. Violations (credits: framing, content, balance oracles) count.
run_blackbox() {
    local t="$1" script="$2" log="$out/$1.log" start end line execs crashes hangs violations found
    local py="${FUZZ_PYTHON:-/usr/bin/python3}"
    if ! "$py" -c 'import h2, hpack' 2>/dev/null; then
        echo "== $t: $py has no h2/hpack (set FUZZ_PYTHON)" >&2
        record "$t" "?" 0 "?"; status=1; return
    fi
    start=$(date +%s)
    echo "fuzzing $t for ${duration}s (seed $seed)" >&2
    # The proxy the script starts inherits the nice level.
    timeout --kill-after=30 $((duration + 600)) nice -n "$nice_level" "$py" "$script" \
        --binary .build-asan/debug/tollgate --duration "$duration" --seed "$seed" 2>&1 | tee "$log" \
        | grep -a 'crash\|hang\|saved\|still open\|violation' >&2
    end=$(date +%s)
    line=$(grep -a "^$t: executions=" "$log" | tail -1)
    execs=$(sed -n 's/.*executions=\([0-9]*\).*/\1/p' <<< "$line")
    crashes=$(sed -n 's/.*crashes=\([0-9]*\).*/\1/p' <<< "$line")
    hangs=$(sed -n 's/.*hangs=\([0-9]*\).*/\1/p' <<< "$line")
    violations=$(sed -n 's/.*violations=\([0-9]*\).*/\1/p' <<< "$line")
    found=$(( ${crashes:-0} + ${hangs:-0} + ${violations:-0} ))
    if [[ -z "$line" ]]; then found=1; echo "== $t: the fuzzer did not finish; see $log" >&2; tail -5 "$log" >&2; fi
    record "$t" "${execs:-?}" "$((end - start))" "$found"
    if ((found != 0)); then status=1; fi
}

proxy_built=0
for t in "${targets[@]}"; do
    case "$t" in
        proxy|h2|tls|credits)
            if ((proxy_built == 0)); then build_proxy || exit 2; proxy_built=1; fi ;;
        *) build_libfuzzer "$t" || exit 2 ;;
    esac
done
((build_only)) && exit 0

for t in "${targets[@]}"; do
    case "$t" in
        proxy) run_proxy ;;
        h2) run_blackbox h2 Fuzz/blackbox/h2_fuzz.py ;;
        tls) run_blackbox tls Fuzz/blackbox/tls_fuzz.py ;;
        credits) run_blackbox credits Fuzz/blackbox/credits_fuzz.py ;;
        *) run_libfuzzer "$t" ;;
    esac
done

printf '%-11s %12s %8s %8s\n' target executions seconds crashes
printf '%s\n' "${results[@]}"
exit $status
