#!/usr/bin/env bash
# Benchmarks with ../shared/bench (see its README for the apt packages it needs).
#   scripts/bench.sh [peers]    nginx, haproxy and tollgate: plain, auth, ratelimit, one run
#   scripts/bench.sh redis      tollgate embedded vs tollgate on Redis: auth, ratelimit, one run
#   scripts/bench.sh accesslog  nginx and tollgate, both with an access log to a file, one run
#   scripts/bench.sh usage      tollgate without and with usage records (spool + file sink), one run
#   scripts/bench.sh credits    tollgate without and with a per-request price (local ledger; the
#                               redis ledger with TOLLGATE_BENCH_REDIS=redis://127.0.0.1:PORT/0)
#   scripts/bench.sh jwt        tollgate with API keys vs JWTs (HS256, ES256; a few tokens reused,
#                               or a token the process never saw on every request), one run
#   scripts/bench.sh lockout    refused requests: a flood of unknown keys from one address without
#                               `security.lockout`, with it counting (never reached), and locked out
# Further arguments go to run.sh (e.g. --duration 5 --rounds 1).
# Builds a release binary and strips its debug info (valgrind 3.19 cannot read Swift 6.3's DWARF).
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH_DIR:-../shared/bench}
swift build -c release 2>&1 | tail -1
BIN=$(mktemp /tmp/tollgate-bench.XXXXXX)
strip --strip-debug -o "$BIN" .build/release/tollgate
export TOLLGATE_BIN=$BIN
# client_keys_harness TAG: a copy of the harness whose wrk client sends a line "Bearer T" as
# `Authorization: Bearer T`, reads the keys of a variant from $BENCH_CLIENT_KEYS_DIR/<variant>.txt
# when that file exists, and carries its place in such a file from one wrk run to the next.
# Prints the copy's directory.
client_keys_harness() {
    local COPY
    COPY=$(mktemp -d /tmp/tollgate-bench-$1.XXXXXX)
    cp -r "$BENCH"/. "$COPY"/
    python3 - "$COPY" <<'PY'
import sys
d = sys.argv[1]
p = d + "/lib/wrk_rotate.lua"
s = open(p).read()
old = '    local headers = { ["X-API-Key"] = key }'
assert old in s
s = s.replace(old, '    local headers\n'
              '    if key:sub(1, 7) == "Bearer " then headers = { ["Authorization"] = key } else headers = { ["X-API-Key"] = key } end')
old = '  stop_after = tonumber(args[2] or "0")'
assert old in s
s = s.replace(old, old + '\n'
              '  -- Token files: go on from where the last run of this file stopped.\n'
              '  local own = os.getenv("BENCH_CLIENT_KEYS_DIR")\n'
              '  if own and args[1]:find(own, 1, true) then\n'
              '    pos_file = args[1] .. ".pos"\n'
              '    local f = io.open(pos_file)\n'
              '    if f then next_index = (tonumber(f:read("*l")) or 0) % #requests; f:close() end\n'
              '  end')
old = '  if responses >= stop_after then'
assert old in s
s = s.replace(old, old + '\n'
              '    if pos_file then local f = io.open(pos_file, "w"); if f then f:write(tostring(next_index)); f:close() end end')
open(p, "w").write(s)
p = d + "/run.sh"
s = open(p).read()
old = '                        -- "$BENCH_KEYS_FILE")'
assert s.count(old) == 1
s = s.replace(old, '                        -- "$(client_keys_for "$variant")")')
old = "client_cmd() {"
assert s.count(old) == 1
s = s.replace(old, '# client_keys_for VARIANT: the variant\'s own client file (tokens), else the keys.\n'
              'client_keys_for() {\n'
              '    if [[ -n ${BENCH_CLIENT_KEYS_DIR:-} && -f $BENCH_CLIENT_KEYS_DIR/$1.txt ]]; then\n'
              '        echo "$BENCH_CLIENT_KEYS_DIR/$1.txt"\n'
              '    else\n'
              '        echo "$BENCH_KEYS_FILE"\n'
              '    fi\n'
              '}\n\n' + old)
open(p, "w").write(s)
PY
    echo "$COPY"
}
MODE=peers
case ${1:-} in peers|redis|accesslog|usage|credits|jwt|lockout) MODE=$1; shift ;; esac
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
if [[ $MODE == lockout ]]; then
    # The cost of a refused request: every request of the flood carries an unknown key
    # (45,000 random keys, none repeated in the instruction window; embedded store). Variants
    # of the stock `auth` policy, beside the stock auth variant with valid keys:
    #   invalid-off      no security block: 401 INVALID_KEY after a SHA-256 and a lookup;
    #   invalid-counted  lockout {invalid_keys: 1000000, per: 1h}: each refusal also counted
    #                    for its address (never reached in a run);
    #   invalid-locked   lockout {invalid_keys: 20, per: 1m, for: 1h}: after 20 refusals every
    #                    request is 429 LOCKED_OUT before the key is read.
    COPY=$(client_keys_harness lockout)
    KEYS=$COPY/keys-invalid
    mkdir -p "$KEYS"
    python3 - "$KEYS" <<'PY'
import os, secrets, sys
d = sys.argv[1]
for v in ("invalid-off", "invalid-counted", "invalid-locked"):
    with open(os.path.join(d, v + ".txt"), "w") as f:
        for _ in range(45000):
            f.write("unknown-" + secrets.token_hex(16) + "\n")
PY
    WRAP=$(mktemp /tmp/tollgate-lockout-peer.XXXXXX)
    cat >"$WRAP" <<'EOS'
