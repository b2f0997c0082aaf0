#!/usr/bin/python3
"""Black-box fuzzer of the metered (priced) path of the real `tollgate` binary (ASan build).

On loopback only, it starts a scripted raw HTTP/1.1 upstream (proxy_fuzz's, with a permanent
`live` script) and `tollgate serve` with the local credit ledger and four priced routes:

  flowise  POST /api/v1/prediction/  per_request 1, per_token {1, 1, per 1}, reserve 3, stream flowise
  openai   POST /v1/chat/            the same with stream openai
  bytes    POST /api/v1/bytes/       per-token without stream (answers counted by their bytes)
  flat     POST /api/flat/           per_request 2 only (not read whole, not metered)

and a public route for the liveness probes. Two keys: consumer `big` (10^9 credits granted
before start) and `small` (50, topped up by 50 whenever it falls under 15, so cut-offs are
frequent). A case is one client connection, HTTP/1.1 or h2c (prior knowledge, frames by
hand), that sends generated priced requests: JSON bodies with mutated max_tokens /
max_completion_tokens / overrideConfig fields (duplicates, huge, negative, fractional,
strings, escapes, deep nesting, garbage), bodies at and over 64 KiB, chunked bodies (411),
Expect: 100-continue, lying Content-Lengths, HTTP/1.0, pipelined requests after a priced one,
clients that leave mid-stream (FIN or RST; RST_STREAM in h2). Each request names its
upstream script (X-Fuzz-Case): a mutated SSE answer (Flowise `message:`/`data:` token
events, usageMetadata, OpenAI chunks and usage, the Responses API; CR/LF/CRLF line ends,
BOM, heartbeats, huge events, garbage JSON, bogus usage figures), chunked (chunk framing
mutated too), Content-Length framed (lying sometimes) or close-delimited, sent in pieces.

Oracles:
  * crash: the proxy exits, or an ASan / Swift fatal report on its stderr;
  * hang: after every case a fresh h2 and a fresh HTTP/1.1 request to /public/live must be
    answered (h2_fuzz's liveness check); within a case, an answer that has started but
    neither ends nor closes for 6 s (a stall);
  * framing (HTTP/1.1): what the client reads is a sequence of well-formed responses: a
    status line and fields, then the body by Content-Length, valid chunks up to the last
    chunk, or until close; an answer may end short only by the connection closing; no byte
    follows the last answer; no two framings;
  * framing (h2): frames well-formed, HEADERS before DATA, nothing after END_STREAM, and a
    stream ended with END_STREAM carries as many DATA bytes as its content-length says;
  * content: an answer relayed from the upstream carries a prefix of the upstream's payload
    (de-chunked as the proxy must read it), optionally followed by the route's cut-off
    event and nothing else; an answer that ended cleanly without one carries all of it;
  * cut short: an answer the upstream sent whole that stops for 1.5 s and is then reset or
    closed short (the proxy held it back);
  * expectations of well-formed requests with a valid key: a chunked priced body gets 411,
    a priced body over 65,535 bytes gets 413, Expect: 100-continue gets `100 Continue`;
  * balances: `tollgate credits balance` of both consumers never negative (checked at every
    top-up, at every restart and at the end).

A crash or a hang stops the workers; the cases in flight are replayed one by one on a fresh
proxy and the one that reproduces is saved in Fuzz/crashes/credits/<kind>-<sig>-<case>/ with
REPRODUCE (`--replay DIR`). A violation of the framing / content / expectation oracles is
saved at once as violation-<sig>-<case>/ (three per signature) and the campaign goes on.

Bounded by --duration; prints `credits: executions=N duration=S crashes=C hangs=H
violations=V unique=U` last. Exit status 1 when anything was found. Needs /usr/bin/python3
with `h2` and `hpack` (for h2_fuzz's helpers and the HPACK decoder).
"""

import argparse
import hashlib
import json
import os
import random
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import proxy_fuzz as pf  # noqa: E402
import h2_fuzz as h  # noqa: E402

import hpack  # noqa: E402

ROOT = pf.ROOT
BIG_KEY = b"fuzz-credits-big-key-0001"
SMALL_KEY = b"fuzz-credits-small-key-01"
BIG_GRANT = 1_000_000_000
SMALL_GRANT = 50
SMALL_LOW = 15
MAX_PRICED_BODY = 65_535
STALL_QUIET = 6.0
# An answer that stops this long and is then cut short (reset, closed), though the upstream
# sent it whole, was held back by the proxy (a stall ends at the backend's idle time-out, 10 s
# here: the 6 s stall check above sees it first, when the client waits for it).
STALL_CUT = 1.5

ROUTES = {
    # name: (path prefix, stream dialect or None, per-token?)
    "flowise": (b"/api/v1/prediction/", "flowise", True),
    "openai": (b"/v1/chat/", "openai", True),
    "bytes": (b"/api/v1/bytes/", None, True),
    "flat": (b"/api/flat/", None, False),
}
CUTOFF_MESSAGE = b"Credits ran out; the answer was cut off."
CUTOFF = {
    "flowise": b'message:\ndata:{"event":"error","data":"INSUFFICIENT_CREDITS: ' + CUTOFF_MESSAGE + b'"}\n\n',
    "openai": b'data: {"error":{"code":"INSUFFICIENT_CREDITS","message":"' + CUTOFF_MESSAGE + b'"}}\n\ndata: [DONE]\n\n',
}

# ---------------------------------------------------------------------------------------
# The proxy
# ---------------------------------------------------------------------------------------


def cli(binary, args, timeout=60):
    env = dict(os.environ)
    env.update(pf.SANITIZER_ENV)
    r = subprocess.run([binary] + args, capture_output=True, text=True, timeout=timeout, env=env)
    return r.returncode, r.stdout + r.stderr


