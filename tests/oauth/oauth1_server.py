"""An OAuth 1.0a provider (RFC 5849) for the tests: oauthlib's provider endpoints
(RequestTokenEndpoint, AuthorizationEndpoint, AccessTokenEndpoint, ResourceEndpoint) over
http.server, on 127.0.0.1 and a free port. tests/support/oauth1.rs starts it from .venv-oauth1/
(tests/oauth/oauth1-requirements.txt) and reads the line `oauth1 listening on URL`; it exits when
its stdin closes (the test binary ended).

Routes:
  POST /admin/clients      {"client_key", "client_secret", "rsa_public_key"?}: registers a consumer
  POST /request_token      temporary credentials (section 2.1; oauth_callback required)
  GET  /authorize          the user approves at once: 302 to the callback with oauth_verifier
  POST /access_token       token credentials (section 2.3)
  GET  /resource           a protected resource: 200 {"client_key", "token"} if the signature holds
  GET  /admin/stats?client_key=K  {"access_tokens": n}: access tokens issued to that consumer
Every signature is checked by oauthlib: HMAC-SHA1, HMAC-SHA256, RSA-SHA1 (PyJWT, cryptography)
and PLAINTEXT; nonces are remembered, so a replayed request is refused.
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

from oauthlib.oauth1 import (
    AccessTokenEndpoint,
    AuthorizationEndpoint,
    RequestTokenEndpoint,
    RequestValidator,
    ResourceEndpoint,
)

LOCK = threading.Lock()
CLIENTS = {}  # client_key -> {"secret", "rsa"}
REQUEST_TOKENS = {}  # token -> {"client_key", "secret", "callback", "verifier"}
ACCESS_TOKENS = {}  # token -> {"client_key", "secret"}
NONCES = set()
ISSUED = {}  # client_key -> access tokens issued


class Validator(RequestValidator):
    """Every check oauthlib asks of a provider, over the dictionaries above."""

    enforce_ssl = False  # loopback http in tests
    allowed_signature_methods = ("HMAC-SHA1", "HMAC-SHA256", "RSA-SHA1", "PLAINTEXT")

    def _safe(self, value):
        return bool(value) and set(value) <= self.safe_characters

    # Keys and tokens here are shorter or longer than oauthlib's default bounds.
    check_client_key = check_request_token = check_access_token = check_verifier = _safe

    def check_nonce(self, nonce):
        # Any unreserved characters (oauth1-request's nonces are base64url), as providers take them.
        return bool(nonce) and set(nonce) <= self.safe_characters | set("-._~")

    dummy_client = "dummy-client"
    dummy_request_token = "dummy-request-token"
    dummy_access_token = "dummy-access-token"

    def get_client_secret(self, client_key, request):
        return CLIENTS.get(client_key, {}).get("secret", "dummy-secret")

    def get_rsa_key(self, client_key, request):
        return CLIENTS.get(client_key, {}).get("rsa") or ""

    def get_request_token_secret(self, client_key, token, request):
        rt = REQUEST_TOKENS.get(token)
        return rt["secret"] if rt and rt["client_key"] == client_key else "dummy-secret"

    def get_access_token_secret(self, client_key, token, request):
        at = ACCESS_TOKENS.get(token)
        return at["secret"] if at and at["client_key"] == client_key else "dummy-secret"

    def get_default_realms(self, client_key, request):
        return []

    def get_realms(self, token, request):
        return []

    def get_redirect_uri(self, token, request):
        return REQUEST_TOKENS[token]["callback"]

    def invalidate_request_token(self, client_key, request_token, request):
        with LOCK:
            REQUEST_TOKENS.pop(request_token, None)

    def validate_client_key(self, client_key, request):
        return client_key in CLIENTS

    def validate_request_token(self, client_key, token, request):
        rt = REQUEST_TOKENS.get(token)
        return bool(rt) and rt["client_key"] == client_key

    def validate_access_token(self, client_key, token, request):
        at = ACCESS_TOKENS.get(token)
        return bool(at) and at["client_key"] == client_key

    def validate_timestamp_and_nonce(self, client_key, timestamp, nonce, request, request_token=None, access_token=None):
        key = (client_key, timestamp, nonce, request_token, access_token)
        with LOCK:
            if key in NONCES:
                return False
            NONCES.add(key)
        return True

    def validate_redirect_uri(self, client_key, redirect_uri, request):
        return redirect_uri.startswith("http://127.0.0.1:") or redirect_uri.startswith("http://localhost:")

    def validate_requested_realms(self, client_key, realms, request):
        return True

    def validate_realms(self, client_key, token, request, uri=None, realms=None):
        return True

    def validate_verifier(self, client_key, token, verifier, request):
        rt = REQUEST_TOKENS.get(token)
        return bool(rt) and rt["client_key"] == client_key and rt.get("verifier") == verifier

    def verify_request_token(self, token, request):
        return token in REQUEST_TOKENS

    def verify_realms(self, token, realms, request):
        return True

    def save_request_token(self, token, request):
        with LOCK:
            REQUEST_TOKENS[token["oauth_token"]] = {
                "client_key": request.client_key,
                "secret": token["oauth_token_secret"],
                "callback": request.redirect_uri,
            }

    def save_verifier(self, token, verifier, request):
        with LOCK:
            REQUEST_TOKENS[token]["verifier"] = verifier["oauth_verifier"]

    def save_access_token(self, token, request):
        with LOCK:
            ACCESS_TOKENS[token["oauth_token"]] = {"client_key": request.client_key, "secret": token["oauth_token_secret"]}
            ISSUED[request.client_key] = ISSUED.get(request.client_key, 0) + 1


VALIDATOR = Validator()
REQUEST_TOKEN = RequestTokenEndpoint(VALIDATOR)
AUTHORIZE = AuthorizationEndpoint(VALIDATOR)
ACCESS_TOKEN = AccessTokenEndpoint(VALIDATOR)
RESOURCE = ResourceEndpoint(VALIDATOR)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _uri(self):
        return f"http://{self.headers['Host']}{self.path}"

    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length).decode() if length else ""

    def _answer(self, status, body="", headers=None, content_type="application/x-www-form-urlencoded"):
        data = (body or "").encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            if k.lower() != "content-type":
                self.send_header(k, v)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        path = self.path.split("?")[0]
        body = self._body()
        headers = dict(self.headers)
        if path == "/admin/clients":
            client = json.loads(body)
            with LOCK:
                CLIENTS[client["client_key"]] = {"secret": client.get("client_secret", ""), "rsa": client.get("rsa_public_key")}
            return self._answer(201, "{}", content_type="application/json")
        if path == "/request_token":
            h, b, s = REQUEST_TOKEN.create_request_token_response(self._uri(), "POST", body, headers)
            return self._answer(s, b, h)
        if path == "/access_token":
            h, b, s = ACCESS_TOKEN.create_access_token_response(self._uri(), "POST", body, headers)
            return self._answer(s, b, h)
        self._answer(404)

    def do_GET(self):
        path = self.path.split("?")[0]
        headers = dict(self.headers)
        if path == "/authorize":
            # The user logs in and approves at once.
            try:
                h, b, s = AUTHORIZE.create_authorization_response(self._uri(), "GET", None, headers, realms=[])
            except Exception as e:  # an unknown or used request token
                return self._answer(400, f"error={type(e).__name__}")
            return self._answer(s, b or "", h)
        if path == "/resource":
            valid, request = RESOURCE.validate_protected_resource_request(self._uri(), "GET", None, headers, realms=[])
            if not valid:
                return self._answer(401, '{"error": "invalid signature or token"}', content_type="application/json")
            answer = {"client_key": request.client_key, "token": request.resource_owner_key, "method": request.signature_method}
            return self._answer(200, json.dumps(answer), content_type="application/json")
        if path == "/admin/stats":
            key = parse_qs(self.path.partition("?")[2]).get("client_key", [""])[0]
            with LOCK:
                return self._answer(200, json.dumps({"access_tokens": ISSUED.get(key, 0)}), content_type="application/json")
        self._answer(404)


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"oauth1 listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    sys.stdin.read()  # returns when the test binary exits


if __name__ == "__main__":
    main()
