#!/usr/bin/env bash
# The demo: reference backends + Tollgate on policies/ (embedded store, no Redis), a freshly
# minted key, and requests that show what gets through and what does not.
# Stops everything it started (by PID) on exit or Ctrl-C. DEMO_KEEP=0 exits after the tour.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
echo "== building (debug) …"
swift build 2>&1 | tail -1
BIN=$PWD/.build/debug/tollgate
DATA=$PWD/demo-data
mkdir -p "$DATA"
export TOLLGATE_STATE_DIR=$DATA/state          # where `keys new` records minted keys
unset FLOWISE_API_KEY      # upstream credential injection is not built yet: the demo chat backend runs open

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
    rm -f policies/90-demo-webhooks.yaml
}
trap cleanup EXIT INT TERM

for port in 7001 7002 7003 8080 9901 9000; do
    if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then echo "port $port is busy: stop what uses it first"; exit 1; fi
done

# The admin API's bootstrap token: only its hash is in the file the policy names.
ADMIN_TOKEN=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
printf 'sha256:%s\n' "$(printf %s "$ADMIN_TOKEN" | sha256sum | cut -d' ' -f1)" >"$DATA/admin-tokens"

# Webhooks (security.webhooks, in a file of their own so the committed policy needs no
# secret): a Standard Webhooks secret in demo-data/, a receiver on :9000 that keeps each
# delivery (head and body) in demo-data/webhooks/.
printf 'whsec_%s\n' "$(head -c 24 /dev/urandom | base64)" >"$DATA/webhook-secret"
chmod 600 "$DATA/webhook-secret"
cat >policies/90-demo-webhooks.yaml <<'EOY'
# Written by scripts/demo.sh while it runs (and removed when it stops).
version: 1
security:
  webhooks:
    - {url: "http://127.0.0.1:9000/hooks", secret_file: ../demo-data/webhook-secret,
       events: [lockout, auto_disable, credits_exhausted, key_rotated, key_revoked]}
  webhook_spool: ../demo-data/webhook-spool
EOY
rm -rf "$DATA/webhooks"; mkdir -p "$DATA/webhooks"
python3 - "$DATA/webhooks" <<'PY' >"$DATA/webhooks.log" 2>&1 & pids+=($!)
import http.server, os, sys
out = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        n = len(os.listdir(out)) // 2 + 1
        open(os.path.join(out, "%03d.head" % n), "w").write(str(self.headers))
        open(os.path.join(out, "%03d.body" % n), "wb").write(body)
        self.send_response(204); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", 9000), H).serve_forever()
PY
"$BIN" backends --data "$DATA/backends" >"$DATA/backends.log" 2>&1 & pids+=($!)
"$BIN" serve --policies policies --threads 2 >"$DATA/tollgate.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:8080/health && break; sleep 0.1; done

echo "== minting a demo key (printed once; only its hash is stored)"
out=$("$BIN" keys new --policies policies --consumer demo --scopes finance:read,finance:write,chat,credits --plan free)
echo "$out"
KEY=$(sed -n 's/^key: //p' <<<"$out")
ID=$(sed -n 's/^id: //p' <<<"$out")
sleep 0.3   # the running proxy picks the new key up from the store (inotify)