class Gateway(pf.Gateway):
    """`tollgate serve` alone (no reference backends), the local credit ledger in its policy
    directory's state, both consumers granted before the start."""

    def policy(self):
        def priced(name, extra):
            prefix, dialect, _ = ROUTES[name]
            return (f"  - name: {name}\n    match: {{methods: [POST], path_prefix: {prefix.decode()}}}\n"
                    f"    backend: scripted\n    max_body: 1MiB\n    credits: {{{extra}}}\n")
        token = "per_request: 1, per_token: {input: 1, output: 1, per: 1}, reserve_tokens: 3"
        return f"""version: 1
listen:
  - address: 127.0.0.1:{self.port}
credits:
  ledger: local
backends:
  scripted:
    url: http://127.0.0.1:{self.upstream_port}
    timeouts: {{connect: 1s, response: 1s, idle: 10s}}
routes:
  - name: public
    match: {{path_prefix: /public/}}
    backend: scripted
    auth: none
{priced("flowise", token + ", stream: flowise")}{priced("openai", token + ", stream: openai")}{priced("bytes", token)}{priced("flat", "per_request: 2")}"""

    def keys(self):
        return f"""version: 1
keys:
  - {{id: key_big, hash: "sha256:{hashlib.sha256(BIG_KEY).hexdigest()}", consumer: big, scopes: []}}
  - {{id: key_small, hash: "sha256:{hashlib.sha256(SMALL_KEY).hexdigest()}", consumer: small, scopes: []}}
"""

    def start(self):
        for attempt in range(5):
            try:
                self.start_once()
            except RuntimeError:
                self.stop()
                if attempt == 4:
                    raise
                continue
            if self.proxy.poll() is None and f"127.0.0.1:{self.port}" in self.read_log(self.proxy_log):
                return
            self.stop()
        raise RuntimeError("tollgate did not start on a free port:\n" + self.read_log(self.proxy_log))

    def start_once(self):
        self.generation += 1
        gen_dir = os.path.join(self.workdir, f"run{self.generation}")
        self.policies = os.path.join(gen_dir, "policies")
        os.makedirs(self.policies, exist_ok=True)
        self.port = pf.free_port()
        with open(os.path.join(self.policies, "00-gateway.yaml"), "w") as f:
            f.write(self.policy())
        with open(os.path.join(self.policies, "10-keys.yaml"), "w") as f:
            f.write(self.keys())
        for account, n in (("big", BIG_GRANT), ("small", SMALL_GRANT)):
            rc, out = cli(self.binary, ["credits", "grant", account, str(n), "--policies", self.policies])
            if rc != 0:
                raise RuntimeError(f"credits grant {account} failed: {out}")
        env = dict(os.environ)
        env.update(pf.SANITIZER_ENV)
        self.proxy_log = os.path.join(gen_dir, "proxy.log")
        self.backends_log = self.proxy_log
        self.proxy = subprocess.Popen(
            [self.binary, "serve", "--policies", self.policies, "--threads", str(self.threads),
             "--header-timeout", "1", "--body-timeout", "1", "--idle-timeout", "2", "--drain-timeout", "1"],
            stdout=open(self.proxy_log, "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        if not pf.wait_listening(self.port, self.proxy):
            raise RuntimeError("tollgate serve did not start:\n" + self.read_log(self.proxy_log))

    def crash_report(self):
        text = b""
        try:
            with open(self.proxy_log, "rb") as f:
                text = f.read()
        except OSError:
            pass
        exited = self.proxy.poll() is not None
        if exited or any(m in text for m in pf.CRASH_MARKERS):
            if not exited:
                try:
                    self.proxy.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
                with open(self.proxy_log, "rb") as f:
                    text = f.read()
            return {"process": "serve", "exit": self.proxy.poll(), "log": text.decode("utf-8", "replace")}
        return None

    def stop(self):
        if self.proxy is not None and self.proxy.poll() is None:
            self.proxy.terminate()
            try:
                self.proxy.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proxy.kill()
                self.proxy.wait()

    @property
    def pid(self):
        return self.proxy.pid if self.proxy else None

    def balance(self, account):
        rc, out = cli(self.binary, ["credits", "balance", account, "--policies", self.policies])
        m = re.search(r"^balance: (-?\d+)", out, re.M)
        return int(m.group(1)) if rc == 0 and m else None

    def grant(self, account, n):
        rc, _ = cli(self.binary, ["credits", "grant", account, str(n), "--policies", self.policies])
        return rc == 0


class Upstream(h.Upstream):
    """h2_fuzz's scripted upstream (a permanent `live` script), patient with slow readers (a
    proxy held back by its client stops reading: 20 s, not 3, before a send gives up), and
    noting the scripts it could not send whole (the content oracle then knows a prefix only)."""

    def __init__(self):
        super().__init__()
        self.unsent = set()

    def serve(self, conn):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(20.0)
        buf = b""
        rid = None
        reset = False
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                    if len(buf) > 1 << 20:
                        return
                head, _, buf = buf.partition(b"\r\n\r\n")
                self.requests += 1
                m = re.search(rb"\r\n" + pf.CASE_HEADER + rb":[ \t]*([0-9A-Za-z_-]+)", head, re.IGNORECASE)
                rid = m.group(1).decode() if m else None
                with self.lock:
                    script = self.scripts.get(rid) if rid else None
                    script = script or self.fallback
                buf = self.drain_body(conn, head, buf)
                last = 0
                pieces = []
                for c in script.cuts + [len(script.data)]:
                    pieces.append(script.data[last:c])
                    last = c
                for i, piece in enumerate(pieces):
                    if piece:
                        conn.sendall(piece)
                    if i < len(pieces) - 1:
                        time.sleep(script.delays[i % len(script.delays)] if script.delays else 0.001)
                rid = None
                if script.ending == "close":
                    return
                if script.ending == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    reset = True
                    return
                if script.ending == "shutdown-read":
                    conn.shutdown(socket.SHUT_WR)
        except OSError:
            if rid:
                with self.lock:
                    self.unsent.add(rid)
            return
        finally:
            if reset:
                conn.close()
            else:
                self.close_gracefully(conn)

    @staticmethod
    def close_gracefully(conn):
        """FIN, then what the proxy still sends is read and dropped (briefly): a close with
        unread bytes would be a reset, which throws away what was not sent yet."""
        try:
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(0.5)
            while conn.recv(65536):
                pass
        except OSError:
            pass
        try:
            conn.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------
# Request bodies
# ---------------------------------------------------------------------------------------

OUTPUT_FIELDS = [b"max_tokens", b"max_completion_tokens", b"max_output_tokens", b"maxTokens", b"maxOutputTokens",
                 b"max_new_tokens", b"num_predict"]
# Output maxima: the integers (the largest wins; past Int64 they saturate), and the values
# a priced request is refused for (400: not a non-negative integer), less often.
NUMBERS = [b"0", b"1", b"2", b"3", b"4", b"5", b"10", b"20", b"50", b"100", b"1000", b"65535", b"2147483647",
           b"2147483648", b"4294967296", b"9007199254740993", b"4611686018427387903", b"9223372036854775807",
           b"9223372036854775808", b"18446744073709551616", b"1" + b"0" * 40, b"-0", b"0.0", b"1e3", b"3.0", b"1E400"]
ODD_VALUES = [b"-1", b"1.5", b"-9223372036854775808", b"00", b"01", b"0x10", b"+5", b".5", b"1.", b"NaN", b"Infinity",
              b'"10"', b"null", b"true", b"false", b"[]", b"{}", b"[10]", b'"\\u0031"', b"-", b"1e", b"9" * 400]
STRINGS = [b'"hi"', b'""', b'"\\""', b'"\\\\"', b'"\\u0000"', b'"\\ud800"', b'"\xc3\xa9"', b'"\xff"', b'"a\\nb"',
           b'"max_tokens"']


def json_string(rng):
    return rng.choice(STRINGS) if rng.random() < 0.25 else b'"hi"'


def output_member(rng):
    name = rng.choice(OUTPUT_FIELDS)
    if rng.random() < 0.08:   # an escape in the key: the same name to a JSON reader
        name = name.replace(b"_", b"\\u005f", 1) if b"_" in name else name[:1] + b"\\u00" + (b"%02x" % name[1]) + name[2:]
    r = rng.random()
    if r < 0.86:
        value = rng.choice(NUMBERS)
    elif r < 0.96:
        value = str(rng.randint(0, 10 ** rng.randint(1, 25))).encode()
    else:
        value = rng.choice(ODD_VALUES)
    return b'"' + name + b'":' + value


def nested(rng, members, depth):
    body = b",".join(members)
    for _ in range(depth):
        body = b'"n%d":{' % rng.randint(0, 9) + body + b"}" if rng.random() < 0.8 else b'"a":[{' + body + b"}]"
    return body


def request_body(rng, route):
    """A JSON body for `route` with mutated output fields; sometimes damaged."""
    members = []
    if route == "openai":
        members += [b'"model":"gpt-x"', b'"stream":true',
                    b'"messages":[{"role":"user","content":' + json_string(rng) + b"}]"]
        if rng.random() < 0.3:
            members.append(b'"stream_options":{"include_usage":true}')
    else:
        members += [b'"question":' + json_string(rng), b'"streaming":true']
    for _ in range(rng.choice((0, 1, 1, 2, 3, 6))):
        members.insert(rng.randint(0, len(members)), output_member(rng))
    if rng.random() < 0.5:
        inner = [output_member(rng) for _ in range(rng.choice((0, 1, 2, 4)))]
        kind = rng.choice((b"overrideConfig", b"overrideConfig", b"generationConfig", b"parameters", b"options"))
        if kind == b"overrideConfig" and rng.random() < 0.6:
            # Per node: {"chatOpenAI_0": {"maxTokens": N}, ...}
            nodes = [b'"chatOpenAI_%d":{' % k + b",".join(output_member(rng) for _ in range(rng.randint(0, 2))) + b"}"
                     for k in range(rng.randint(1, 3))]
            inner += nodes
        depth = rng.choice((0, 0, 0, 0, 0, 1, 3, 62, 63, 64, 65, 200))
        members.append(b'"' + kind + b'":{' + nested(rng, inner, depth) + b"}")
    if rng.random() < 0.1:
        members.append(b'"history":[' + b",".join(b'{"role":"user","content":"x"}' for _ in range(rng.randint(1, 50))) + b"]")
    text = b"{" + b",".join(members) + b"}"
    r = rng.random()
    if r < 0.04:
        text = b"\xef\xbb\xbf" + text
    elif r < 0.08:
        text = text[:rng.randint(0, len(text))]                  # truncated
    elif r < 0.11:
        text = text + rng.choice((b",", b"}", b" x", b"\x00", b"[]"))
    elif r < 0.13:
        text = rng.choice((b"", b"null", b"[]", b"42", b'"s"', b"not json", b"{" * 300))
    elif r < 0.15:
        text = b"  \n" + text.replace(b":", b" : ").replace(b",", b" ,\t") + b"\r\n"
    if rng.random() < 0.06:
        text = pf.Mutator(rng).bytes_ops(text)
    # Size: most small; some at and around the 64 KiB limit, some over.
    r = rng.random()
    if r < 0.1:
        target = rng.choice((MAX_PRICED_BODY - 1, MAX_PRICED_BODY, MAX_PRICED_BODY + 1, 65_536 + 4096, 70_000,
                             rng.randint(16_000, 65_000), 200_000))
        text = pad_to(text, target)
    elif r < 0.15:
        text = pad_to(text, rng.randint(1000, 20_000))
    return text


def pad_to(text, target):
    """Grows `text` (a JSON object when it is one) to `target` bytes."""
    if len(text) >= target:
        return text[:target]
    fill = target - len(text) - len(b',"pad":""')
    if text.startswith(b"{") and text.endswith(b"}") and fill >= 0:
        return text[:-1] + (b"," if len(text) > 2 else b"") + b'"pad":"' + b"p" * (fill + (0 if len(text) > 2 else 1)) + b'"}'
    return text + b" " * (target - len(text))


# ---------------------------------------------------------------------------------------
# Upstream answers: SSE streams
# ---------------------------------------------------------------------------------------

FIGURES = [b"0", b"1", b"7", b"12", b"1000", b"-1", b"-100", b"9223372036854775807", b"9223372036854775808",
           b"-9223372036854775808", b"4611686018427387904", b"1e308", b"1.5", b"-0.5", b'"12"', b"null", b"true",
           b"1" + b"0" * 30, b"[]", b"{}", b"2147483648", b"00", b"1e2"]


def token_text(rng):
    r = rng.random()
    if r < 0.6:
        return rng.choice((b"x", b"w1 ", b" the", b"\xc3\xa9", b"\\n", b'\\"', b"\\u0041", b"", b"\\ud83d\\ude00"))
    if r < 0.9:
        return b"t" * rng.randint(2, 200)
    return rng.choice((b"a" * rng.choice((8000, 16000, 24000, 40000, 70000, 130000)), b"\\n" * 5000))


def flowise_event(rng, nl):
    r = rng.random()
    if r < 0.55:
        data = b'{"event":"token","data":"' + token_text(rng) + b'"}'
    elif r < 0.6:
        data = b'{"event":"start","data":""}'
    elif r < 0.7:
        a, b, c = (rng.choice(FIGURES) for _ in range(3))
        keys = rng.choice(((b"input_tokens", b"output_tokens", b"total_tokens"),
                           (b"prompt_tokens", b"completion_tokens", b"total_tokens"),
                           (b"promptTokenCount", b"candidatesTokenCount", b"totalTokenCount")))
        data = (b'{"event":"usageMetadata","data":{"' + keys[0] + b'":' + a + b',"' + keys[1] + b'":' + b + b',"'
                + keys[2] + b'":' + c + b"}}")
    elif r < 0.74:
        data = rng.choice((b'{"event":"end","data":"[DONE]"}', b'{"event":"metadata","data":{"chatId":"c","messageId":"m"}}',
                           b'{"event":"error","data":"boom"}', b'{"event":"sourceDocuments","data":[{"a":1}]}'))
    elif r < 0.82:
        # Damaged JSON.
        data = rng.choice((b'{"event":"token","data":', b'{"event":"token","data":"x"', b'{"event":token}', b"[1,2",
                           b'{"event":"token","data":"x"}}', b'{"event":"token","data":"\xff\xfe"}', b"\x00\x01",
                           b'{"event":"token","data":"x","event":"usageMetadata"}', b"[" * 2000 + b"]" * 2000,
                           b'{"event":"token","data":"' + b"\\" * 3 + b'"}', b"{" + b'"a":1,' * 500 + b'"b":2}'))
    elif r < 0.88:
        # Odd SSE lines: comments, other fields, no `message:`, multi-line data.
        return rng.choice((b":ping" + nl + nl, b": keep-alive" + nl, b"id: 1" + nl, b"retry: 10" + nl,
                           b"data" + nl + nl, b"event: token" + nl + b'data:{"event":"token","data":"x"}' + nl + nl,
                           b'data: {"event":"token","data":"x"}' + nl + nl,
                           b'message:' + nl + b'data:{"event":"tok' + nl + b'data:en","data":"x"}' + nl + nl,
                           nl, nl * 3, b"message" + nl + b'data:{"event":"token","data":"x"}' + nl + nl,
                           b"message:" + nl + b"data:" + nl + nl))
    else:
        data = b'{"event":"token","data":"x"}'
    return b"message:" + nl + b"data:" + data + nl + nl


def openai_event(rng, nl):
    r = rng.random()
    if r < 0.55:
        content = b'"' + token_text(rng) + b'"' if rng.random() < 0.95 else rng.choice((b"null", b"1", b"[]"))
        data = b'{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":' + content + b"}}]}"
        if rng.random() < 0.05:
            data = b'{"choices":[{"delta":{"content":"a"}},{"delta":{"content":"b"}}]}'
    elif r < 0.6:
        data = b'{"choices":[{"index":0,"delta":{"role":"assistant"}}]}'
    elif r < 0.7:
        a, b, c = (rng.choice(FIGURES) for _ in range(3))
        data = (b'{"choices":[],"usage":{"prompt_tokens":' + a + b',"completion_tokens":' + b + b',"total_tokens":'
                + c + b"}}")
    elif r < 0.75:
        data = b"[DONE]"
    elif r < 0.8:
        # The Responses API.
        if rng.random() < 0.6:
            return (b"event: response.output_text.delta" + nl + b'data: {"type":"response.output_text.delta","delta":"'
                    + token_text(rng) + b'"}' + nl + nl)
        return (b"event: response.completed" + nl + b'data: {"type":"response.completed","response":{"usage":'
                b'{"input_tokens":' + rng.choice(FIGURES) + b',"output_tokens":' + rng.choice(FIGURES) + b"}}}" + nl + nl)
    elif r < 0.86:
        data = rng.choice((b'{"choices":[{"delta":{"content":', b'{"choices":[{"delta":{"content":"x"}}', b"[1,",
                           b'{"error":{"message":"x"}}', b'{"choices":' + b"[" * 1000, b"\xff", b'{"usage":null}',
                           b'{"choices":[{"delta":{"content":"x","content":"y"}}]}'))
    elif r < 0.92:
        return rng.choice((b":ping" + nl + nl, b"id: 2" + nl, b"data:[DONE]" + nl + nl, b"data" + nl + nl, nl,
                           b'data: {"choices":[{"delta":' + nl + b'data: {"content":"x"}}]}' + nl + nl,
                           b"event: error" + nl + b"data: oops" + nl + nl))
    else:
        data = b'{"choices":[{"delta":{"content":"x"}}]}'
    return b"data: " + data + nl + nl


def flood_payload(rng, dialect, big=False):
    """Megabytes of small token events (for slow readers: the proxy's buffers fill); `big`:
    more than the kernel's socket buffers on the way hold (some 3 MB on loopback), so the
    answer still waits on the client once they are full (HTTP/1.1)."""
    nl = rng.choice((b"\n", b"\r\n"))
    n = rng.randint(100_000, 250_000) if big else rng.randint(20_000, 80_000)
    if dialect == "openai":
        return b"".join(b'data: {"choices":[{"delta":{"content":"w%d "}}]}' % i + nl + nl for i in range(n))
    return b"".join(b"message:" + nl + b'data:{"event":"token","data":"w%d "}' % i + nl + nl for i in range(n))


def sse_payload(rng, dialect, long_bias=False):
    """An event stream: mostly of the route's dialect, sometimes of the other."""
    nl = rng.choice((b"\n", b"\n", b"\n", b"\r\n", b"\r"))
    make = flowise_event if (dialect == "flowise") != (rng.random() < 0.1) else openai_event
    r = rng.random()
    if r < (0.5 if long_bias else 0.15):
        count = rng.randint(100, 1500)      # a long stream of small events: cut-offs
    elif r < 0.25:
        count = rng.randint(0, 2)
    else:
        count = rng.randint(3, 40)
    events = []
    for _ in range(count):
        e = make(rng, nl if rng.random() < 0.9 else rng.choice((b"\n", b"\r\n", b"\r")))
        events.append(e)
    if rng.random() < 0.1 and events:
        events.insert(rng.randrange(len(events)), b"message:" + nl + b"data:" + b'{"event":"token","data":"'
                      + b"z" * rng.choice((20000, 70000, 300000)) + b'"}' + nl + nl)
    payload = b"".join(events)
    if rng.random() < 0.05:
        payload = b"\xef\xbb\xbf" + payload
    if rng.random() < 0.12 and payload:
        payload = pf.Mutator(rng).bytes_ops(payload)
    if rng.random() < 0.05 and payload:
        payload = payload[:rng.randint(0, len(payload))]            # ends mid-event
    return payload


def plain_payload(rng):
    return rng.choice((b'{"text":"hello","usage":{"output_tokens":5}}', b"", b"x" * rng.choice((1, 100, 5000, 70000)),
                       b"0\r\n\r\n", b"5\r\nhello\r\n"))


def chunk_body(rng, payload, big=False):
    """Chunked framing of `payload`; sometimes damaged. Returns (bytes, damaged). `big`: no
    chunks of a few bytes (megabytes would grow six-fold)."""
    out = []
    pos = 0
    mode = rng.random() if not big else 1.0
    damaged = False
    while pos < len(payload):
        if mode < 0.15:
            n = 1
        elif mode < 0.3:
            n = rng.choice((1, 2, 7, 16, 100, 4096, 16384, 70000))
        else:
            n = rng.randint(1, max(1, min(len(payload) - pos, rng.choice((64, 512, 4096, 30000)))))
        data = payload[pos:pos + n]
        pos += len(data)
        size = b"%x" % len(data)
        r = rng.random()
        if r < 0.05:
            size = size.upper() if rng.random() < 0.5 else b"000" + size
        elif r < 0.08 and not big:
            size += rng.choice((b";a=b", b';q="x\\"y"', b";" + b"e" * rng.choice((100, 5000)), b" ;x", b"\t"))
            # Refused by the proxy (rightly): BWS without an extension, extensions past 4 KiB.
            damaged = damaged or size.endswith(b"\t") or len(size) > 4096
        out.append(size + b"\r\n" + data + b"\r\n")
    if rng.random() < 0.08 and out and not big:
        # Damage one chunk: a size that lies, a bad digit, a missing CRLF, bare LF, a huge size.
        i = rng.randrange(len(out))
        c = out[i]
        line, _, rest = c.partition(b"\r\n")
        how = rng.randrange(6)
        if how == 0:
            out[i] = b"%x" % max(0, int(line.split(b";")[0] or b"0", 16) + rng.choice((-1, 1, 100))) + b"\r\n" + rest
        elif how == 1:
            out[i] = b"g" + c
        elif how == 2:
            out[i] = c[:-2]
        elif how == 3:
            out[i] = c.replace(b"\r\n", b"\n")
        elif how == 4:
            out[i] = rng.choice((b"ffffffffffffffff", b"fffffffffffffffff", b"-1", b"", b"8000000000000000")) + b"\r\n" + rest
        else:
            out[i] = c + b"\r\n"
        damaged = True
    end = rng.choice((b"0\r\n\r\n", b"0\r\n\r\n", b"0\r\n\r\n", b"0\r\nX-Trailer: 1\r\n\r\n", b"00000\r\n\r\n", b"", b"0\r\n"))
    if big:
        end = b"0\r\n\r\n"
    damaged = damaged or end in (b"", b"0\r\n")
    return b"".join(out) + end, damaged


class Answer:
    """An upstream script plus what a strict reader makes of it (for the content oracle)."""

    def __init__(self, script, structured, route):
        self.script = script
        self.structured = structured
        self.route = route


def upstream_answer(rng, route, long_bias=False, flood=False, big=False):
    """A mutated (mostly SSE) answer for `route`, as a pf.Script; `long_bias`: more long
    streams (for the small consumer: cut-offs); `flood`: megabytes of events."""
    dialect = ROUTES.get(route, (None, None, None))[1] or rng.choice(("flowise", "openai"))
    sse = flood or rng.random() < 0.85
    payload = flood_payload(rng, dialect, big) if flood else sse_payload(rng, dialect, long_bias) if sse else plain_payload(rng)
    ctype = rng.choice((b"text/event-stream", b"text/event-stream", b"text/event-stream; charset=utf-8",
                        b"TEXT/Event-Stream", b"text/event-streams", b"text/plain")) if sse else b"application/json"
    status = rng.choice((b"200 OK",) * 14 + (b"201 Created", b"206 Partial", b"500 Oops", b"404 No", b"429 Slow"))
    version = b"HTTP/1.1" if rng.random() < 0.95 else b"HTTP/1.0"
    fields = [b"Content-Type: " + ctype] if rng.random() < 0.97 else []
    if rng.random() < 0.3:
        fields.append(rng.choice((b"Cache-Control: no-cache", b"Connection: keep-alive", b"X-Accel-Buffering: no",
                                  b"Content-Type: application/json", b"Connection: close", b"Keep-Alive: timeout=1")))
    r = rng.random()
    if r < 0.5 and version == b"HTTP/1.1":
        framing = "chunked"
        body, damaged = chunk_body(rng, payload, big=flood)
        fields.append(b"Transfer-Encoding: chunked")
    elif r < 0.8:
        framing = "length"
        n = len(payload)
        damaged = False
        if rng.random() < 0.1:
            n = max(0, n + rng.choice((-1, 1, -10, 100, 100000)))
            damaged = True
        fields.append(b"Content-Length: %d" % n)
        body = payload
    else:
        framing = "close"
        body = payload
        damaged = False
    interim = b""
    if rng.random() < 0.04:
        interim = b"".join(b"HTTP/1.1 " + rng.choice((b"100 Continue", b"103 Early Hints\r\nLink: </a>", b"102 P"))
                           + b"\r\n\r\n" for _ in range(rng.randint(1, 3)))
    rng.shuffle(fields)
    data = interim + version + b" " + status + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body
    structured = True
    if rng.random() < 0.05 and not flood:
        data = pf.Mutator(rng).field_ops(data, pf.EXTRA_RESPONSE_FIELDS)
        structured = False
    # How it is sent: pieces, small waits, and how the connection ends.
    r = rng.random()
    if r < 0.2:
        # Dripped: pieces at event boundaries or anywhere, with waits (clients leave mid-stream).
        n = rng.randint(4, 40)
        cuts = sorted(rng.randint(1, max(1, len(data) - 1)) for _ in range(n))
        delays = [rng.choice((0.002, 0.005, 0.01, 0.02)) for _ in range(4)]
    else:
        cuts = [rng.randint(1, max(1, len(data) - 1)) for _ in range(rng.choice((0, 0, 1, 2, 4, 8)))]
        delays = [rng.choice((0, 0.0005, 0.001, 0.003)) for _ in range(4)]
    if framing == "close":
        ending = rng.choice(("close", "close", "close", "keep", "reset"))
    else:
        ending = rng.choice(("keep", "keep", "keep", "close", "close", "reset", "shutdown-read"))
    script = pf.Script(data, cuts, ending, delays)
    meta = {"framing": framing, "damaged": damaged, "structured": structured, "dialect": dialect}
    return script, meta


# ---------------------------------------------------------------------------------------
# Reading HTTP/1.1 messages (the client's answers, and the upstream's scripts)
# ---------------------------------------------------------------------------------------

TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class Msg:
    def __init__(self):
        self.status = None
        self.fields = []
        self.body = b""
        self.state = "head"       # head | body | complete | truncated
        self.framing = None
        self.interim = []

    def field(self, name):
        vals = [v for n, v in self.fields if n.lower() == name]
        return vals


def read_chunked(data, pos, eof):
    """Strict chunked body at `pos`: (payload, end, state) with state complete | more |
    malformed (end: where the malformation starts)."""
    out = bytearray()
    while True:
        nl = data.find(b"\r\n", pos)
        if nl < 0:
            if len(data) - pos > 70000 or b"\n" in data[pos:]:
                return bytes(out), pos, "malformed"
            return bytes(out), pos, "more"
        line = data[pos:nl]
        size_text, semi, _ = line.partition(b";")
        if semi:
            size_text = size_text.rstrip(b" \t")      # BWS before an extension (RFC 9112 7.1.1)
        if not re.fullmatch(rb"0*[0-9A-Fa-f]{1,16}", size_text):
            return bytes(out), pos, "malformed"
        size = int(size_text, 16)
        if size == 0:
            p = nl + 2
            while True:       # trailers, then the empty line
                e = data.find(b"\r\n", p)
                if e < 0:
                    return bytes(out), pos, "more"
                if e == p:
                    return bytes(out), e + 2, "complete"
                if b":" not in data[p:e]:
                    return bytes(out), pos, "malformed"
                p = e + 2
        start = nl + 2
        if len(data) < start + size:
            out += data[start:]
            return bytes(out), len(data), "more"
        if len(data) < start + size + 2:
            out += data[start:start + size]
            return bytes(out), start + size, "more" if data[start + size:] in (b"", b"\r") else "malformed"
        if data[start + size:start + size + 2] != b"\r\n":
            out += data[start:start + size]
            return bytes(out), start + size, "malformed"
        out += data[start:start + size]
        pos = start + size + 2


def read_messages(data, methods, eof, strict_version=True):
    """Responses in `data`, one per request method in `methods` (and any further ones).
    Returns (messages, problem): problem is None or a string naming a framing violation."""
    msgs = []
    pos = 0
    k = 0
    while pos < len(data):
        m = Msg()
        msgs.append(m)
        while True:
            end = data.find(b"\r\n\r\n", pos)
            if end < 0:
                rest = data[pos:]
                prefix = b"HTTP/1.1 " if strict_version else b"HTTP/1."
                if not (rest.startswith(prefix) or prefix.startswith(rest)):
                    return msgs, f"bytes that are not a response after answer {k}: {rest[:40]!r}"
                m.state = "truncated" if eof else "head"
                return msgs, None
            head = data[pos:end]
            lines = head.split(b"\r\n")
            sm = re.fullmatch(rb"HTTP/1\.1 (\d{3})(?: [^\r\n]*)?" if strict_version else rb"HTTP/1\.[01] (\d{3})(?: [^\r\n]*)?",
                              lines[0])
            if not sm:
                return msgs, f"bad status line in answer {k}: {lines[0][:60]!r}"
            fields = []
            for line in lines[1:]:
                name, colon, value = line.partition(b":")
                if not colon or not TOKEN.match(name):
                    return msgs, f"bad field line in answer {k}: {line[:60]!r}"
                fields.append((name.lower(), value.strip(b" \t")))
            status = int(sm.group(1))
            pos = end + 4
            if 100 <= status < 200:
                m.interim.append(status)
                if pos >= len(data):
                    m.state = "truncated" if eof else "head"
                    return msgs, None
                continue
            m.status = status
            m.fields = fields
            break
        method = methods[k] if k < len(methods) else b"GET"
        te = m.field(b"transfer-encoding")
        cl = m.field(b"content-length")
        if te and cl:
            return msgs, f"answer {k} has both Transfer-Encoding and Content-Length"
        if len(cl) > 1 or (cl and not re.fullmatch(rb"[0-9]{1,18}", cl[0])):
            return msgs, f"answer {k}: Content-Length {cl!r}"
        if method == b"HEAD" or status in (204, 304):
            m.framing = "none"
            m.state = "complete"
        elif te:
            if [v.lower() for v in te] != [b"chunked"]:
                return msgs, f"answer {k}: Transfer-Encoding {te!r}"
            m.framing = "chunked"
            m.body, end, state = read_chunked(data, pos, eof)
            if state == "malformed":
                return msgs, f"answer {k}: malformed chunk at +{end - pos}: {data[end:end + 30]!r}"
            if state == "more":
                m.state = "truncated" if eof else "body"
                return msgs, None
            m.state = "complete"
            pos = end
        elif cl:
            n = int(cl[0])
            m.framing = "length"
            m.body = data[pos:pos + n]
            if len(m.body) < n:
                m.state = "truncated" if eof else "body"
                return msgs, None
            m.state = "complete"
            pos += n
        else:
            m.framing = "close"
            m.body = data[pos:]
            m.state = "complete" if eof else "body"
            return msgs, None
        k += 1
    return msgs, None


def upstream_view(script, meta, sent_whole=True, request_method=b"POST"):
    """What the proxy must relay of a script: (status, payload, exact). `exact` False when
    only a prefix of the payload is known (damaged framing, or the upstream could not send it
    all). None when the content oracle does not apply (a head not generated structurally)."""
    if not meta.get("structured"):
        return None
    eof = script.ending in ("close", "reset")
    msgs, problem = read_messages(script.data, [request_method], eof, strict_version=False)
    if not msgs or msgs[0].status is None:
        return None
    m = msgs[0]
    # A reset (SO_LINGER 0) throws away what the upstream's kernel had not sent yet.
    exact = m.state == "complete" and problem is None and not meta.get("damaged") and script.ending != "reset"
    if m.framing == "close":
        exact = script.ending == "close"
    return m.status, m.body, exact and sent_whole


# ---------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------


class Req:
    """One request of a case: what was sent and what the oracles expect of its answer."""

    def __init__(self, rid, route, method=b"POST"):
        self.rid = rid
        self.route = route
        self.method = method
        self.structured = True
        self.expect_status = None
        self.expect_continue = False
        self.meta = {}

    def to_json(self):
        return {"rid": self.rid, "route": self.route, "method": self.method.decode(), "structured": self.structured,
                "expect_status": self.expect_status, "expect_continue": self.expect_continue, "meta": self.meta}

    @staticmethod
    def from_json(d):
        r = Req(d["rid"], d["route"], d["method"].encode())
        r.structured = d["structured"]
        r.expect_status = d["expect_status"]
        r.expect_continue = d["expect_continue"]
        r.meta = d["meta"]
        return r


class Case:
    def __init__(self, case_id, proto):
        self.case_id = case_id
        self.proto = proto            # h1 | h2
        self.data = b""
        self.cuts = []
        self.waits = {}               # cut offset -> "continue" (wait there for 100 Continue)
        self.reqs = []
        self.scripts = {}             # rid -> (pf.Script, meta)
        self.opts = {}                # half_close, leave_after, leave_rst, slow_read, small_reads, stingy, drip, ...

    def pieces(self):
        """(bytes, the offset where they end) in sending order."""
        out, last = [], 0
        for c in sorted(set(c for c in self.cuts if 0 < c < len(self.data))) + [len(self.data)]:
            out.append((self.data[last:c], c))
            last = c
        return out

    def save(self, directory):
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "client.bin"), "wb") as f:
            f.write(self.data)
        for rid, (script, _) in self.scripts.items():
            with open(os.path.join(directory, f"response-{rid}.bin"), "wb") as f:
                f.write(script.data)
        with open(os.path.join(directory, "case.json"), "w") as f:
            json.dump({"case_id": self.case_id, "proto": self.proto, "cuts": self.cuts,
                       "waits": {str(k): v for k, v in self.waits.items()}, "opts": self.opts,
                       "reqs": [r.to_json() for r in self.reqs],
                       "scripts": {rid: {"script": s.to_json(), "meta": m} for rid, (s, m) in self.scripts.items()}},
                      f, indent=1)

    @staticmethod
    def load(directory):
        with open(os.path.join(directory, "case.json")) as f:
            d = json.load(f)
        c = Case(d["case_id"], d["proto"])
        with open(os.path.join(directory, "client.bin"), "rb") as f:
            c.data = f.read()
        c.cuts = d["cuts"]
        c.waits = {int(k): v for k, v in d["waits"].items()}
        c.opts = d["opts"]
        c.reqs = [Req.from_json(r) for r in d["reqs"]]
        for rid, s in d["scripts"].items():
            with open(os.path.join(directory, f"response-{rid}.bin"), "rb") as f:
                c.scripts[rid] = (pf.Script.from_json(f.read(), s["script"]), s["meta"])
        return c


