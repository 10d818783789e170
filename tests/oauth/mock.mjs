// A lenient OAuth 2.0 server (oauth2-mock-server) on loopback for Latchkey's tests, with fault
// injection and reshaped token responses.
//
//   node tests/oauth/mock.mjs '{"faults": [{"grant_type": "refresh_token", "status": 400,
//                                          "body": {"error": "invalid_grant"}}]}'
//
// What it is: GET /authorize redirects straight back to `redirect_uri` with a code and the state
// (no login page); POST /token answers every grant type with a JWT access token, and (except for
// client_credentials) an id_token and a random refresh token; PKCE is checked when the authorize
// request had a code_challenge. It accepts any client, unknown codes and unknown refresh tokens,
// and /revoke revokes nothing. Use oidc.mjs where strictness matters.
//
// Configuration: one JSON object, from the first argument or else from the MOCK_CONFIG environment
// variable; replace it at run time with `PUT /__config` (same JSON; the `times` counters restart).
//   faults    [fault]    the first fault that matches a token request and has `times` left replaces
//                        the whole response:
//     grant_type  string   only for this grant type (default: any)
//     times       number   how many responses it replaces (default: unlimited)
//     status      number   HTTP status (default 400)
//     body        any      JSON body (default {"error": "invalid_request"})
//     raw_body    string   sent as is instead of `body`, with `content_type` (default text/html)
//     headers     object   extra response headers, e.g. {"Retry-After": "2"}
//   revoke_faults [{times?, status?, headers?}]  the first with `times` left answers a revocation
//                        request with that status (default 503) instead of 200; counted in
//                        `revoke_faults_served`, while `revocations` counts the ones that succeeded
//   rewrites  [rewrite]  every rewrite that matches a successful token response and has `times` left
//                        is applied, in order:
//     grant_type  string   only for this grant type (default: any)
//     times       number   how many responses it rewrites (default: unlimited)
//     nest        {"under": "authed_user", "fields": ["access_token", ...]}: moves these fields
//                          (default ["access_token"]) into an object under that key (Slack's shape)
//     set         object   fields to add or override after nesting; null removes one. E.g.
//                          {"expires_in": "3600"}, {"expires_in": null}, {"instance_url": "https://x"}
//
// Test-only routes: GET /__stats returns
//   {"token_requests": {"authorization_code": n, "refresh_token": n, "client_credentials": n, ...},
//    "faults_served": n, "authorize_requests": n, "revocations": n, "introspections": n,
//    "events": [{"type": "token", "grant_type": "...", "status": 200, "fault": false}, ...]}
// Only token requests that pass the mock's own validation (a grant_type is present, PKCE matches)
// are counted: the mock answers the others with 400 invalid_request before any hook runs.
//
// Prints exactly one line to stdout, `mock listening on http://127.0.0.1:PORT`, once it accepts
// connections. Exits when its stdin reaches EOF (so it dies with the process that started it) or on
// SIGTERM/SIGINT.

import { createServer } from 'node:http';

import { OAuth2Issuer, OAuth2Service } from 'oauth2-mock-server';

function parseConfig(text) {
  const value = JSON.parse(text);
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new Error('the configuration must be a JSON object');
  }
  for (const key of ['faults', 'rewrites', 'revoke_faults']) {
    if (value[key] !== undefined && !Array.isArray(value[key])) throw new Error(`\`${key}\` must be an array`);
  }
  // Copies, so `times` can count down without touching the caller's object.
  return {
    faults: (value.faults ?? []).map((f) => ({ ...f })),
    rewrites: (value.rewrites ?? []).map((r) => ({ ...r })),
    revoke_faults: (value.revoke_faults ?? []).map((f) => ({ ...f })),
  };
}

let config;
try {
  config = parseConfig(process.argv[2] ?? process.env.MOCK_CONFIG ?? '{}');
} catch (err) {
  console.error(`mock.mjs: bad configuration: ${err.message}`);
  process.exit(2);
}

const events = [];
let authorizeRequests = 0;
let revocations = 0;
let revokeFaults = 0;
let introspections = 0;

