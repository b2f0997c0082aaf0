#!/usr/bin/env bash
# Benchmarks with ../shared/bench (see its README for the apt packages it needs).
#   scripts/bench.sh [peers]    nginx, haproxy and tollgate: plain, auth, ratelimit, one run
#   scripts/bench.sh redis      tollgate embedded vs tollgate on Redis: auth, ratelimit, one run
#   scripts/bench.sh accesslog  nginx and tollgate, both with an access log to a file, one run
#   scripts/bench.sh usage      tollgate without and with usage records (spool + file sink), one run
#   scripts/bench.sh credits    tollgate without and with a per-request price (local ledger; the
#                               redis ledger with TOLLGATE_BENCH_REDIS=redis://127.0.0.1:PORT/0)
# Further arguments go to run.sh (e.g. --duration 5 --rounds 1).
# Builds a release binary and strips its debug info (valgrind 3.19 cannot read Swift 6.3's DWARF).
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH_DIR:-../shared/bench}
swift build -c release 2>&1 | tail -1
BIN=$(mktemp /tmp/tollgate-bench.XXXXXX)
strip --strip-debug -o "$BIN" .build/release/tollgate
export TOLLGATE_BIN=$BIN
MODE=peers
case ${1:-} in peers|redis|accesslog|usage|credits) MODE=$1; shift ;; esac
if [[ $MODE == usage ]]; then
    # The stock adapter with a `usage:` block (spool and a file sink in the run's work
    # directory), beside the stock tollgate: the same variants in one run.
    WRAP=$(mktemp /tmp/tollgate-usage-peer.XXXXXX)
    cat >"$WRAP" <<'EOS'
#!/usr/bin/env bash
source "$BENCH_DIR/peers/tollgate.sh"
tollgate_setup "$BENCH_VARIANT" "$BENCH_LISTEN_PORT" "$BENCH_WORKDIR"
printf 'usage:\n  spool: %s/usage-spool\n  sinks:\n    - {kind: file, path: %s/usage.jsonl}\n' \
    "$BENCH_WORKDIR" "$BENCH_WORKDIR" >>"$BENCH_WORKDIR/policies/gateway.yaml"
exec "${PEER_ARGV[@]}"
EOS
    chmod +x "$WRAP"
    exec "$BENCH/run.sh" --only tollgate --variants plain,auth \
        --proxy-name tollgate_usage --proxy-variants plain,auth --proxy-port 17960 \
        --proxy-cmd "export TOLLGATE_BIN=$BIN; exec $WRAP" "$@"
fi
if [[ $MODE == credits ]]; then
    # The stock adapter's `auth` and `ratelimit` variants with a per-request price on the
    # route (`credits: {per_request: 1}`), beside the stock tollgate, in one run. Every one of
    # the bench's 10,000 keys is its own consumer: each gets 10^12 credits before the start
    # (journal lines for the local ledger; the script's own keys with TOLLGATE_BENCH_REDIS,
    # which selects the redis ledger).
    WRAP=$(mktemp /tmp/tollgate-credits-peer.XXXXXX)
    cat >"$WRAP" <<'EOS'
#!/usr/bin/env bash
source "$BENCH_DIR/peers/tollgate.sh"
tollgate_setup "$BENCH_VARIANT" "$BENCH_LISTEN_PORT" "$BENCH_WORKDIR"
P=$BENCH_WORKDIR/policies/gateway.yaml
python3 - "$P" "$BENCH_KEYS_TSV" "$BENCH_WORKDIR/credits-$BENCH_VARIANT" "${TOLLGATE_BENCH_REDIS:-}" <<'PY'
import hashlib, json, os, subprocess, sys
policy, keys, state, redis = sys.argv[1:5]
s = open(policy).read()
s = s.replace("    backend: upstream\n", "    backend: upstream\n    credits: {per_request: 1}\n", 1)
ledger = "redis" if redis else "local"
s += "credits: {ledger: %s, path: %s}\n" % (ledger, state)
open(policy, "w").write(s)
accounts = [l.split("\t")[0] for l in open(keys) if l.strip()]
if redis:
    port = redis.rsplit(":", 1)[1].split("/")[0]
    cmds = "".join("HSET tg:cr:{%s} balance 1000000000000 held 0\n" % hashlib.sha256(a.encode()).hexdigest()[:32] for a in accounts)
    subprocess.run(["redis-cli", "-p", port], input=cmds.encode(), stdout=subprocess.DEVNULL, check=True)