def pick_route(rng):
    return rng.choice(("flowise", "flowise", "flowise", "openai", "openai", "openai", "bytes", "flat"))


def pick_key(rng):
    r = rng.random()
    if r < 0.68:
        return BIG_KEY, True
    if r < 0.94:
        return SMALL_KEY, True
    return rng.choice((None, b"wrong-key-000000000000")), False


def h1_request(rng, case, rid, first):
    """One HTTP/1.1 (or 1.0) request: bytes, and its Req."""
    route = pick_route(rng) if rng.random() < 0.93 else "public"
    prefix = ROUTES[route][0] if route != "public" else b"/public/"
    req = Req(rid, route)
    body = request_body(rng, route)
    key, valid_key = pick_key(rng)
    if case.opts.get("slow_read") and rng.random() < 0.7:
        # A slow reader mostly waits on a metered stream that is admitted.
        route = rng.choice(("flowise", "openai"))
        prefix, req.route = ROUTES[route][0], route
        body, key, valid_key = b'{"question":"hi","streaming":true}', BIG_KEY, True
    version = b"HTTP/1.1" if rng.random() < 0.93 else b"HTTP/1.0"
    path = prefix + rng.choice((b"flow1", b"f", b"flow1?x=1", b"a/b", b"%66low"))
    fields = [b"Host: h"]
    if key:
        fields.append(b"X-API-Key: " + key)
    fields.append(b"Content-Type: application/json")
    fields.append(pf.CASE_HEADER + b": " + rid.encode())
    framing = rng.random()
    expect = rng.random() < 0.12
    if expect:
        fields.append(b"Expect: 100-continue")
    if framing < 0.08 and version == b"HTTP/1.1":
        # A chunked priced body: 411.
        fields.append(b"Transfer-Encoding: chunked")
        wire, _ = chunk_body(rng, body)
        if rng.random() < 0.8:
            wire = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n" if body else b"0\r\n\r\n"
        req.meta["framing"] = "chunked"
        if valid_key and ROUTES.get(route, (0, 0, False))[2]:
            req.expect_status = 411
    elif framing < 0.12:
        # A Content-Length that lies: shorter (the rest is read as the next request) or
        # longer (the body never completes: 408).
        n = max(0, len(body) + rng.choice((-1, -5, 1, 10)))
        fields.append(b"Content-Length: %d" % n)
        wire = body
        req.meta["framing"] = "lying-length"
        req.structured = False        # the answers that follow are not predictable
    elif framing < 0.14:
        wire = b""
        req.meta["framing"] = "none"
    else:
        fields.append(b"Content-Length: %d" % len(body))
        wire = body
        req.meta["framing"] = "length"
        if valid_key and ROUTES.get(route, (0, 0, False))[2] and len(body) > MAX_PRICED_BODY:
            req.expect_status = 413
    if rng.random() < 0.06:
        fields.append(b"Connection: close")
    rng.shuffle(fields)
    head = b"POST " + path + b" " + version + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"
    if rng.random() < 0.06:
        head = pf.Mutator(rng).field_ops(head + b"x", pf.EXTRA_REQUEST_FIELDS)[:-1]
        req.structured = False
    if version == b"HTTP/1.0":
        req.meta["http10"] = True
    req.meta["small"] = key == SMALL_KEY
    # A valid-keyed request whose head arrives alone expects 100 Continue (first request only:
    # the proxy only sends it when no body bytes are buffered).
    req.expect_continue = (expect and first and req.structured and valid_key and version == b"HTTP/1.1"
                           and req.meta["framing"] == "length" and 0 < len(wire) <= MAX_PRICED_BODY
                           and ROUTES.get(route, (0, 0, False))[2])
    req.meta["send_body_alone"] = expect
    return head, wire, req


