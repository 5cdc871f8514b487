#!/usr/bin/env python3
"""A tiny sample app for the Opsplane demo (standard library only).

It asks its local agent for flags on every page view and has a payment
endpoint that a kill switch can stop at the agent's proxy.
"""
import argparse
import json
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

AGENT = "http://127.0.0.1:7600"


def flags():
    try:
        with urllib.request.urlopen(AGENT + "/v1/flags?targetingKey=demo-user", timeout=1) as r:
            return json.load(r)
    except Exception as e:  # the agent is down: use code defaults
        return {"error": str(e), "flags": {}}


class App(BaseHTTPRequestHandler):
    def _send(self, status, body, ctype="application/json"):
        data = body.encode()
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            return self._send(200, '{"status":"ok"}')
        f = flags()
        banner = f.get("flags", {}).get("banner-color", {}).get("value", "grey")
        checkout = f.get("flags", {}).get("new-checkout", {}).get("value", False)
        page = f"""<!doctype html><title>Demo shop</title>
<body style="font-family:sans-serif;max-width:40rem;margin:2rem auto">
<div style="background:{banner};color:white;padding:1rem">Demo shop (banner-color = {banner})</div>
<p>new-checkout flag: <b>{checkout}</b> (revision {f.get('revision')})</p>
<form method=post action=/api/pay><button>Pay 10 EUR</button></form></body>"""
        self._send(200, page, "text/html; charset=utf-8")

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        if self.path.startswith("/api/pay"):
            return self._send(200, '{"paid": true, "amount": 10}')
        self._send(404, '{"error": "not found"}')

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--agent", default=AGENT)
    a = p.parse_args()
    AGENT = a.agent
    ThreadingHTTPServer(("127.0.0.1", a.port), App).serve_forever()
