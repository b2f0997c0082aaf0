#!/usr/bin/env python3
"""Seed corpora of the libFuzzer targets.

  corpus.py build SEEDDIR    rewrite Fuzz/corpus/* from DumpSeeds output (SEEDDIR/{request,
                             response,chunked}), the black-box seeds and the lists below
  corpus.py credits          rewrite Fuzz/corpus/{sse_meter,token_hints} only (the lists below)
  corpus.py jwt              rewrite Fuzz/corpus/jwt only (the lists below)
  corpus.py wrap IN OUT [--flags F] [--splits a,b,...]
                             raw HTTP bytes → a request/response/chunked target input
  corpus.py unwrap IN        a target input → its raw message (stdout) and control (stderr)

Input layout of the resumable-parser targets (see Fuzz/Targets/Support/FuzzSupport.swift):
byte 0 flags (bits 0-1 limits profile, bit 2 byte at a time, bits 3-4 method, bits 5-7
split count), bytes 1-7 split points as fractions of the message length, then the message.
"""

import argparse
import hashlib
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(ROOT, "Fuzz", "corpus")
BLACKBOX = os.path.join(ROOT, "Fuzz", "blackbox", "seeds")


def wrap(message, flags=None, splits=(64, 128, 192), byte_at_a_time=None):
    """Control header + message. By default three splits (¼, ½, ¾) and, for short
    messages, byte-at-a-time feeding too."""
    if flags is None:
        flags = (min(len(splits), 7) << 5)
        if byte_at_a_time if byte_at_a_time is not None else len(message) <= 256:
            flags |= 0b100
    fr = list(splits)[:7] + [0] * (7 - min(len(splits), 7))
    return bytes([flags & 0xFF] + [f & 0xFF for f in fr]) + message


def unwrap(data):
    if len(data) < 8:
        return {"flags": 0, "splits": []}, data
    flags = data[0]
    return {"flags": flags, "limits": flags & 3, "byte_at_a_time": bool(flags & 4), "method": (flags >> 3) & 3,
            "splits": list(data[1:1 + (flags >> 5)])}, data[8:]


def write(dirname, name, data):
    os.makedirs(dirname, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:80]
    with open(os.path.join(dirname, safe), "wb") as f:
        f.write(data)


PATHS = [
    "/", "/admin", "/x/../admin", "/%61dmin", "//admin", "///a//b///", "/a/./b/", "/a/b/..", "/a/.", "/x/%2e%2e/admin",
    "/x/.%2E/admin", "/%2e/admin", "/a%3fb", "/a%20b", "/caf%c3%a9", "/%7Euser/%41%5a", "/api/finance/accounts",
    "/a:b@c!$&'()*+,=", "/..a/b..", "/admin;x", "/../admin", "/a/../../admin", "/a%2fb", "/a%5cb", "/a%00b", "/a\x00b",
    "/a\\b", "/a%zzb", "/a%2", "/a%", "/a b", "/a#b", "/a?b", "/a/%2E%2E%2f", "/a/b/c/../../../", "/%2e%2e%2e/",
    "/a/.../b", "/.%2e/", "/%25/%2525", "/api/v1/prediction/abc-123",
]

CREDENTIALS = [
    # (query parameter name, value)
    ("api_key", "Bearer abc"), ("api_key", "bearer   tg_xyz  "), ("api_key", "BEARER k"), ("api_key", "Basic abc"),
    ("api_key", "Bearer "), ("api_key", "Bearerabc"), ("api_key", "Bearer a b"), ("api_key", "api_key=K"),
    ("api_key", "a=1&api_key=K&b=2"), ("api_key", "a=1&api_key=&b"), ("api_key", "xapi_key=K"), ("api_key", "api_key"),
    ("api_key", "api_key=1&api_key=2"), ("key", "&&key=v&"), ("", "=x&="),
    ("api_key", "Bearer tg_0123456789abcdefghijABCDEFGHIJ01AAAAAA"),
    ("api_key", "api_key=tg_0123456789abcdefghijABCDEFGHIJ01AAAAAA&x"),
    ("api_key", "tg_0123456789abcdefghijABCDEFGHIJ01AAAAAA"),
]