def make_h1_case(rng, case_id):
    c = Case(case_id, "h1")
    if rng.random() < 0.08:
        # A slow reader: a pause before reading (the proxy's buffers fill: answers wait for
        # room, and so do the events' chunks), then small reads through a small receive
        # buffer, or fast reads (of a bigger flood).
        c.opts["slow_read"] = rng.choice((0.2, 0.5, 1.0))
        c.opts["small_reads"] = rng.random() < 0.5
    n = 1 if rng.random() < 0.7 else rng.choice((2, 2, 3))
    parts = []
    for i in range(n):
        rid = f"{case_id}-{i}"
        head, body, req = h1_request(rng, c, rid, i == 0)
        c.reqs.append(req)
        flood = bool(c.opts.get("slow_read")) and rng.random() < 0.6
        c.scripts[rid] = upstream_answer(rng, req.route, req.meta["small"], flood, big=True)
        parts.append((head, body, req))
    data = b""
    cuts = []
    for i, (head, body, req) in enumerate(parts):
        data += head
        if req.meta.get("send_body_alone") and i == 0:
            cuts.append(len(data))
            c.waits[len(data)] = "continue"
        data += body
    if rng.random() < 0.03:
        data += rng.choice((b"\r\n", b"GET", b"POST /api/v1/prediction/x HTTP/1.1\r\n"))
        for r in c.reqs:
            r.structured = False
    c.data = data
    more = [rng.randint(1, max(1, len(data) - 1)) for _ in range(rng.choice((0, 0, 0, 1, 2, 5)))]
    c.cuts = sorted(set(cuts + more))
    # A client's FIN during an answer is a client leaving (the proxy ends the answer): slow
    # readers stay, to be served whole.
    c.opts["half_close"] = rng.random() < 0.3 and not c.opts.get("slow_read")
    if rng.random() < 0.15 and not c.opts.get("slow_read"):
        c.opts["leave_after"] = rng.choice((1, 50, 200, 400, 1000, 5000, 20000))
        c.opts["leave_rst"] = rng.random() < 0.5
    return c