show() {   # show "what" curl-args…
    local what=$1; shift
    printf '\n$ curl %s\n' "$*"
    curl -s -i "$@" | grep -iE '^HTTP/|^ratelimit|^retry-after|^www-auth|^\{|^x-tollgate-degraded' | sed 's/^/  /'
    printf '  ^ %s\n' "$what"
}
H="X-API-Key: $KEY"
U=http://127.0.0.1:8080
show "public route, no key needed"                      $U/health
show "allowed: the finance backend answers"             -H "$H" $U/api/finance/accounts
show "what the backend saw (identity, no key)"          -H "$H" $U/api/finance/whoami
show "Bearer works too"                                 -H "Authorization: Bearer $KEY" $U/api/credits/total-balance
show "MISSING_CREDENTIAL"                               $U/api/finance/accounts
show "INVALID_KEY (unknown key)"                        -H "X-API-Key: not-a-key" $U/api/finance/accounts
show "INVALID_KEY (tg_ format, bad checksum: no lookup)" -H "X-API-Key: ${KEY%?}x" $U/api/finance/accounts
show "INSUFFICIENT_SCOPE (admin)"                       -H "$H" $U/admin/stats
show "HTTPS_REQUIRED (writes need TLS or a trusted X-Forwarded-Proto)" -H "$H" -X POST $U/api/finance/accounts
show "X-Forwarded-Proto from an untrusted client does not count" -H "$H" -H "X-Forwarded-Proto: https" -X POST $U/api/finance/accounts
show "NO_ROUTE"                                         -H "$H" $U/nowhere
show "BAD_REQUEST (path escaping the root)"             --path-as-is -H "$H" "$U/../admin/x"
echo
echo "\$ for i in 1..8: curl -H '$H' $U/api/finance/accounts   (plan free: 5/s)"
for i in $(seq 8); do curl -s -o /dev/null -w '%{http_code} ' -H "$H" $U/api/finance/accounts; done
echo "  ^ RATE_LIMITED after the burst"
sleep 1.1
echo
echo "== credits: the chat route costs 1 per request + 1 per answer token (policies/00-gateway.yaml)"
CHAT=$U/api/v1/prediction/8c1f3e52-3c4b-4d2a-9a57-0d5f2b7c6a11
show "INSUFFICIENT_CREDITS (the demo consumer has none yet)" -H "$H" -d '{"question":"hi","streaming":true}' $CHAT
echo
echo "\$ tollgate credits grant demo 25 --policies policies"
"$BIN" credits grant demo 25 --policies policies | sed 's/^/  /'
sleep 0.3   # the running proxy reads the ledger's journal every 200 ms
printf '\n$ curl -N -H "%s" -d {"question":"What does Tollgate do?","streaming":true,"answerTokens":60} %s\n' "$H" "$CHAT"
curl -s -N -H "$H" -H 'Content-Type: application/json' -d '{"question":"What does Tollgate do?","streaming":true,"answerTokens":60}' \
    "$CHAT" | grep -v '^$' | grep -v '^message:' | sed 's/^/  /' | sed -n '1,4p;$p' || true
echo "  ^ Flowise SSE events relayed one by one, counted as they pass; 25 credits buy 24 tokens"
echo "    (+1 event of overshoot), then the stream ends with Flowise's own error event"
echo
echo "\$ tollgate credits balance demo --policies policies"
"$BIN" credits balance demo --policies policies | sed 's/^/  /'
echo
echo "== HTTP/2 with prior knowledge (h2c) on the same listener: the same pipeline, the same answers"
show2() {   # show2 "what" curl-args…
    local what=$1; shift
    printf '\n$ curl --http2-prior-knowledge %s\n' "$*"
    curl -s -i --http2-prior-knowledge "$@" | grep -iE '^HTTP/|^ratelimit:|^www-auth|^\{' | sed 's/^/  /'
    printf '  ^ %s\n' "$what"
}
show2 "allowed over HTTP/2"                             -H "$H" $U/api/finance/accounts
show2 "MISSING_CREDENTIAL over HTTP/2: the same status, body and headers"  $U/api/finance/accounts
if command -v h2load >/dev/null; then
    printf '\n$ h2load -n 200 -c 2 -m 10 %s/health\n' "$U"
    h2load -n 200 -c 2 -m 10 "$U/health" 2>&1 | grep -E '^requests:|^status codes:' | sed 's/^/  /'
    echo "  ^ 2 connections, 10 concurrent streams each"
fi
"$BIN" keys revoke "$ID" --policies policies >/dev/null
sleep 0.3
show "REVOKED (tollgate keys revoke $ID)"               -H "$H" $U/api/finance/accounts

echo
echo '$ curl -s http://127.0.0.1:9901/metrics | grep tollgate_requests_total   (admin listener)'
curl -s http://127.0.0.1:9901/metrics | grep '^tollgate_requests_total' | sed 's/^/  /'
echo "  ^ every answered request counted once, by route and decision code"
sleep 0.2   # the access log is written in batches (every 100 ms)
echo
echo '$ tail -2 demo-data/access.jsonl'
tail -2 "$DATA/access.jsonl" | sed 's/^/  /'
echo "  ^ one JSON line per answered request: key id and consumer, never the key"