ADDRESSES = [
    # (peer selector, X-Forwarded-For)
    (0, "192.0.2.1"), (0, "0.0.0.0"), (1, "255.255.255.255"), (2, "::"), (2, "::1"), (0, "2001:db8::1"),
    (0, "2001:DB8:0:0:0:0:0:1"), (1, "1:2:3:4:5:6:7:8"), (1, "1::"), (1, "fe80::1:2"), (0, "::ffff:192.0.2.1"),
    (0, "64:ff9b::192.0.2.33"), (1, "1.2.3"), (1, "01.2.3.4"), (1, ":::"), (1, "1::2::3"), (1, "fe80::1%eth0"),
    (1, "[::1]"), (1, "::1.2.3"), (1, "1.2.3.4:80"), (1, "unknown"), (0, "9.9.9.9, 1.2.3.4, 10.0.0.2"),
    (1, "9.9.9.9,1.2.3.4,10.0.0.2 ,\t10.0.0.3"), (1, "10.0.0.5, 10.0.0.2"), (1, "1.2.3.4, garbage, 10.0.0.2"),
    (1, "1.2.3.4, , 10.0.0.2"), (2, "::ffff:10.1.1.1, 2001:db8::7"), (4, "fd00::1, fd00::2"), (0, "10.0.0.0/8"),
    (0, "::/0"), (0, "192.0.2.7/32"), (0, "10.0.0.1/8"), (0, "10.0.0.0/08"), (0, "::/129"), (3, "203.0.113.9"),
]


def flowise_event(name, data_json):
    """Flowise's own bytes (BACKENDS.md, FlowiseBackend.event): message line, data line, blank line."""
    return "message:\ndata:" + '{"event":"%s","data":%s}' % (name, data_json) + "\n\n"


def openai_chunk(contents, usage=None):
    choices = ",".join('{"index":%d,"delta":%s,"logprobs":null,"finish_reason":null}'
                       % (i, '{"content":"%s"}' % c if c is not None else '{"role":"assistant"}')
                       for i, c in enumerate(contents))
    u = ',"usage":%s' % usage if usage else ""
    return ('data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1733000000,"model":"gpt-4o-mini",'
            '"system_fingerprint":"fp_1","choices":[%s]%s}\n\n' % (choices, u))


REFERENCE_FLOWISE = (flowise_event("start", '""') + flowise_event("token", '"Reference"') + flowise_event("token", '" answer:"')
                     + flowise_event("token", '" hello"')
                     + flowise_event("usageMetadata", '{"input_tokens":1,"output_tokens":3,"total_tokens":4}')
                     + flowise_event("metadata", '{"chatId":"c1","chatMessageId":"m1","question":"hello","sessionId":"c1"}'))

# (dialect 0 flowise / 1 openai, stream text)
STREAMS = [
    (0, REFERENCE_FLOWISE),
    (0, REFERENCE_FLOWISE.replace("\n", "\r\n")),
    (0, REFERENCE_FLOWISE.replace("\n", "\r")),
    (0, ":heartbeat\n\n" + flowise_event("token", '"a"') + ":heartbeat\n\n" + flowise_event("token", '"b\\n\\u00e9"')),
    (0, flowise_event("token", '"x"') + flowise_event("error", '"model overloaded"')),
    (0, 'message:\ndata:{"event":"error","data":"INSUFFICIENT_CREDITS: out of credits"}\n\n'),
    (0, "data:{\"event\":\ndata:\"token\"}\n\ndata\n\n\ufeffdata: x\n\n"),
    (0, "\ufeff" + flowise_event("token", '"a"')),
    (0, 'data:{"data":{"output_tokens":4,"prompt_tokens":"2"},"event":"usageMetadata"}\n\n'),
    (0, flowise_event("usageMetadata", '{"inputTokens":1e1,"outputTokens":2.0,"completionTokens":99999999999999999999}')),
    (0, flowise_event("sourceDocuments", '[{"pageContent":"lorem \\"ipsum\\"","metadata":{"a":[1,2,{"b":null}]}}]')),
    (0, 'data:{"event":"token","data":"unterminated\n\ndata:{"event":"tok\\u0065n"}\n\n'),
    (1, openai_chunk([None]) + openai_chunk(["Hel"]) + openai_chunk(["lo"]) + openai_chunk([""])
        + openai_chunk([], '{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}') + "data: [DONE]\n\n"),
    (1, openai_chunk(["a", "b", None, ""]) + 'data: {"choices":[{"text":"x"},{"text":""}]}\n\n'),
    (1, "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n"
        "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":"
        "{\"input_tokens\":5,\"output_tokens\":7}}}\n\n"),
    (1, 'data: {"error":{"code":"INSUFFICIENT_CREDITS","message":"out of credits"}}\n\ndata: [DONE]\n\n'),
    (1, 'data: {"choices":[{"delta":{"content":"x"}}],"usage":null}\r\n\r\ndata:[DONE]\r\n\r\n'),
]

