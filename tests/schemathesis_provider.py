"""An OAuth provider that always answers, for tests/schemathesis.sh: its token endpoint
(RFC 6749 section 5.1) grants every request, whatever the grant (a refresh token with every
grant but client credentials), and its revocation endpoint (RFC 7009 section 2.2) answers 200.

Without it the schemathesis definitions pointed at a loopback port where nothing listens, so any
generated request that reached the provider (a lookup of an imported, expired token; a
client-credentials lookup) answered 502 `provider-error`: right for an outage, but a 5xx that the
`not_a_server_error` check counts as a failure, found or not depending on the example budget.
With a provider that answers, reaching it is no outage.

Listens on 127.0.0.1, on a free port, and prints `provider listening on http://127.0.0.1:PORT`;
stops when its standard input closes (the script's coprocess pipe) or on SIGTERM.

Usage: python3 tests/schemathesis_provider.py
"""

import itertools
import json
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

issued = itertools.count(1)


class Provider(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        if self.path.startswith("/revoke"):
            self.answer(200, b"")
            return
        n = next(issued)
        body = {"access_token": f"st-access-{n}", "token_type": "Bearer", "expires_in": 3600}
        # No refresh token for client credentials (RFC 6749 section 4.4.3).
        if form.get("grant_type") != ["client_credentials"]:
            body["refresh_token"] = f"st-refresh-{n}"
        self.answer(200, json.dumps(body).encode(), "application/json")

    def do_GET(self):
        self.answer(404, b"")

    def answer(self, status, body, content_type=None):
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-store")
        self.send_header("Pragma", "no-cache")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Provider)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"provider listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    sys.stdin.read()  # until the caller closes the pipe or exits
    server.shutdown()


if __name__ == "__main__":
    main()