echo
echo '$ tail -1 demo-data/usage.jsonl'
tail -1 "$DATA/usage.jsonl" | sed 's/^/  /'
echo "  ^ the usage record of the same request: spooled first, then delivered to the file sink"
echo
echo '$ grep '"'"'"route":"chat"'"'"' demo-data/usage.jsonl | tail -1'
grep '"route":"chat"' "$DATA/usage.jsonl" | tail -1 | sed 's/^/  /'
echo "  ^ the streamed chat: what it was charged (credits) and the tokens it was charged for"
echo
printf '$ curl -s -H "Authorization: Bearer $ADMIN_TOKEN" "http://127.0.0.1:9901/v1/usage?key_id=%s&by=hour"\n' "$ID"
curl -s -H "Authorization: Bearer $ADMIN_TOKEN" "http://127.0.0.1:9901/v1/usage?key_id=$ID&by=hour" | sed 's/^/  /'
echo
echo "  ^ per-key usage, aggregated as records pass (admin listener)"
echo
echo "== the key API (admin listener, docs/openapi.yaml): mint, rotate with an overlap"
A="Authorization: Bearer $ADMIN_TOKEN"
printf '\n$ curl -X POST -H "%s" -d {"consumer":"api-demo","scopes":["finance:read"]} http://127.0.0.1:9901/v1/keys\n' "Authorization: Bearer …"
NEW=$(curl -s -X POST -H "$A" -d '{"consumer":"api-demo","scopes":["finance:read"]}' http://127.0.0.1:9901/v1/keys)
echo "$NEW" | sed 's/"key":"[^"]*"/"key":"tg_…(shown once)"/; s/^/  /'
NKEY=$(sed -n 's/.*"key":"\([^"]*\)".*/\1/p' <<<"$NEW"); NID=$(sed -n 's/.*"id":"\([^"]*\)".*/\1/p' <<<"$NEW")
sleep 0.3
show "the new key works" -H "X-API-Key: $NKEY" $U/api/finance/accounts
printf '\n$ curl -X POST -H "Idempotency-Key: demo-rotation" -d {"overlap":"2s"} .../v1/keys/%s/rotate   (twice)\n' "$NID"
ROT=$(curl -s -X POST -H "$A" -H "Idempotency-Key: demo-rotation" -d '{"overlap":"2s"}' "http://127.0.0.1:9901/v1/keys/$NID/rotate")
curl -s -o /dev/null -w '  retried: %{http_code} (same id, no key)\n' -X POST -H "$A" -H "Idempotency-Key: demo-rotation" -d '{"overlap":"2s"}' "http://127.0.0.1:9901/v1/keys/$NID/rotate"
RKEY=$(sed -n 's/.*"key":"\([^"]*\)".*/\1/p' <<<"$ROT")
echo "$ROT" | grep -o '"id":"[^"]*"\|"old_key_expires":"[^"]*"\|"replaces":"[^"]*"' | sed 's/^/  /'
sleep 0.3
printf '  during the overlap: old %s, new %s\n' "$(curl -s -o /dev/null -w '%{http_code}' -H "X-API-Key: $NKEY" $U/api/finance/accounts)" \
    "$(curl -s -o /dev/null -w '%{http_code}' -H "X-API-Key: $RKEY" $U/api/finance/accounts)"
sleep 2.2
show "after the overlap: REVOKED, saying it was rotated" -H "X-API-Key: $NKEY" $U/api/finance/accounts

echo
echo "== security: a client guessing keys is locked out (security.lockout: 10 guesses a minute, 1 min ban)"
echo "\$ for i in 1..12: curl -H 'X-API-Key: guess-\$i' $U/api/finance/accounts"
for i in $(seq 12); do curl -s -o /dev/null -w '%{http_code} ' -H "X-API-Key: guess-$i" $U/api/finance/accounts; done
echo
echo "  ^ 401 INVALID_KEY for the first guesses (the demo's own refusals above count too), then 429"
show "LOCKED_OUT: any credential from that address, decided before the key is even read" -H "X-API-Key: $RKEY" $U/api/finance/accounts
show "public routes stay open" $U/health
for _ in $(seq 100); do ls "$DATA"/webhooks/*.body >/dev/null 2>&1 && grep -l '"lockout"' "$DATA"/webhooks/*.body >/dev/null 2>&1 && break; sleep 0.1; done
HOOK=$(grep -l '"type":"lockout"' "$DATA"/webhooks/*.body 2>/dev/null | tail -1 || true)
if [[ -n $HOOK ]]; then
    echo
    echo "\$ cat ${HOOK#$PWD/}      (what the webhook receiver on :9000 got)"
    grep -i '^webhook-' "${HOOK%.body}.head" | sed 's/^/  /'
    sed 's/^/  /' "$HOOK"; echo
    echo "\$ tollgate webhooks verify --secret-file demo-data/webhook-secret --headers ${HOOK%.body}.head --body ${HOOK#$PWD/}"
    "$BIN" webhooks verify --secret-file "$DATA/webhook-secret" --headers "${HOOK%.body}.head" --body "$HOOK" 2>&1 | sed 's/^/  /'
    echo "  ^ Standard Webhooks: HMAC-SHA256 of id.timestamp.body; retried with back-off, spooled, dead-lettered"
fi
echo
echo '$ TOLLGATE_ADMIN_TOKEN=… tollgate security bans --policies policies'
TOLLGATE_ADMIN_TOKEN=$ADMIN_TOKEN "$BIN" security bans --policies policies 2>&1 | sed 's/^/  /'
echo '$ TOLLGATE_ADMIN_TOKEN=… tollgate security unban 127.0.0.1 --policies policies'
TOLLGATE_ADMIN_TOKEN=$ADMIN_TOKEN "$BIN" security unban 127.0.0.1 --policies policies 2>&1 | sed 's/^/  /'
printf '  ^ an operator lifts it (audited); the rotated key from this address: %s\n' \
    "$(curl -s -o /dev/null -w '%{http_code}' -H "X-API-Key: $RKEY" $U/api/finance/accounts)"
echo
echo "\$ for i in 1..21: curl -H 'X-API-Key: <api-demo key>' $U/admin/stats   (a key probing routes it may not use)"
for i in $(seq 21); do curl -s -o /dev/null -w '%{http_code} ' -H "X-API-Key: $RKEY" $U/admin/stats; done
echo
show "DISABLED: more than 20 refusals in 10 minutes (security.auto_disable); audited, webhook sent" -H "X-API-Key: $RKEY" $U/api/finance/accounts
"$BIN" keys list --policies policies | grep -E '^ID|disabled' | sed 's/^/  /'
echo "  ^ \`tollgate keys enable ID\` (or the key API) restores it, with a clean slate"

echo
echo '$ tollgate audit verify demo-data/audit.jsonl'
"$BIN" audit verify "$DATA/audit.jsonl" 2>&1 | sed 's/^/  /'
echo "  ^ keys minted, rotated, revoked and auto-disabled, the lock-out, the server's start: a hash chain"
echo
echo "\$ ls demo-data/webhooks/   (deliveries: $(ls "$DATA"/webhooks/*.body 2>/dev/null | wc -l))"
for f in "$DATA"/webhooks/*.body; do [[ -e $f ]] && printf '  %s\n' "$(grep -o '"type":"[a-z_]*"' "$f")"; done

echo
echo "== the dashboard (admin listener, behind the admin credential): keys, usage chart, security events, health"
echo '$ TOLLGATE_ADMIN_TOKEN=… tollgate dashboard link --policies policies'
DASH=$(TOLLGATE_ADMIN_TOKEN=$ADMIN_TOKEN "$BIN" dashboard link --policies policies 2>/dev/null | head -1 || true)
echo "  $DASH"
echo "  ^ a one-time sign-in link (60 s, once); or sign in at http://127.0.0.1:9901/login with the"
echo "    demo's admin token: $ADMIN_TOKEN   (only its hash is in demo-data/admin-tokens)"
if command -v chromium >/dev/null; then
    DASH2=$(TOLLGATE_ADMIN_TOKEN=$ADMIN_TOKEN "$BIN" dashboard link --policies policies 2>/dev/null | head -1 || true)
    [[ $DASH2 == http* ]] && chromium --headless --no-sandbox --disable-gpu --no-first-run --disable-extensions \
        --disable-dev-shm-usage --hide-scrollbars --user-data-dir="$DATA/chromium" --window-size=1280,1600 \
        --screenshot="$DATA/dashboard.png" "$DASH2" >/dev/null 2>&1 || true
    [[ -s $DATA/dashboard.png ]] && echo "  (a headless Chromium screenshot of this session: demo-data/dashboard.png)"
fi

cat <<EOT

Tollgate is on http://127.0.0.1:8080 (policies/), backends on :7001-:7003, admin (metrics) on
:9901, the webhook receiver on :9000, logs, the access log and deliveries in demo-data/.
Mint another key:   $BIN keys new --policies policies --consumer you --scopes finance:read,chat
List keys:          $BIN keys list --policies policies
EOT
if [[ ${DEMO_KEEP:-1} == 1 && -t 0 ]]; then
    echo "Ctrl-C stops everything."
    wait
fi
