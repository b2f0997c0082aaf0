#!/usr/bin/env python3
"""Writes a policy directory with N declared keys, for measuring load and reload cost.

    scripts/keys-policy.py N DIR [--form block|flow|bench]

DIR/00-gateway.yaml holds one listener, a backend, two plans and three routes;
DIR/10-keys.yaml holds the N keys (plain key of key i: "plain-<i>"):
  block  every field on its own line (the form of shared/POLICY.md), the default
  flow   one flow mapping per key, quoted hash (the bench adapter's shape)
  bench  exactly the bench adapter's shape: a keys-only file without `version`

Then time it:  ./.build/release/tollgate check DIR
"""
import hashlib
import os
import sys


def main() -> None:
    args = sys.argv[1:]
    form = "block"
    if "--form" in args:
        i = args.index("--form")
        form = args[i + 1]
        del args[i:i + 2]
    if len(args) != 2 or form not in ("block", "flow", "bench"):
        sys.exit(__doc__)
    n, out = int(args[0]), args[1]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "00-gateway.yaml"), "w") as f:
        f.write("""version: 1
listen:
  - address: 127.0.0.1:8080
backends:
  finance: {url: http://127.0.0.1:7001}
plans:
  free:
    rate_limits:
      - {requests: 10, per: 1s, burst: 20}
      - {requests: 1000, per: 1d}
  pro:
    rate_limits:
      - {requests: 200, per: 1s}
routes:
  - name: finance-read
    match: {methods: [GET, HEAD], path_prefix: /api/finance/}
    backend: finance
    scopes: [finance:read]
  - name: finance-write
    match: {methods: [POST, PUT, PATCH, DELETE], path_prefix: /api/finance/}
    backend: finance
    scopes: [finance:write]
  - name: chat
    match: {methods: [POST], path_prefix: /api/v1/prediction/}
    backend: finance
    scopes: [chat]
""")
    lines = [] if form == "bench" else ["version: 1\n"]
    lines.append("keys:\n")
    for i in range(n):
        h = hashlib.sha256(b"plain-%d" % i).hexdigest()
        plan = "free" if i % 3 else "pro"
        if form == "block":
            lines.append(f"  - id: key_{i:06d}\n"
                         f"    hash: sha256:{h}\n"
                         f"    consumer: consumer_{i % 997}\n"
                         f"    plan: {plan}\n"
                         f"    scopes: [finance:read, chat, s{i % 300}]\n")
            if i % 10 == 0:
                lines.append("    allow_ips: [127.0.0.0/8, 10.0.0.0/8]\n")
            if i % 7 == 0:
                lines.append("    expires: 2030-01-01T00:00:00Z\n")
            if i % 50 == 0:
                lines.append("    status: disabled\n")
        elif form == "flow":
            lines.append(f"  - {{id: key_{i:06d}, hash: \"sha256:{h}\", consumer: consumer_{i % 997}, "
                         f"plan: {plan}, scopes: [finance:read, chat]}}\n")
        else:
            lines.append(f"  - {{id: k{i:05d}, hash: \"sha256:{h}\", consumer: k{i:05d}, plan: free, "
                         f"scopes: [finance:read]}}\n")
    with open(os.path.join(out, "10-keys.yaml"), "w") as f:
        f.writelines(lines)


if __name__ == "__main__":
    main()