function stats() {
  const tokenRequests = { authorization_code: 0, refresh_token: 0, client_credentials: 0 };
  let faultsServed = 0;
  for (const e of events) {
    tokenRequests[e.grant_type] = (tokenRequests[e.grant_type] ?? 0) + 1;
    if (e.fault) faultsServed += 1;
  }
  return {
    token_requests: tokenRequests,
    faults_served: faultsServed,
    authorize_requests: authorizeRequests,
    revocations,
    revoke_faults_served: revokeFaults,
    introspections,
    events,
  };
}

// The rules that apply to `grantType` and have uses left, in order.
function applicable(rules, grantType) {
  return rules.filter((r) => (r.grant_type === undefined || r.grant_type === grantType) && (r.times ?? 1) > 0);
}
function use(rule) {
  if (rule.times !== undefined) rule.times -= 1;
}

const issuer = new OAuth2Issuer();
await issuer.keys.generate('RS256');
const service = new OAuth2Service(issuer);

service.on('beforeAuthorizeRedirect', () => {
  authorizeRequests += 1;
});
service.on('beforeRevoke', (revokeResponse, req) => {
  // revoke_faults: [{times?, status=503, headers?}]: the first with uses left answers instead.
  const [fault] = config.revoke_faults.filter((f) => (f.times ?? 1) > 0);
  if (fault) {
    use(fault);
    revokeResponse.statusCode = fault.status ?? 503;
    for (const [name, value] of Object.entries(fault.headers ?? {})) req.res.set(name, String(value));
    revokeFaults += 1;
    return;
  }
  revocations += 1;
});
service.on('beforeIntrospect', () => {
  introspections += 1;
});

service.on('beforeResponse', (response, req) => {
  const grantType = req.body.grant_type;
  const [fault] = applicable(config.faults, grantType);
  if (fault) {
    use(fault);
    response.statusCode = fault.status ?? 400;
    response.body = fault.body ?? { error: 'invalid_request' };
    for (const [name, value] of Object.entries(fault.headers ?? {})) req.res.set(name, String(value));
    if (typeof fault.raw_body === 'string') {
      // The service ends with res.json(body): send the raw text instead.
      req.res.json = function sendRaw() {
        return this.type(fault.content_type ?? 'text/html').send(fault.raw_body);
      };
    }
    events.push({ type: 'token', grant_type: grantType, status: response.statusCode, fault: true });
    return;
  }
  for (const rewrite of applicable(config.rewrites, grantType)) {
    use(rewrite);
    const body = response.body;
    if (rewrite.nest) {
      const nested = {};
      for (const field of rewrite.nest.fields ?? ['access_token']) {
        if (field in body) {
          nested[field] = body[field];
          delete body[field];
        }
      }
      body[rewrite.nest.under] = { ...(body[rewrite.nest.under] ?? {}), ...nested };
    }
    for (const [field, value] of Object.entries(rewrite.set ?? {})) {
      if (value === null) delete body[field];
      else body[field] = value;
    }
  }
  events.push({ type: 'token', grant_type: grantType, status: response.statusCode, fault: false });
});

const handler = service.requestHandler;

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function sendJson(res, status, value) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(value));
}

const server = createServer(async (req, res) => {
  const path = new URL(req.url, 'http://127.0.0.1').pathname;
  if (path === '/__stats' && req.method === 'GET') {
    sendJson(res, 200, stats());
  } else if (path === '/__config' && req.method === 'PUT') {
    try {
      config = parseConfig(await readBody(req));
      sendJson(res, 200, config);
    } catch (err) {
      sendJson(res, 400, { error: err.message });
    }
  } else {
    handler(req, res);
  }
});
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(0, '127.0.0.1', resolve);
});
issuer.url = `http://127.0.0.1:${server.address().port}`;

function shutdown() {
  server.close();
  server.closeAllConnections();
  process.exit(0);
}
process.stdin.on('end', shutdown);
process.stdin.on('error', shutdown);
process.stdin.resume();
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

process.stdout.write(`mock listening on ${issuer.url}\n`);