def make_h2_case(rng, case_id):
    """h2c prior knowledge: SETTINGS, then 1-3 priced streams (HEADERS + DATA), mutated a bit."""
    c = Case(case_id, "h2")
    out = bytearray(h.PREFACE)
    entries = []
    r = rng.random()
    drip = False
    if r < 0.15:
        entries.append((4, rng.choice((0, 1, 100, 16384, 65535, 2 ** 20, 2 ** 31 - 1))))   # INITIAL_WINDOW_SIZE
    elif r < 0.4:
        # A small window refilled DATA frame by DATA frame: the answer waits on the client.
        entries.append((4, rng.choice((100, 1000, 4096, 16384))))
        drip = True
    c.opts["drip"] = drip
    if rng.random() < 0.1:
        entries.append((5, rng.choice((16384, 65535, 2 ** 24 - 1))))                          # MAX_FRAME_SIZE
    out += h.settings(entries)
    c.opts["max_frame"] = dict(entries).get(5, 16384)
    stingy = rng.random() < 0.05
    c.opts["stingy"] = stingy
    if dict(entries).get(4, 1) == 0 and not stingy:
        out += h.frame(h.WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 30))
    if not stingy:
        out += h.frame(h.WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 24))
    n = rng.choice((1, 1, 1, 2, 3))
    sid = 1
    for i in range(n):
        rid = f"{case_id}-{i}"
        route = pick_route(rng)
        req = Req(rid, route)
        req.meta["sid"] = sid
        body = request_body(rng, route)
        key, valid_key = pick_key(rng)
        fields = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"h"),
                  (b":path", ROUTES[route][0] + b"flow1")]
        if key:
            fields.append((b"x-api-key", key))
        fields += [(b"content-type", b"application/json"), (b"x-fuzz-case", rid.encode())]
        r = rng.random()
        if r < 0.6:
            fields.append((b"content-length", str(len(body)).encode()))
        elif r < 0.65:
            fields.append((b"content-length", str(max(0, len(body) + rng.choice((-1, 1)))).encode()))
            req.meta["lying_length"] = True
        if rng.random() < 0.05:
            fields.append((b"expect", b"100-continue"))
        if rng.random() < 0.08:
            hr = h.Req(fields, body, rid)
            h.mutate_fields(rng, hr)
            fields = hr.fields
            req.structured = False
        block = h.hp_block(fields, rng)
        end_now = not body and rng.random() < 0.8
        out += h.frame(h.HEADERS, h.END_HEADERS | (h.END_STREAM if end_now else 0), sid, block)
        if dict(entries).get(4, 65535) < 65535 and not stingy and not drip:
            # A small initial window, opened wide at once.
            out += h.frame(h.WINDOW_UPDATE, 0, sid, struct.pack(">I", 1 << 24))
        if not end_now:
            pos = 0
            frames = []
            while pos < len(body):
                k = min(len(body) - pos, rng.choice((16384, 16384, 1000, 1, 8192)))
                frames.append(body[pos:pos + k])
                pos += k
            how = rng.random()
            for j, f in enumerate(frames):
                last = j == len(frames) - 1
                out += h.frame(h.DATA, h.END_STREAM if last and how < 0.9 else 0, sid, f)
            if not frames:
                out += h.frame(h.DATA, h.END_STREAM, sid, b"")
            elif how >= 0.9:
                r2 = rng.random()
                if r2 < 0.5:
                    out += h.frame(h.HEADERS, h.END_HEADERS | h.END_STREAM, sid, h.hp_block([(b"x-trailer", b"1")]))
                elif r2 < 0.7:
                    out += h.frame(h.DATA, h.END_STREAM, sid, b"extra")
                # else: the stream never ends (body time-out)
        c.reqs.append(req)
        c.scripts[rid] = upstream_answer(rng, route, key == SMALL_KEY, flood=drip and rng.random() < 0.4)
        sid += 2
    if rng.random() < 0.05:
        data = bytes(out)
        frames = h.split_frames(data[len(h.PREFACE):])
        out = bytearray(h.FrameMutator(rng).mutate(h.PREFACE + b"".join(frames), [])) if frames else out
        for r in c.reqs:
            r.structured = False
    c.data = bytes(out)
    c.cuts = h.frame_cuts(rng, c.data) if rng.random() < 0.4 else []
    if rng.random() < 0.15:
        c.opts["rst_stream_after"] = rng.choice((1, 100, 1000, 10000))
    elif rng.random() < 0.1:
        c.opts["leave_after"] = rng.choice((1, 100, 1000, 10000))
        c.opts["leave_rst"] = rng.random() < 0.5
    return c


# ---------------------------------------------------------------------------------------
# Running a case
# ---------------------------------------------------------------------------------------


def send_all(sock, data, deadline):
    view = memoryview(data)
    while view:
        if time.monotonic() > deadline:
            return False
        _, w, _ = select.select([], [sock], [], 1.0)
        if not w:
            return False        # the proxy stopped reading
        try:
            n = sock.send(view)
            view = view[n:]
        except BlockingIOError:
            continue
        except OSError:
            return False
    return True


def recv_some(sock, received, size=262144, o=None):
    """Reads what is there into `received`; False at EOF or an error. With `o`, the gaps
    between reads (the end included) are measured, and a reset noted."""
    try:
        chunk = sock.recv(size)
    except BlockingIOError:
        return True
    except OSError:
        chunk = b""
        if o is not None:
            o.reset = True
    if o is not None:
        now = time.monotonic()
        if o.last_rx is not None:
            o.max_gap = max(o.max_gap, now - o.last_rx)
        o.last_rx = now
    if not chunk:
        return False
    received += chunk
    return True