# Request bodies for token_hints.
BODIES = [
    '{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"max_tokens":256,"stream":true}',
    '{"question":"hello","streaming":true,"overrideConfig":{"maxTokens":{"chatOpenAI_0":300,"chatAnthropic_0":"1200"}}}',
    '{"question":"hello","overrideConfig":{"chatOpenAI_0":{"maxTokens":50},"vars":[{"max_tokens":7}]}}',
    '{"contents":[{"parts":[{"text":"hi"}]}],"generationConfig":{"temperature":0.2,"maxOutputTokens":1024}}',
    '{"inputs":"hi","parameters":{"max_new_tokens":50}}',
    '{"model":"llama3","prompt":"hi","options":{"num_predict":128}}',
    '{"max_tokens":100,"max_completion_tokens":500,"max_tokens":10,"max_output_tokens":1e2,"maxNewTokens":100.0}',
    '{"max\\u005ftokens":5,"num_predict":null,"maxOutputTokens":"3e2"}',
    '{"max_tokens":-1}', '{"max_tokens":1.5}', '{"max_tokens":"abc"}', '{"max_tokens":true}', '{"max_tokens":[1]}',
    '{"max_tokens":{"a":1}}', '{"max_tokens":99999999999999999999999}', '{"max_tokens":1e400}',
    '{"tools":[{"function":{"parameters":{"type":"object","properties":{"max_tokens":{"type":"integer"}}}}}]}',
    '[1,{"a":[true,false,null]},"\\"",-0.5e-3]', '', ' ', '{"a":1,}', '{"a":01}', '{"a":"\\uD800"}',
    '[' * 64 + ']' * 64, '[' * 65 + ']' * 65,
    # Found by the first token_hints campaign (an oracle artifact, not a scanner bug):
    # JSONSerialization drops the raw BOM, so the key is max_tokens to it.
    '{"\ufeffmax_tokens":""}',
]


def credits():
    for kind in ("sse_meter", "token_hints"):
        shutil.rmtree(os.path.join(CORPUS, kind), ignore_errors=True)
    for dialect, text in STREAMS:
        raw = text.encode("utf-8")
        for budget in (0, 1):
            # bit 0 dialect, bit 1 budget mode (first budget 1: bits 3-4), bit 2 byte at a time
            flags = (3 << 5) | dialect | (budget << 1) | (1 << 3) | (0b100 if len(raw) <= 1024 else 0)
            data = wrap(raw, flags=flags)
            write(os.path.join(CORPUS, "sse_meter"), hashlib.sha1(data).hexdigest()[:12], data)
    for body in BODIES:
        data = wrap(body.encode("utf-8"))
        write(os.path.join(CORPUS, "token_hints"), hashlib.sha1(data).hexdigest()[:12], data)
    print(f"sse_meter: {2 * len(STREAMS)} seeds")
    print(f"token_hints: {len(BODIES)} seeds")


# JWT target seeds (Fuzz/Targets/JWTTarget.swift): byte 0 bits 0-1 mode (0 a token, 1 header
# NUL claims signed by the target with the fuzz secret, 2 header NUL claims NUL signature bytes,
# 3 a token on the lax verifier), bits 2-3 the HS algorithm (mode 1), bit 4 the strict verifier.
JWT_SECRET = b"fuzz-secret-0123456789abcdef0123"
JWT_NOW = 1_800_000_000

RFC_TOKENS = [
    # RFC 7515 A.1 (HS256, another key), A.2 (RS256), A.3 (ES256): expired at the target's time.
    "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
    "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw",
    "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q",
    "", ".", "..", "a.b.c", "tg_0123456789abcdefghijklmnopqrstuvwxyzAB", "eyJhbGciOiJub25lIn0.e30.",
]

JWT_HEADERS = [
    '{"alg":"HS256","typ":"JWT"}', '{"alg":"HS384"}', '{"alg":"HS512"}', '{"alg":"none"}', '{"alg":"RS256","kid":"ec-1"}',
    '{"alg":"ES256","kid":"ec-1"}', '{"alg":"HS256","kid":"../../dev/null"}', '{"alg":"HS256","crit":["exp"]}',
    '{"alg":"HS256","jwk":{"kty":"oct","k":"AA"},"jku":"http://x/","x5u":"http://y/"}', '{"alg":"HS256","alg":"HS256"}',
    '{"typ":"JWT"}', '[]', '{"alg":"HS256"', ' {"alg" : "HS256" } ', '{"alg":"HS2\\u0035\\u0036"}', '{"alg":null}',
]

