"""mitmproxy peer for the credproxy benchmarks.

* replaces the placeholder in request headers with the secret (the credential injection);
* replaces the secret in response bodies and headers with the placeholder (scrubbing);
* connects every upstream to 127.0.0.1 (the benchmark upstream), keeping SNI and Host.

Environment: BENCH_PLACEHOLDER, BENCH_SECRET.
"""
import os

from mitmproxy import http
from mitmproxy.proxy import server_hooks

PLACEHOLDER = os.environ.get("BENCH_PLACEHOLDER", "")
SECRET = os.environ.get("BENCH_SECRET", "")
PH_B, SEC_B = PLACEHOLDER.encode(), SECRET.encode()


def server_connect(data: server_hooks.ServerConnectionHookData) -> None:
    _, port = data.server.address
    data.server.address = ("127.0.0.1", port)


def request(flow: http.HTTPFlow) -> None:
    for k, v in flow.request.headers.items(multi=True):
        if PLACEHOLDER in v:
            flow.request.headers[k] = v.replace(PLACEHOLDER, SECRET)


def response(flow: http.HTTPFlow) -> None:
    r = flow.response
    if r is None:
        return
    for k, v in r.headers.items(multi=True):
        if SECRET in v:
            r.headers[k] = v.replace(SECRET, PLACEHOLDER)
    if r.raw_content and SEC_B in r.raw_content:
        r.content = r.content.replace(SEC_B, PH_B)