class Outcome:
    def __init__(self):
        self.received = bytearray()
        self.eof = False
        self.left = False
        self.stalled = None
        self.sent_all = True
        self.got_continue_before_body = None
        self.h2 = None
        self.unsent = set()
        self.last_rx = None           # when the read loop last got bytes (gaps: stalls)
        self.max_gap = 0.0
        self.reset = False            # the connection ended with a reset, not a FIN


def run_h1(port, case, rng):
    o = Outcome()
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if case.opts.get("small_reads"):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        s.settimeout(2.0)
        s.connect(("127.0.0.1", port))
    except OSError:
        s.close()
        return None
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        deadline = time.monotonic() + 20
        pieces = case.pieces()
        for i, (piece, at) in enumerate(pieces):
            if not send_all(s, piece, deadline):
                o.sent_all = False
                break
            if i < len(pieces) - 1:
                if case.waits.get(at) == "continue":
                    # Wait (bounded) for 100 Continue or a final answer before the body.
                    end = time.monotonic() + 1.5
                    while time.monotonic() < end and b"\r\n\r\n" not in o.received:
                        r, _, _ = select.select([s], [], [], end - time.monotonic())
                        if r and not recv_some(s, o.received):
                            o.eof = True
                            break
                    o.got_continue_before_body = o.received.startswith(b"HTTP/1.1 100 ")
                    if o.eof:
                        o.sent_all = False
                        break
                else:
                    r, _, _ = select.select([s], [], [], rng.choice((0, 0.001, 0.003)))
                    if r and not recv_some(s, o.received):
                        o.eof = True
                        o.sent_all = False
                        break
        if case.opts.get("half_close") and not o.eof:
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        if case.opts.get("slow_read"):
            time.sleep(case.opts["slow_read"])      # the client's pause: the proxy's buffers fill
        methods = [r.method for r in case.reqs]
        expected = len(case.reqs) if all(r.structured for r in case.reqs) else None
        leave = case.opts.get("leave_after")
        o.last_rx = time.monotonic()
        while not o.eof and time.monotonic() < deadline:
            if leave and len(o.received) >= leave:
                o.left = True
                if case.opts.get("leave_rst"):
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                break
            idle = time.monotonic() - o.last_rx
            if len(o.received) >= 1 << 17 and idle < 0.2:
                wait = 0.2 - idle     # a long answer is parsed when its bytes pause (not per read)
            else:
                msgs, problem = read_messages(bytes(o.received), methods, False)
                complete = [m for m in msgs if m.state == "complete"]
                incomplete = bool(msgs) and msgs[-1].state != "complete"
                done = expected is not None and len(complete) >= expected
                if problem:
                    quiet = 0.2
                elif done:
                    quiet = 0.15          # anything after the last answer is a violation: look briefly
                elif (incomplete or (expected and o.sent_all)) and awaits_whole(case, len(complete)):
                    quiet = STALL_QUIET   # the upstream sent that answer whole: it must come
                elif incomplete or expected:
                    quiet = 1.5           # an answer the upstream never finishes waits for its idle time-out
                else:
                    quiet = 1.3 if not o.received else 0.3
                wait = quiet - idle
                if wait <= 0:
                    if quiet == STALL_QUIET:
                        o.stalled = (f"no byte for {STALL_QUIET:.0f}s: {len(complete)} of {expected} answers complete, "
                                     f"{'an answer half-sent' if incomplete else 'none started'}")
                    break
            r, _, _ = select.select([s], [], [], wait)
            if not r:
                continue
            if not recv_some(s, o.received, 4096 if case.opts.get("small_reads") else 262144, o):
                o.eof = True
    finally:
        s.close()
    return o


class H2Reader:
    """The server's side of an h2c connection, parsed strictly enough for the oracles."""

    def __init__(self, max_frame):
        self.buf = bytearray()
        self.dec = hpack.Decoder()
        self.dec.max_allowed_table_size = 1 << 20
        self.streams = {}            # sid -> dict(status, fields, data, ended, reset, interim)
        self.goaway = None
        self.problem = None
        self.block = None            # (sid, flags, bytes) while CONTINUATIONs come
        self.max_frame = max_frame
        self.replies = []

    def stream(self, sid):
        return self.streams.setdefault(sid, {"status": None, "fields": [], "data": bytearray(), "ended": False,
                                             "reset": None, "interim": []})

    def feed(self, data):
        self.buf += data
        while len(self.buf) >= 9 and not self.problem:
            n = int.from_bytes(self.buf[:3], "big")
            if n > self.max_frame:
                self.problem = f"frame of {n} bytes past SETTINGS_MAX_FRAME_SIZE {self.max_frame}"
                return
            if len(self.buf) < 9 + n:
                return
            ftype, flags = self.buf[3], self.buf[4]
            sid = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
            payload = bytes(self.buf[9:9 + n])
            del self.buf[:9 + n]
            self.frame(ftype, flags, sid, payload)

    def frame(self, ftype, flags, sid, payload):
        if self.block and ftype != h.CONTINUATION:
            self.problem = "a frame inside a header block"
            return
        if ftype == h.DATA:
            st = self.stream(sid)
            body = payload
            if flags & h.PADDED:
                pad = body[0]
                body = body[1:len(body) - pad]
            if st["status"] is None:
                self.problem = f"DATA before HEADERS on stream {sid}"
                return
            if st["ended"] or st["reset"] is not None:
                self.problem = f"DATA after the end of stream {sid}"
                return
            st["data"] += body
            if flags & h.END_STREAM:
                st["ended"] = True
            elif payload:
                self.replies.append(h.frame(h.WINDOW_UPDATE, 0, sid, struct.pack(">I", len(payload))))
            if payload:
                self.replies.append(h.frame(h.WINDOW_UPDATE, 0, 0, struct.pack(">I", len(payload))))
        elif ftype == h.HEADERS:
            block = payload
            if flags & h.PADDED:
                pad = block[0]
                block = block[1:len(block) - pad]
            if flags & h.PRIO:
                block = block[5:]
            self.block = (sid, flags, bytearray(block))
            if flags & h.END_HEADERS:
                self.end_block()
        elif ftype == h.CONTINUATION:
            if not self.block or self.block[0] != sid:
                self.problem = "CONTINUATION outside a header block"
                return
            self.block[2].extend(payload)
            if flags & h.END_HEADERS:
                self.end_block()
        elif ftype == h.RST_STREAM:
            self.stream(sid)["reset"] = int.from_bytes(payload[:4], "big")
        elif ftype == h.SETTINGS:
            if not flags & h.ACK:
                self.replies.append(h.settings([], flags=h.ACK))
        elif ftype == h.PING:
            if not flags & h.ACK:
                self.replies.append(h.frame(h.PING, h.ACK, 0, payload))
        elif ftype == h.GOAWAY:
            self.goaway = (int.from_bytes(payload[:4], "big") & 0x7FFFFFFF, int.from_bytes(payload[4:8], "big"))
        elif ftype == h.PUSH_PROMISE:
            self.problem = "PUSH_PROMISE from the server"

    def end_block(self):
        sid, flags, block = self.block
        self.block = None
        try:
            fields = self.dec.decode(bytes(block), raw=True)
        except Exception as e:  # noqa: BLE001
            self.problem = f"HPACK block the client cannot decode: {type(e).__name__}"
            return
        st = self.stream(sid)
        if st["ended"] or st["reset"] is not None:
            self.problem = f"HEADERS after the end of stream {sid}"
            return
        status = dict(fields).get(b":status")
        if st["status"] is None:
            if status is None or not re.fullmatch(rb"[1-5][0-9][0-9]", status):
                self.problem = f"response HEADERS without a valid :status on stream {sid}"
                return
            if status.startswith(b"1"):
                st["interim"].append(status)
            else:
                st["status"] = int(status)
                st["fields"] = fields
        elif not flags & h.END_STREAM:
            self.problem = f"trailers without END_STREAM on stream {sid}"
            return
        if flags & h.END_STREAM:
            st["ended"] = True

    def settled(self, sids):
        return self.goaway is not None or all(
            self.streams.get(s, {}).get("ended") or self.streams.get(s, {}).get("reset") is not None for s in sids)


def run_h2(port, case, rng):
    o = Outcome()
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2.0)
    except OSError:
        return None
    reader = H2Reader(case.opts.get("max_frame", 16384))
    o.h2 = reader
    sids = [r.meta.get("sid") for r in case.reqs]
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        deadline = time.monotonic() + 20
        stingy = case.opts.get("stingy")

        def pump(timeout):
            r, _, _ = select.select([s], [], [], timeout)
            if not r:
                return None
            before = len(o.received)
            if not recv_some(s, o.received, o=o):
                o.eof = True
                return False
            reader.feed(bytes(o.received[before:]))
            if reader.replies:
                out = b"".join(reader.replies if not stingy else [f for f in reader.replies if f[3] != h.WINDOW_UPDATE])
                reader.replies = []
                if out and not send_all(s, out, deadline):
                    o.eof = True
                    return False
            return True

        pieces = case.pieces()
        for i, (piece, _) in enumerate(pieces):
            if not send_all(s, piece, deadline):
                o.sent_all = False
                break
            if i < len(pieces) - 1 and pump(rng.choice((0, 0.001, 0.005))) is False:
                o.sent_all = False
                break
        rst_after = case.opts.get("rst_stream_after")
        leave = case.opts.get("leave_after")
        o.last_rx = time.monotonic()
        while not o.eof and time.monotonic() < deadline and not reader.problem:
            if rst_after and sum(len(st["data"]) for st in reader.streams.values()) >= rst_after:
                send_all(s, b"".join(h.frame(h.RST_STREAM, 0, sid, struct.pack(">I", 8)) for sid in sids), deadline)
                rst_after = None
                o.left = True
            if leave and len(o.received) >= leave:
                o.left = True
                if case.opts.get("leave_rst"):
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                break
            if reader.settled(sids):
                # Settled: a short look for anything more.
                if pump(0.1) is None:
                    break
                continue
            # A stream whose answer the upstream sent whole must end; others may wait for the
            # backend's idle time-out.
            open_ = [r for r in case.reqs if not reader.settled([r.meta.get("sid")])]
            owed = (not stingy and o.sent_all and all(r.structured for r in case.reqs)
                    and any(awaits_whole(case, case.reqs.index(r)) for r in open_))
            got = pump(STALL_QUIET if owed else 1.5)
            if got is None:
                if owed:
                    o.stalled = f"no frame for {STALL_QUIET:.0f}s with stream(s) {[r.meta.get('sid') for r in open_]} open"
                break
    finally:
        s.close()
    return o