def jwt_claims(**kw):
    import json as _json
    c = {"sub": "alice", "exp": JWT_NOW + 600}
    c.update(kw)
    return _json.dumps(c, separators=(",", ":"))

JWT_CLAIMS = [
    jwt_claims(), jwt_claims(scope="a b  c "), jwt_claims(scope=["a", "b"]), jwt_claims(scope=[]), jwt_claims(scope=["a b"]),
    jwt_claims(exp=JWT_NOW - 29), jwt_claims(exp=JWT_NOW - 30), jwt_claims(nbf=JWT_NOW + 31), jwt_claims(iat=JWT_NOW + 31),
    jwt_claims(sub=42), jwt_claims(sub=""), jwt_claims(sub="\u00e9l\u00e8ve"), jwt_claims(role="admin"),
    jwt_claims(iss="https://issuer.test", aud="aud-a", type="access"),
    jwt_claims(iss="https://issuer.test", aud=["x", "aud-a"], type="access"),
    jwt_claims(iss="https://issuer.test", aud="aud-a", type="refresh"),
    '{"sub":"alice","exp":1.8e9}', '{"sub":"alice","exp":1800000000.5}', '{"sub":"alice","exp":1e400}',
    '{"sub":"alice","exp":123456789012345678901234567890}', '{"sub":"alice","exp":-1}', '{"sub":"alice","exp":"1900000000"}',
    '{"sub":"alice"}', '{"sub":"a\\ud83d\\ude00","exp":1900000000}', '{"sub":"a\\ud800","exp":1900000000}',
    '{"sub":"alice","exp":1900000000,"exp":1}', '{"x":[[[[[[[[[[{}]]]]]]]]]],"sub":"a","exp":1900000000}',
    '{"sub":"alice","exp":1900000000,}', '{"sub":"alice","exp":01}', '{}', '[]', '"x"', '',
]