else:
    os.makedirs(state, exist_ok=True)
    with open(state + "/credits.journal", "w") as f:
        for i, a in enumerate(accounts):
            f.write(json.dumps({"op": "grant", "id": "g-bench-%d" % i, "account": a, "amount": 10**12, "by": "bench"}) + "\n")
PY
exec "${PEER_ARGV[@]}"
EOS
    chmod +x "$WRAP"
    exec "$BENCH/run.sh" --only tollgate --variants auth,ratelimit \
        --proxy-name tollgate_credits --proxy-variants auth,ratelimit --proxy-port 17980 \
        --proxy-cmd "export TOLLGATE_BIN=$BIN; exec $WRAP" "$@"
fi
if [[ $MODE == accesslog ]]; then
    # nginx and tollgate, each with its access log on (a file in the run's work directory,
    # one line per request with the same fields), in one run: a copy of the harness whose
    # two adapters get the log lines added.
    COPY=$(mktemp -d /tmp/tollgate-bench-alog.XXXXXX)
    cp -r "$BENCH"/. "$COPY"/
    python3 - "$COPY" <<'PY'
import sys
d = sys.argv[1]
p = d + "/peers/nginx.sh"
s = open(p).read()
fmt = ("    log_format tg escape=json '{\"time\":\"\\$time_iso8601\",\"request_id\":\"\\$request_id\","
       "\"client\":\"\\$remote_addr\",\"method\":\"\\$request_method\",\"path\":\"\\$uri\","
       "\"status\":\\$status,\"bytes_in\":\\$request_length,\"bytes_out\":\\$bytes_sent,"
       "\"duration\":\\$request_time,\"upstream\":\"\\$upstream_addr\"}';\n"
       "    access_log $dir/access.log tg;")
s = s.replace("    access_log off;", fmt, 1)
open(p, "w").write(s)
p = d + "/peers/tollgate.sh"
s = open(p).read()
s = s.replace('        echo "backends:"', '        echo "access_log: {path: $dir/access.jsonl}"\n        echo "backends:"', 1)
open(p, "w").write(s)
PY
    exec "$COPY/run.sh" --only nginx,tollgate "$@"
fi
if [[ $MODE != redis ]]; then
    exec "$BENCH/run.sh" --only nginx,haproxy,tollgate "$@"
fi

# A redis-server of our own on a free loopback port, stopped by PID when we exit.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
REDIS_PID=$!
trap 'kill $REDIS_PID 2>/dev/null || true' EXIT
for _ in $(seq 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
WRAP=$(mktemp /tmp/tollgate-redis-peer.XXXXXX)
cat >"$WRAP" <<EOS
#!/usr/bin/env bash
# The stock adapter with a store block (TOLLGATE_BENCH_REDIS), for --proxy-cmd.
source "\$BENCH_DIR/peers/tollgate.sh"
tollgate_setup "\$BENCH_VARIANT" "\$BENCH_LISTEN_PORT" "\$BENCH_WORKDIR"
exec "\${PEER_ARGV[@]}"
EOS
chmod +x "$WRAP"
"$BENCH/run.sh" --only tollgate --variants auth,ratelimit \
    --proxy-name tollgate_redis --proxy-variants auth,ratelimit --proxy-port 17950 \
    --proxy-cmd "export TOLLGATE_BENCH_REDIS=redis://127.0.0.1:$PORT/0 TOLLGATE_BIN=$BIN; exec $WRAP" "$@"