# ---------------------------------------------------------------------------------------
# Oracles
# ---------------------------------------------------------------------------------------


def awaits_whole(case, k):
    """The k-th request of a structured case, whose upstream answer was sent whole and
    framed: the proxy has all it needs to finish it."""
    if k >= len(case.reqs) or not all(r.structured for r in case.reqs):
        return False
    req = case.reqs[k]
    script, meta = case.scripts[req.rid]
    view = upstream_view(script, meta)
    return bool(view and view[2])


def cut_short(o, body, view):
    """An answer the upstream sent whole, cut short after a pause of the backend's idle
    time-out: the proxy held it (a cut-off for credits ends a Content-Length answer short at
    once, not after a pause)."""
    return view is not None and view[2] and len(body) < len(view[1]) and o.max_gap >= STALL_CUT


def content_problem(req, body, complete, view):
    """The relayed payload against the upstream's: a prefix, then maybe the cut-off event."""
    if view is None:
        return None
    _, payload, exact = view
    dialect = ROUTES.get(req.route, (None, None))[1]
    if payload[:len(body)] == body:
        if complete and exact and len(body) < len(payload):
            return f"answer ended cleanly after {len(body)} of the upstream's {len(payload)} payload bytes"
        return None
    if not exact and body[:len(payload)] == payload[:len(body)]:
        return None        # past the part of a damaged answer a strict reader knows
    cut = CUTOFF.get(dialect) if dialect else None
    if cut and body.endswith(cut) and payload[:len(body) - len(cut)] == body[:-len(cut)]:
        return None
    i = next((k for k in range(min(len(body), len(payload))) if body[k] != payload[k]), min(len(body), len(payload)))
    return (f"payload differs from the upstream's at byte {i} of {len(body)} (upstream {len(payload)}): "
            f"got {body[i:i + 24]!r}, upstream {payload[i:i + 24]!r}")


def check_h1(case, o):
    problems = []
    data = bytes(o.received)
    methods = [r.method for r in case.reqs]
    structured = all(r.structured for r in case.reqs)
    eof = o.eof or o.left
    msgs, problem = read_messages(data, methods, eof)
    if problem:
        problems.append(("framing", problem))
        return problems
    if o.stalled:
        return [("stall", o.stalled)]
    if not structured:
        return problems
    finals = [m for m in msgs if m.status is not None]
    if len(finals) > len(case.reqs):
        problems.append(("framing", f"{len(finals)} answers to {len(case.reqs)} requests"))
    for k, (req, m) in enumerate(zip(case.reqs, finals)):
        if req.expect_status and m.status != req.expect_status:
            problems.append(("expect", f"request {k} ({req.route}, {req.meta.get('framing')}) answered {m.status}, "
                                       f"expected {req.expect_status}"))
        script, meta = case.scripts[req.rid]
        view = upstream_view(script, meta, req.rid not in o.unsent)
        if view is None or m.status != view[0] or m.status >= 400 or o.left and m.state != "complete":
            pass
        elif m.framing != "none":
            # A close-delimited answer is whole only if the connection ended with a FIN the
            # client read to, and the client kept reading: one that stops reading (a pause,
            # small reads, blocked sending a pipelined body) holds the proxy back from the
            # upstream, whose idle time-out (10 s) may end the answer; closed with unread
            # pipelined bytes, the connection is reset and what was in flight is lost.
            slow = bool(case.opts.get("slow_read")) or not o.sent_all
            complete = m.state == "complete" and not (m.framing == "close" and (o.left or o.reset or slow))
            p = content_problem(req, m.body, complete, view)
            if p:
                problems.append(("content", f"request {k} ({req.route}, upstream {meta['framing']}, client "
                                            f"{m.framing}{', HTTP/1.0' if req.meta.get('http10') else ''}): {p}"))
            elif m.state == "truncated" and not o.left and not slow and cut_short(o, m.body, view):
                problems.append(("cut-short", f"request {k} ({req.route}, upstream {meta['framing']}, client "
                                              f"{m.framing}): the answer stopped for {o.max_gap:.1f}s, then the "
                                              f"connection closed after {len(m.body)} of {len(view[1])} bytes"))
        if m.state != "complete":
            break
    first = case.reqs[0] if case.reqs else None
    if first and first.expect_continue and o.got_continue_before_body is False and o.sent_all:
        problems.append(("expect", "Expect: 100-continue: no 100 Continue before the body was sent"))
    return problems


def check_h2(case, o):
    r = o.h2
    if r.problem:
        return [("framing", "h2: " + r.problem)]
    if o.stalled:
        return [("stall", "h2: " + o.stalled)]
    problems = []
    for req in case.reqs:
        if not req.structured:
            continue
        st = r.streams.get(req.meta["sid"])
        if not st or st["status"] is None:
            continue
        cl = [v for n, v in st["fields"] if n == b"content-length"]
        if st["ended"] and st["reset"] is None and cl and cl[0].isdigit() and int(cl[0]) != len(st["data"]):
            problems.append(("framing", f"h2 stream {req.meta['sid']} ({req.route}) ended with {len(st['data'])} "
                                        f"DATA bytes, content-length {cl[0].decode()}"))
        script, meta = case.scripts[req.rid]
        view = upstream_view(script, meta, req.rid not in o.unsent)
        if view is None or st["status"] != view[0] or st["status"] >= 400:
            continue
        complete = st["ended"] and st["reset"] is None
        if o.left and not complete:
            continue
        p = content_problem(req, bytes(st["data"]), complete, view)
        if p:
            problems.append(("content", f"h2 stream {req.meta['sid']} ({req.route}, upstream {meta['framing']}): {p}"))
        elif st["reset"] is not None and not o.left and not case.opts.get("stingy") and cut_short(o, st["data"], view):
            problems.append(("cut-short", f"h2 stream {req.meta['sid']} ({req.route}, upstream {meta['framing']}): the "
                                          f"answer stopped for {o.max_gap:.1f}s, then RST_STREAM {st['reset']} after "
                                          f"{len(st['data'])} of {len(view[1])} bytes"))
    return problems


# ---------------------------------------------------------------------------------------
# Campaign
# ---------------------------------------------------------------------------------------