def jwt_seeds():
    import base64, hmac as _hmac, hashlib as _hashlib, json as _json
    def b64(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=")
    out = []
    for t in RFC_TOKENS:
        out.append(wrap(t.encode(), flags=0, splits=()))
        out.append(wrap(t.encode(), flags=3, splits=()))
    for i, (h, alg) in enumerate([('{"alg":"HS256","typ":"JWT"}', _hashlib.sha256), ('{"alg":"HS384"}', _hashlib.sha384),
                                  ('{"alg":"HS512"}', _hashlib.sha512)]):
        for c in JWT_CLAIMS[:16]:
            inp = b64(h.encode()) + b"." + b64(c.encode())
            tok = inp + b"." + b64(_hmac.new(JWT_SECRET, inp, alg).digest())
            out.append(wrap(tok, flags=0 | (0x10 if i == 0 else 0), splits=()))
    for h in JWT_HEADERS:
        for c in JWT_CLAIMS:
            for alg_bits in (0, 1, 2):
                if alg_bits and h != JWT_HEADERS[0] and alg_bits != JWT_HEADERS.index(h):
                    continue
                out.append(wrap(h.encode() + b"\0" + c.encode(), flags=1 | (alg_bits << 2), splits=()))
        out.append(wrap(h.encode() + b"\0" + JWT_CLAIMS[13].encode(), flags=1 | 0x10, splits=()))
    for h in ('{"alg":"ES256","kid":"ec-1"}', '{"alg":"RS256"}', '{"alg":"ES256"}'):
        for sig in (b"", b"\0" * 64, b"\xff" * 64, b"\x80" + b"\0" * 63, b"\0" * 32 + b"\x80" * 32, b"\1" * 256, b"\0" * 255 + b"\1", b"\x30\x44"):
            out.append(wrap(h.encode() + b"\0" + JWT_CLAIMS[0].encode() + b"\0" + sig, flags=2, splits=()))
    # RS384/RS512, PS*, ES384 (the P-384 key, kid ec-384) and EdDSA (the Ed25519 key, kid ed-1):
    # junk signatures of each length (and the wrong ones) reach OpenSSL; ES512 is not implemented.
    for h in ('{"alg":"ES384","kid":"ec-384"}', '{"alg":"ES384"}', '{"alg":"EdDSA","kid":"ed-1"}', '{"alg":"EdDSA"}',
              '{"alg":"PS256"}', '{"alg":"PS384"}', '{"alg":"PS512"}', '{"alg":"RS384"}', '{"alg":"RS512"}',
              '{"alg":"ES512"}', '{"alg":"ES384","kid":"ed-1"}', '{"alg":"EdDSA","kid":"ec-1"}'):
        for sig in (b"\0" * 64, b"\xff" * 96, b"\x80" + b"\0" * 95, b"\0" * 48 + b"\x80" * 48, b"\1" * 256, b"\x30\x64"):
            out.append(wrap(h.encode() + b"\0" + JWT_CLAIMS[0].encode() + b"\0" + sig, flags=2, splits=()))
    return out

def jwt():
    shutil.rmtree(os.path.join(CORPUS, "jwt"), ignore_errors=True)
    seeds = jwt_seeds()
    for data in seeds:
        write(os.path.join(CORPUS, "jwt"), hashlib.sha1(data).hexdigest()[:12], data)
    print(f"jwt: {len(set(seeds))} seeds")


def build(seed_dir):
    for kind in ("request", "response", "chunked", "path", "credential", "client-ip"):
        shutil.rmtree(os.path.join(CORPUS, kind), ignore_errors=True)
    counts = {}
    for kind in ("request", "response", "chunked"):
        d = os.path.join(seed_dir, kind)
        for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            with open(os.path.join(d, name), "rb") as f:
                raw = f.read()
            write(os.path.join(CORPUS, kind), "test-" + name, wrap(raw))
            counts[kind] = counts.get(kind, 0) + 1
    # The black-box seeds: realistic requests/responses for the proxy, the known crash too.
    for kind, sub in (("request", "requests"), ("response", "responses")):
        d = os.path.join(BLACKBOX, sub)
        for name in sorted(os.listdir(d)):
            with open(os.path.join(d, name), "rb") as f:
                raw = f.read()
            write(os.path.join(CORPUS, kind), "blackbox-" + name, wrap(raw))
            counts[kind] = counts.get(kind, 0) + 1
            if kind == "response":
                # The same bytes as the answer to HEAD and to CONNECT.
                write(os.path.join(CORPUS, kind), "blackbox-head-" + name, wrap(raw, flags=(3 << 5) | (1 << 3)))
                write(os.path.join(CORPUS, kind), "blackbox-connect-" + name, wrap(raw, flags=(3 << 5) | (2 << 3)))
                counts[kind] += 2
    for p in PATHS:
        write(os.path.join(CORPUS, "path"), hashlib.sha1(p.encode("latin-1")).hexdigest()[:12], p.encode("latin-1"))
    counts["path"] = len(PATHS)
    for name, value in CREDENTIALS:
        data = bytes([len(name)]) + name.encode() + value.encode()
        write(os.path.join(CORPUS, "credential"), hashlib.sha1(data).hexdigest()[:12], data)
    counts["credential"] = len(CREDENTIALS)
    for peer, xff in ADDRESSES:
        data = bytes([peer]) + xff.encode()
        write(os.path.join(CORPUS, "client-ip"), hashlib.sha1(data).hexdigest()[:12], data)
    counts["client-ip"] = len(ADDRESSES)
    for k, v in sorted(counts.items()):
        print(f"{k}: {v} seeds")
    credits()
    jwt()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("seed_dir")
    sub.add_parser("credits")
    sub.add_parser("jwt")
    w = sub.add_parser("wrap")
    w.add_argument("input")
    w.add_argument("output")
    w.add_argument("--flags", type=lambda s: int(s, 0))
    w.add_argument("--splits", default="64,128,192")
    u = sub.add_parser("unwrap")
    u.add_argument("input")
    a = p.parse_args()
    if a.cmd == "build":
        build(a.seed_dir)
    elif a.cmd == "credits":
        credits()
    elif a.cmd == "jwt":
        jwt()
    elif a.cmd == "wrap":
        with open(a.input, "rb") as f:
            raw = f.read()
        splits = [int(x) for x in a.splits.split(",") if x]
        with open(a.output, "wb") as f:
            f.write(wrap(raw, flags=a.flags, splits=splits))
    else:
        with open(a.input, "rb") as f:
            control, message = unwrap(f.read())
        print(control, file=sys.stderr)
        sys.stdout.buffer.write(message)


if __name__ == "__main__":
    main()
