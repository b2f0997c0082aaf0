#!/usr/bin/python3
"""The admin API against its OpenAPI description (docs/openapi.yaml), on a running server.

    openapi_contract.py SPEC BASE_URL TOKEN DECLARED_KEY_ID

Runs a scripted session over every operation the description lists (successes and the
refusals it documents), and checks each answer: its status is documented for that
operation, its JSON body validates against the documented schema (Draft 2020-12, refs
resolved in the document), a 401 carries WWW-Authenticate, and every documented operation
was exercised. Prints one line per check that failed and exits 1 if any did.
"""
import json, re, sys, urllib.request, urllib.error
import yaml
import jsonschema

spec_path, base, token, declared = sys.argv[1:5]
spec = yaml.safe_load(open(spec_path))
failures = []
seen = set()


def resolve(o):
    while isinstance(o, dict) and "$ref" in o:
        node = spec
        for part in o["$ref"].lstrip("#/").split("/"):
            node = node[part]
        o = node
    return o


def operation(method, path):
    for template, item in spec["paths"].items():
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        if re.match(pattern, path) and method.lower() in item:
            return template, item[method.lower()]
    return None, None


def call(method, path, body=None, auth=True, token_override=None, headers=None, expect=None):
    url = base + path
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if auth:
        req.add_header("Authorization", "Bearer " + (token_override or token))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, hdrs, raw = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, hdrs, raw = e.code, e.headers, e.read()
    bare = path.split("?")[0]
    template, op = operation(method, bare)
    where = f"{method} {path} -> {status}"
    if op is None:
        failures.append(f"{where}: not in the description")
        return status, hdrs, None
    seen.add((template, method.lower()))
    if expect is not None and status != expect:
        failures.append(f"{where}: expected {expect}: {raw[:200]!r}")
    responses = op.get("responses", {})
    doc = responses.get(str(status)) or responses.get("default")
    if doc is None:
        failures.append(f"{where}: status not documented ({sorted(responses)})")
        return status, hdrs, None
    doc = resolve(doc)
    content = doc.get("content", {})
    ctype = (hdrs.get("Content-Type") or "").split(";")[0].strip()
    if content and ctype not in content:
        failures.append(f"{where}: Content-Type {ctype!r} not documented ({list(content)})")
    if status == 401 and not hdrs.get("WWW-Authenticate"):
        failures.append(f"{where}: 401 without WWW-Authenticate")
    body_json = None
    if ctype == "application/json":
        try:
            body_json = json.loads(raw)
        except ValueError:
            failures.append(f"{where}: body is not JSON")
            return status, hdrs, None
        schema = content.get("application/json", {}).get("schema")
        if schema is not None:
            validator = jsonschema.Draft202012Validator(schema, resolver=jsonschema.RefResolver("", spec))
            for err in validator.iter_errors(body_json):
                failures.append(f"{where}: {err.message} at {list(err.absolute_path)}")
    return status, hdrs, body_json


# Open paths.
for p in ("/healthz", "/readyz", "/metrics"):
    call("GET", p, auth=False, expect=200)
# Credentials.
call("GET", "/v1/keys", auth=False, expect=401)
call("GET", "/v1/keys", token_override="not-a-token", expect=401)
# Create, idempotent create.
_, _, a = call("POST", "/v1/keys", {"consumer": "carol", "scopes": ["read"], "metadata": {"team": "a"}}, expect=201)
if not a or not a.get("key"):
    failures.append("create: no key in the answer")
idem = {"Idempotency-Key": "create-once"}
_, h1, b1 = call("POST", "/v1/keys", {"consumer": "carol", "scopes": ["read"]}, headers=idem, expect=201)
_, h2, b2 = call("POST", "/v1/keys", {"consumer": "carol", "scopes": ["read"]}, headers=idem, expect=201)
if not (b1 and b2 and b1["id"] == b2["id"] and b2["key"] is None and h2.get("Idempotent-Replayed") == "true"):
    failures.append("a retried create did not answer the first's id without the key")
call("POST", "/v1/keys", {"consumer": "carol", "scopes": ["write"]}, headers=idem, expect=422)
call("POST", "/v1/keys", {"scopes": ["read"]}, expect=400)
call("POST", "/v1/keys", {"consumer": "carol", "colour": "red"}, expect=400)
if a:
    call("POST", "/v1/keys", {"consumer": "carol", "id": a["id"]}, expect=409)