class Harness:
    name = "credits"

    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.workdir = tempfile.mkdtemp(prefix="tollgate-credits-fuzz-")
        self.upstream = Upstream()
        self.gateway = Gateway(args.binary, self.upstream.port, self.workdir, threads=args.threads)
        self.counter = 0
        self.executions = 0
        self.crash_count = 0
        self.hang_count = 0
        self.violation_count = 0
        self.sigs = {}
        self.saved_per_sig = {}
        self.in_flight = {}
        self.history = {}
        self.stats = {}
        self.balance_min = {"big": None, "small": None}
        self.topups = 0
        self.big_topups = 0
        self.balance_checks = 0

    def count(self, key):
        with self.lock:
            self.stats[key] = self.stats.get(key, 0) + 1

    def next_id(self):
        with self.lock:
            self.counter += 1
            return f"k{self.counter}"

    def make_case(self, rng):
        case_id = self.next_id()
        return make_h2_case(rng, case_id) if rng.random() < 0.3 else make_h1_case(rng, case_id)

    def run_case(self, case, rng):
        for rid, (script, _) in case.scripts.items():
            self.upstream.register(rid, script)
        o = (run_h2 if case.proto == "h2" else run_h1)(self.gateway.port, case, rng)
        if o is not None:
            with self.upstream.lock:
                o.unsent = {rid for rid in case.scripts if rid in self.upstream.unsent}
        return o

    def check(self, case, o):
        return check_h2(case, o) if case.proto == "h2" else check_h1(case, o)

    def note(self, case, o):
        if case.proto == "h1":
            msgs, _ = read_messages(bytes(o.received), [r.method for r in case.reqs], True)
            for m in msgs:
                self.count(f"h1 {m.status or '-'}")
                if m.body.endswith(CUTOFF["flowise"]) or m.body.endswith(CUTOFF["openai"]):
                    self.count("cut off (h1)")
        else:
            for st in o.h2.streams.values():
                self.count(f"h2 {st['status'] or ('RST' if st['reset'] is not None else '-')}")
                d = bytes(st["data"])
                if d.endswith(CUTOFF["flowise"]) or d.endswith(CUTOFF["openai"]):
                    self.count("cut off (h2)")
        if o.left:
            self.count("client left mid-answer")

    def worker(self, index, stop_at):
        rng = random.Random(self.args.seed * 1000 + index)
        while time.monotonic() < stop_at and not self.stop_event.is_set():
            case = self.make_case(rng)
            case.started = time.monotonic()
            with self.lock:
                self.in_flight[index] = case
            o = self.run_case(case, rng)
            if o is None:
                with self.lock:
                    self.in_flight.pop(index, None)
                time.sleep(0.05)
                continue
            with self.lock:
                self.executions += 1
                hist = self.history.setdefault(index, [])
                hist.append(case)
                del hist[:-3]
            self.note(case, o)
            for kind, detail in self.check(case, o):
                if kind == "stall":
                    self.problem = ("hang", f"stall in case {case.case_id}: {detail}", case)
                    self.stop_event.set()
                    return
                self.violation(case, kind, detail)
            if self.stop_event.is_set():
                return
            why = h.liveness(self.gateway.port)
            if why:
                self.problem = ("hang", why, None)
                self.stop_event.set()
                return

    def violation(self, case, kind, detail):
        # The signature: the description without the bytes quoted and with numbers as N.
        sig = kind + ": " + re.sub(r"\d+", "N", re.split(r"(?::| at| after) (?:got |b['\"]|byte |\+)", detail)[0])[:100]
        key = hashlib.sha1(sig.encode()).hexdigest()[:10]
        with self.lock:
            self.violation_count += 1
            self.sigs[sig] = self.sigs.get(sig, 0) + 1
            saved = self.saved_per_sig.get(sig, 0)
            self.saved_per_sig[sig] = saved + 1
        if saved >= 3:
            return
        d = os.path.join(self.args.crash_dir, f"violation-{key}-{case.case_id}")
        case.save(d)
        self.write_repro(d, f"{kind}: {detail}", confirmed=None)
        print(f"credits: {kind} violation: {detail}\ncredits: saved {os.path.relpath(d, ROOT)}", flush=True)

    def write_repro(self, d, what, confirmed, log=""):
        with open(os.path.join(d, "REPRODUCE"), "w") as f:
            state = {True: "reproduced alone", False: "NOT reproduced alone (in flight with others)",
                     None: "seen in the campaign"}[confirmed]
            f.write(f"# {state}\n# {what}\ncd {ROOT}\n/usr/bin/python3 Fuzz/blackbox/credits_fuzz.py --binary "
                    f"{os.path.relpath(self.args.binary, ROOT)} --threads {self.args.threads} --replay "
                    f"{os.path.relpath(d, ROOT)}\n")
        if log:
            with open(os.path.join(d, "stderr.txt"), "w") as f:
                f.write(log)

    def balances(self, topup):
        """Both consumers' balances: never negative. The small one is topped up when low."""
        for account in ("big", "small"):
            b = self.gateway.balance(account)
            with self.lock:
                self.balance_checks += 1
            if b is None:
                continue
            with self.lock:
                cur = self.balance_min[account]
                self.balance_min[account] = b if cur is None else min(cur, b)
            if b < 0:
                with self.lock:
                    self.violation_count += 1
                    sig = f"balance: {account} negative"
                    self.sigs[sig] = self.sigs.get(sig, 0) + 1
                print(f"credits: balance violation: {account} has {b}", flush=True)
            if topup and account == "small" and b < SMALL_LOW:
                if self.gateway.grant("small", SMALL_GRANT):
                    with self.lock:
                        self.topups += 1
            if topup and account == "big" and b < BIG_GRANT // 10:
                # A backend's usage figure wins, however big: bogus ones drain the account.
                if self.gateway.grant("big", BIG_GRANT):
                    with self.lock:
                        self.big_topups += 1

    def topper(self, stop_at):
        while time.monotonic() < stop_at and not self.stop_event.wait(1.0):
            if self.gateway.proxy and self.gateway.proxy.poll() is None:
                self.balances(topup=True)

    def monitor(self, stop_at):
        while time.monotonic() < stop_at and not self.stop_event.is_set():
            report = self.gateway.crash_report()
            if report:
                self.stop_event.set()
                return ("crash", report, None)
            time.sleep(0.05)
        report = self.gateway.crash_report()
        if report:
            return ("crash", report, None)
        return getattr(self, "problem", None)

    def candidates(self):
        with self.lock:
            cands = list(self.in_flight.values())
            for hist in self.history.values():
                cands += [c for c in hist if c not in cands]
        cands.sort(key=lambda c: -getattr(c, "started", 0))
        return cands[:12]

    def restart(self):
        self.gateway.stop()
        self.balances(topup=False)     # after the stop: everything settled and written
        self.gateway.start()

    def reproduce(self, case, kind):
        self.restart()
        o = self.run_case(case, random.Random(0))
        if kind == "crash":
            end = time.monotonic() + 1.5
            while time.monotonic() < end:
                r = self.gateway.crash_report()
                if r:
                    return ("crash", r)
                time.sleep(0.05)
            return None
        if o is not None:
            for k, detail in self.check(case, o):
                if k == "stall":
                    return ("hang", detail)
        why = h.liveness(self.gateway.port)
        return ("hang", why) if why else None

    def gdb_stacks(self):
        pid = self.gateway.pid
        if not pid or not shutil.which("gdb"):
            return ""
        try:
            r = subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt 30"], capture_output=True,
                               text=True, timeout=90)
            return pf.demangle(r.stdout)
        except (OSError, subprocess.SubprocessError) as e:
            return f"gdb failed: {e}"

    def handle(self, problem, deadline):
        kind, detail, culprit = problem
        if kind == "crash":
            sig = pf.signature(detail["log"])
            print(f"credits: crash (exit {detail['exit']}): {sig}", flush=True)
            self.crash_count += 1
        else:
            sig = "hang: " + re.sub(r"\d+", "N", detail)[:60]
            print(f"credits: hang: {detail}", flush=True)
            self.hang_count += 1
        with self.lock:
            self.sigs[sig] = self.sigs.get(sig, 0) + 1
            saved = self.saved_per_sig.get(sig, 0)
        if saved >= 3:
            self.restart()
            return
        stacks = self.gdb_stacks() if kind == "hang" else ""
        found = None
        cands = ([culprit] if culprit else []) + [c for c in self.candidates() if c is not culprit]
        for case in cands:
            if time.monotonic() > deadline:
                break
            r = self.reproduce(case, kind)
            if r:
                found = (case, r)
                break
        key = hashlib.sha1(sig.encode()).hexdigest()[:10]
        if found:
            case, r = found
            if r[0] == "hang":
                stacks = self.gdb_stacks() or stacks
            d = os.path.join(self.args.crash_dir, f"{kind}-{key}-{case.case_id}")
            case.save(d)
            log = r[1]["log"] if kind == "crash" else self.gateway.read_log(self.gateway.proxy_log)
            self.write_repro(d, sig, True, log)
            with open(os.path.join(d, "stack.txt"), "w") as f:
                f.write(sig + "\n\n" + (pf.summarize_stack(log) if kind == "crash" else str(r[1])) + "\n" + stacks)
            print(f"credits: saved {os.path.relpath(d, ROOT)} (reproduced alone)", flush=True)
        else:
            for case in cands[:6]:
                d = os.path.join(self.args.crash_dir, f"{kind}-{key}-{case.case_id}")
                case.save(d)
                self.write_repro(d, sig, False, detail["log"] if kind == "crash" else "")
                if stacks:
                    with open(os.path.join(d, "stack.txt"), "w") as f:
                        f.write(sig + "\n\n" + stacks)
            print("credits: not reproduced alone; saved the cases in flight", flush=True)
        with self.lock:
            self.saved_per_sig[sig] = saved + 1
        self.restart()

    def run(self):
        start = time.monotonic()
        stop_at = start + self.args.duration
        self.gateway.start()
        try:
            while time.monotonic() < stop_at:
                self.stop_event = threading.Event()
                self.problem = None
                self.in_flight, self.history = {}, {}
                threads = [threading.Thread(target=self.worker, args=(i, stop_at), daemon=True)
                           for i in range(self.args.workers)]
                threads.append(threading.Thread(target=self.topper, args=(stop_at,), daemon=True))
                for t in threads:
                    t.start()
                problem = self.monitor(stop_at)
                self.stop_event.set()
                for t in threads:
                    t.join(timeout=30)
                if problem is None:
                    report = self.gateway.crash_report()
                    problem = ("crash", report, None) if report else None
                if problem:
                    self.handle(problem, max(stop_at, time.monotonic()) + 60)
                    if self.args.stop_on_crash:
                        break
        finally:
            self.gateway.stop()
            if self.gateway.proxy is not None:
                self.balances(topup=False)
            self.upstream.stop()
            shutil.rmtree(self.workdir, ignore_errors=True)
        return time.monotonic() - start

    def report(self, elapsed):
        top = sorted(self.stats.items(), key=lambda kv: -kv[1])[:24]
        print("credits: answers " + ", ".join(f"{k}:{v}" for k, v in top), flush=True)
        print(f"credits: balances: lowest big {self.balance_min['big']}, lowest small {self.balance_min['small']} "
              f"({self.balance_checks} checks, {self.topups} top-ups of {SMALL_GRANT}, big {self.big_topups}); upstream saw "
              f"{self.upstream.requests} requests", flush=True)
        for sig, n in sorted(self.sigs.items()):
            print(f"credits: signature ({n}x): {sig}", flush=True)
        print(f"credits: executions={self.executions} duration={elapsed:.0f} crashes={self.crash_count} "
              f"hangs={self.hang_count} violations={self.violation_count} unique={len(self.sigs)}", flush=True)

    def replay(self, directory):
        case = Case.load(directory)
        self.gateway.start()
        try:
            o = self.run_case(case, random.Random(0))
            end = time.monotonic() + 1.5
            report = None
            while time.monotonic() < end and report is None:
                report = self.gateway.crash_report()
                time.sleep(0.05)
            if report:
                print(f"replay: CRASH (exit {report['exit']})\n{pf.signature(report['log'])}\n"
                      f"{pf.summarize_stack(report['log'])}")
                return 1
            if o is None:
                print("replay: could not connect")
                return 1
            print(f"replay: {len(o.received)} bytes received{', EOF' if o.eof else ''}: {bytes(o.received[:300])!r}")
            problems = self.check(case, o)
            for kind, detail in problems:
                print(f"replay: {kind}: {detail}")
            why = h.liveness(self.gateway.port)
            if why:
                print(f"replay: HANG: {why}")
                return 1
            print("replay: " + ("no problem" if not problems else f"{len(problems)} problem(s)"))
            return 1 if problems else 0
        finally:
            self.gateway.stop()
            self.upstream.stop()
            shutil.rmtree(self.workdir, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--binary", default=os.environ.get("TOLLGATE_BIN", pf.DEFAULT_BINARY))
    p.add_argument("--duration", type=float, default=60.0, help="seconds to fuzz (default 60)")
    p.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    p.add_argument("--workers", type=int, default=3, help="concurrent client connections")
    p.add_argument("--threads", type=int, default=2, help="event loops of the proxy")
    p.add_argument("--crash-dir", default=os.path.join(ROOT, "Fuzz", "crashes", "credits"))
    p.add_argument("--stop-on-crash", action="store_true")
    p.add_argument("--replay", metavar="DIR", help="replay one saved case on a fresh proxy")
    args = p.parse_args()
    if not os.access(args.binary, os.X_OK):
        sys.exit(f"no tollgate binary at {args.binary} (swift build --scratch-path .build-asan -Xswiftc -sanitize=address)")
    args.binary = os.path.abspath(args.binary)
    hs = Harness(args)
    if args.replay:
        sys.exit(hs.replay(args.replay))
    print(f"credits: seed {args.seed}, {args.duration:.0f}s, {args.workers} workers, binary {args.binary}", flush=True)
    elapsed = hs.run()
    hs.report(elapsed)
    sys.exit(1 if (hs.crash_count or hs.hang_count or hs.violation_count) else 0)


if __name__ == "__main__":
    main()