#!/usr/bin/env bash
source "$BENCH_DIR/peers/tollgate.sh"
tollgate_setup auth "$BENCH_LISTEN_PORT" "$BENCH_WORKDIR"
case $BENCH_VARIANT in
    invalid-counted) printf 'security:\n  lockout: {invalid_keys: 1000000, per: 1h, for: 1m}\n' >>"$BENCH_WORKDIR/policies/gateway.yaml" ;;
    invalid-locked) printf 'security:\n  lockout: {invalid_keys: 20, per: 1m, for: 1h}\n' >>"$BENCH_WORKDIR/policies/gateway.yaml" ;;
esac
exec "${PEER_ARGV[@]}"
EOS
    chmod +x "$WRAP"
    export BENCH_CLIENT_KEYS_DIR=$KEYS
    exec "$COPY/run.sh" --only tollgate --variants auth \
        --proxy-name tollgate_lockout --proxy-variants invalid-off,invalid-counted,invalid-locked --proxy-port 17970 \
        --proxy-cmd "export TOLLGATE_BIN=$BIN; exec $WRAP" "$@"
fi
if [[ $MODE == jwt ]]; then
    # API keys (the stock `auth` variant: 10,000 keys rotated) beside JWTs in one run. The
    # shared harness sends keys in X-API-Key only, so it runs from a copy in which the wrk
    # client sends a line "Bearer T" as `Authorization: Bearer T`, reads the tokens of a
    # variant from $BENCH_CLIENT_KEYS_DIR/<variant>.txt, and carries its place in a token
    # file from one wrk run to the next (the warm-up and the measured window see different
    # tokens). The JWT variants are the `auth` policy plus credentials.jwt (HS256 with a
    # secret, ES256 with a P-256 key), the route taking both credentials; the harness's
    # checks still use an API key. Tokens (valid 3 h):
    #   *-cached  16 tokens of 16 consumers, reused: after the first few requests every one
    #             is a per-loop cache hit;
    #   *-fresh   45,000 distinct tokens of 10,000 consumers: in the instruction window
    #             (1,000 warm-up + 20,000 requests, one process) no token comes twice, so
    #             each is verified (base64url, JSON, signature); a consumer's identity record
    #             is shared by its tokens. The throughput rounds wrap around the file (10 s
    #             is more than 45,000 requests): their req/s are not "fresh" figures.
    COPY=$(client_keys_harness jwt)
    TOKENS=$COPY/tokens
    mkdir -p "$TOKENS"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TOKENS/ec.pem" 2>/dev/null
    openssl pkey -in "$TOKENS/ec.pem" -pubout -out "$TOKENS/ec.pub.pem"
    SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
    python3 - "$TOKENS" "$SECRET" <<'PY'
import base64, hashlib, hmac, json, os, subprocess, sys, time
d, secret = sys.argv[1], sys.argv[2].encode()
exp = int(time.time()) + 3 * 3600
def b64(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
def claims(consumer, n):
    return {"sub": consumer, "scope": "bench", "iat": int(time.time()), "exp": exp, "jti": "t%d" % n}
def hs(c):
    inp = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(c, separators=(",", ":")).encode())
    return inp + "." + b64(hmac.new(secret, inp.encode(), hashlib.sha256).digest())
try:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, utils
    key = serialization.load_pem_private_key(open(d + "/ec.pem", "rb").read(), None)
    def es_sign(data):
        r, s = utils.decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
except ImportError:
    def es_sign(data):
        # The openssl CLI (slow: a process per token); DER ECDSA-Sig-Value -> R || S.
        der = subprocess.run(["openssl", "dgst", "-sha256", "-sign", d + "/ec.pem"], input=data,
                             capture_output=True, check=True).stdout
        def integer(b, i):
            n = b[i + 1]
            return int.from_bytes(b[i + 2:i + 2 + n], "big"), i + 2 + n
        r, i = integer(der, 2)
        s, _ = integer(der, i)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
def es(c):
    inp = b64(b'{"alg":"ES256","typ":"JWT"}') + "." + b64(json.dumps(c, separators=(",", ":")).encode())
    return inp + "." + b64(es_sign(inp.encode()))
for name, sign, count, consumers in (("hs256-cached", hs, 16, 16), ("hs256-fresh", hs, 45000, 10000),
                                     ("es256-cached", es, 16, 16), ("es256-fresh", es, 45000, 10000)):
    with open(os.path.join(d, name + ".txt"), "w") as f:
        for n in range(count):
            f.write("Bearer " + sign(claims("c%05d" % (n % consumers), n)) + "\n")
PY
    WRAP=$(mktemp /tmp/tollgate-jwt-peer.XXXXXX)
    cat >"$WRAP" <<EOS
#!/usr/bin/env bash
# The stock adapter's auth variant plus credentials.jwt (HS256 and ES256); the route takes both.
source "\$BENCH_DIR/peers/tollgate.sh"
tollgate_setup auth "\$BENCH_LISTEN_PORT" "\$BENCH_WORKDIR"
printf 'credentials:\n  api_key: {headers: [X-API-Key]}\n  jwt:\n    algorithms: [HS256, ES256]\n    secret_env: TOLLGATE_BENCH_JWT_SECRET\n    keys_file: %s\n' \
    "$TOKENS/ec.pub.pem" >>"\$BENCH_WORKDIR/policies/gateway.yaml"
export TOLLGATE_BENCH_JWT_SECRET=$SECRET
exec "\${PEER_ARGV[@]}"
EOS
    chmod +x "$WRAP"
    export BENCH_CLIENT_KEYS_DIR=$TOKENS
    exec "$COPY/run.sh" --only tollgate --variants auth \
        --proxy-name tollgate_jwt --proxy-variants hs256-cached,hs256-fresh,es256-cached,es256-fresh --proxy-port 17990 \
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