# List, paged.
_, _, page = call("GET", "/v1/keys?limit=1", expect=200)
if page and page.get("next"):
    call("GET", "/v1/keys?limit=1&after=" + page["next"], expect=200)
else:
    failures.append("list: limit=1 gave no next page")
# One key.
kid = a["id"] if a else "missing"
call("GET", "/v1/keys/" + kid, expect=200)
call("GET", "/v1/keys/no-such-key", expect=404)
# Change.
call("PATCH", "/v1/keys/" + kid, {"scopes": ["read", "write"], "require_https": True,
                                   "expires": "2099-01-01T00:00:00Z", "metadata": {"team": "b"}}, expect=200)
call("PATCH", "/v1/keys/" + kid, {"expires": "tomorrow"}, expect=400)
call("PATCH", "/v1/keys/no-such-key", {"scopes": []}, expect=404)
call("PATCH", "/v1/keys/" + declared, {"scopes": ["read"]}, expect=409)
# Rotate.
_, _, r = call("POST", "/v1/keys/" + kid + "/rotate", {"overlap": "1h"}, expect=201)
if not r or r.get("replaces") != kid or not r.get("old_key_expires") or not r.get("key"):
    failures.append("rotate: replaces/old_key_expires/key missing")
call("POST", "/v1/keys/" + kid + "/rotate", {"overlap": "1h"}, expect=409)
call("POST", "/v1/keys/" + kid + "/rotate", {"overlap": "forever"}, expect=400)
call("POST", "/v1/keys/no-such-key/rotate", {}, expect=404)
# Status.
nid = r["id"] if r else kid
for verb, state in (("disable", "disabled"), ("enable", "active"), ("revoke", "revoked")):
    _, _, v = call("POST", "/v1/keys/" + nid + "/" + verb, expect=200)
    if not v or v.get("status") != state:
        failures.append(f"{verb}: the answer says {v and v.get('status')!r}, not {state!r}")
    _, _, g = call("GET", "/v1/keys/" + nid, expect=200)
    if not g or g.get("status") != state:
        failures.append(f"{verb}: the key then reads {g and g.get('status')!r}, not {state!r}")
call("POST", "/v1/keys/" + nid + "/enable", expect=409)
call("POST", "/v1/keys/no-such-key/revoke", expect=404)
call("POST", "/v1/keys/no-such-key/disable", expect=404)
# Usage.
call("GET", "/v1/usage?key_id=" + declared, expect=200)
call("GET", "/v1/usage", expect=400)
call("GET", "/v1/usage?key_id=x", auth=False, expect=401)
# The dashboard.
_, hdrs, _ = call("GET", "/?window=1h", expect=200)
if hdrs is not None and not (hdrs.get("Content-Security-Policy") or "").startswith("default-src 'none'"):
    failures.append("GET /: no strict Content-Security-Policy")
call("GET", "/", token_override="not-a-token", expect=401)
_, _, link = call("POST", "/v1/dashboard/links", {"path": "/?window=7d"}, expect=201)
if not link or link.get("path") != "/?window=7d":
    failures.append("dashboard link: the path is not the one asked for")
call("POST", "/v1/dashboard/links", {"path": "https://evil.example/"}, expect=400)
call("POST", "/v1/dashboard/links", {"path": "/"}, auth=False, expect=401)
# Lock-outs.
call("GET", "/v1/security/bans", expect=200)
call("GET", "/v1/security/bans", auth=False, expect=401)
call("DELETE", "/v1/security/bans?network=203.0.113.9", expect=200)
call("DELETE", "/v1/security/bans?network=2001:db8:1:2::/64", expect=200)
call("DELETE", "/v1/security/bans?network=not-an-address", expect=400)

for template, item in spec["paths"].items():
    for method in item:
        if method in ("get", "post", "patch", "put", "delete") and (template, method) not in seen:
            failures.append(f"{method.upper()} {template}: never exercised")

for f in failures:
    print(f)
print(json.dumps({"checked": len(seen), "failures": len(failures)}))
sys.exit(1 if failures else 0)
