// A scripted OAuth 2.0 provider on loopback for Latchkey's quirk tests: it bends RFC 6749 exactly
// as its configuration says (refusals inside a 200, JSON served as text/plain, form-encoded
// answers, 201s, tokens one object down, odd scopes...) and records every request it gets.
// Node.js built-ins only (no npm package).
//
//   node tests/oauth/quirks.mjs '{"token": {"refresh_token": [{"status": 200,
//                                  "json": {"error": "bad_refresh_token"}}]}}'
//
// Routes:
//   GET  /authorize   records the query, then 302 to its `redirect_uri` with `code` (random),
//                     `state` (as received) and every `callback_params` entry. 400 without a
//                     redirect_uri.
//   POST /token       (form body) records the request, then answers from the script of its
//                     `grant_type` (see `token` below).
//   POST /revoke      records the request, then answers `revoke`.
//   GET  /.well-known/openid-configuration   issuer, authorization_endpoint, token_endpoint,
//                     revocation_endpoint (what tests/support/oauth.rs reads to find them).
//
// Configuration: one JSON object, from the first argument or else from the QUIRKS_CONFIG
// environment variable; replace it at run time with `PUT /__config` (same JSON; the answer
// cursors restart, the records stay). Every key is optional:
//   token           {"authorization_code": [answer...], "refresh_token": [...],
//                    "client_credentials": [...], <any grant type>: [...]}
//                   The answers of a grant type are used in order and the last one repeats; a
//                   single answer may be given without the array. A grant type without a script
//                   gets the default answer: 200 application/json {"access_token": fresh,
//                   "token_type": "Bearer", "expires_in": 3600, "refresh_token": fresh,
//                   "scope": the request's `scope`, else (code exchange) the scope of the
//                   authorize request that issued the code, else "read"}.
//   revoke          answer   (default: 200 with an empty body)
//   callback_params {name: value}   added to the redirect of GET /authorize, e.g.
//                   {"realmId": "123", "accounts-server": "https://accounts.zoho.eu"}
//
// An answer:
//   status        number   HTTP status (default 200)
//   content_type  string   Content-Type (default application/json with `json`, text/plain with
//                          `raw`; nothing for an empty body)
//   headers       object   extra response headers, e.g. {"Retry-After": "30"}
//   json          any      the body, serialized as JSON
//   raw           string   the body as is, instead of `json`
//   delay_ms      number   wait this long before answering
// In `json` (every string in it, at any depth) and `raw`, `{{access_token}}` and `{{refresh_token}}`
// are replaced by fresh unique values (`at-<n>-<random>`, `rt-<n>-<random>`): new ones for every
// answer (the same value where one placeholder appears twice in one answer). Write any other token
// (a bot token, a planted canary) literally.
//
// Test-only routes:
//   GET  /__requests  everything recorded so far, oldest first:
//     {"authorize": [{"path", "query": {name: value}}],
//      "token":     [{"path", "grant_type", "form": {name: value}, "basic": null | {"user",
//                     "password"}, "status": answered status, "issued": {"access_token"?,
//                     "refresh_token"?}}],
//      "revoke":    [{"path", "form", "basic", "status"}]}
//     `basic` is the Authorization: Basic header decoded: base64, split at the first `:`, then
//     each half form-urldecoded (RFC 6749 section 2.3.1). `issued` holds the fresh tokens the
//     answer carried (only those its placeholders, or the default answer, used).
//   PUT  /__config    replaces the configuration (400 with {"error"} if it is not valid)
//   POST /__reset     clears the records
//
// Prints exactly one line to stdout, `quirks listening on http://127.0.0.1:PORT`, once it accepts
// connections. Exits when its stdin reaches EOF (so it dies with the process that started it) or
// on SIGTERM/SIGINT.

import { createServer } from 'node:http';
import { randomBytes } from 'node:crypto';

function fail(message) {
  throw new Error(message);
}

function checkAnswer(answer, where) {
  if (answer === null || typeof answer !== 'object' || Array.isArray(answer)) fail(`${where} must be an object`);
  const known = ['status', 'content_type', 'headers', 'json', 'raw', 'delay_ms'];
  for (const key of Object.keys(answer)) {
    if (!known.includes(key)) fail(`${where}: unknown key \`${key}\` (one of ${known.join(', ')})`);
  }
  if (answer.status !== undefined && !Number.isInteger(answer.status)) fail(`${where}.status must be an integer`);
  if (answer.raw !== undefined && typeof answer.raw !== 'string') fail(`${where}.raw must be a string`);
  if (answer.raw !== undefined && answer.json !== undefined) fail(`${where}: give \`json\` or \`raw\`, not both`);
  if (answer.headers !== undefined && (typeof answer.headers !== 'object' || Array.isArray(answer.headers))) {
    fail(`${where}.headers must be an object`);
  }
  return answer;
}

function parseConfig(text) {
  const value = JSON.parse(text);
  if (value === null || typeof value !== 'object' || Array.isArray(value)) fail('the configuration must be a JSON object');
  for (const key of Object.keys(value)) {
    if (!['token', 'revoke', 'callback_params'].includes(key)) fail(`unknown key \`${key}\``);
  }
  const token = {};
  const scripts = value.token ?? {};
  if (typeof scripts !== 'object' || Array.isArray(scripts)) fail('`token` must be an object of grant type to answers');
  for (const [grant, answers] of Object.entries(scripts)) {
    const list = Array.isArray(answers) ? answers : [answers];
    if (list.length === 0) fail(`token.${grant} has no answer`);
    token[grant] = list.map((a, i) => checkAnswer(a, `token.${grant}[${i}]`));
  }
  const callbackParams = value.callback_params ?? {};
  if (typeof callbackParams !== 'object' || Array.isArray(callbackParams)) fail('`callback_params` must be an object');
  return {
    token,
    revoke: value.revoke === undefined ? null : checkAnswer(value.revoke, 'revoke'),
    callback_params: callbackParams,
  };
}

let config;
try {
  config = parseConfig(process.argv[2] ?? process.env.QUIRKS_CONFIG ?? '{}');
} catch (err) {
  console.error(`quirks.mjs: bad configuration: ${err.message}`);
  process.exit(2);
}

// Where each grant type's script is: the index of the next answer.
let cursors = {};
let records = { authorize: [], token: [], revoke: [] };
// The scope of the authorize request that issued each code, for the default code-exchange answer.
const scopeOfCode = new Map();
let counter = 0;

function fresh(prefix) {
  counter += 1;
  return `${prefix}-${counter}-${randomBytes(12).toString('base64url')}`;
}

function nextAnswer(grant) {
  const script = config.token[grant];
  if (!script) return null;
  const at = cursors[grant] ?? 0;
  cursors[grant] = at + 1;
  return script[Math.min(at, script.length - 1)];
}

// Replaces the placeholders in `text`, minting each token the first time it is needed.
function fill(text, issued) {
  return text.replace(/\{\{(access_token|refresh_token)\}\}/g, (_, name) => {
    if (issued[name] === undefined) issued[name] = fresh(name === 'access_token' ? 'at' : 'rt');
    return issued[name];
  });
}

function fillJson(value, issued) {
  if (typeof value === 'string') return fill(value, issued);
  if (Array.isArray(value)) return value.map((v) => fillJson(v, issued));
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, fillJson(v, issued)]));
  }
  return value;
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function formDecode(s) {
  try {
    return decodeURIComponent(s.replace(/\+/g, ' '));
  } catch {
    return s;
  }
}

function basicAuth(req) {
  const header = req.headers.authorization ?? '';
  const match = /^Basic\s+(.+)$/i.exec(header.trim());
  if (!match) return null;
  const decoded = Buffer.from(match[1], 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  const [user, password] = colon < 0 ? [decoded, ''] : [decoded.slice(0, colon), decoded.slice(colon + 1)];
  return { user: formDecode(user), password: formDecode(password) };
}

function sendJson(res, status, value) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(value));
}

// Sends `answer`, with its placeholders filled into `issued`; returns the status sent.
async function sendAnswer(res, answer, issued) {
  if (answer.delay_ms) await new Promise((resolve) => setTimeout(resolve, answer.delay_ms));
  let body = '';
  let contentType = answer.content_type;
  if (answer.raw !== undefined) {
    body = fill(answer.raw, issued);
    contentType ??= 'text/plain';
  } else if (answer.json !== undefined) {
    body = JSON.stringify(fillJson(answer.json, issued));
    contentType ??= 'application/json';
  }
  const status = answer.status ?? 200;
  const headers = { 'cache-control': 'no-store' };
  if (contentType) headers['content-type'] = contentType;
  for (const [name, value] of Object.entries(answer.headers ?? {})) headers[name.toLowerCase()] = String(value);
  res.writeHead(status, headers);
  res.end(body);
  return status;
}

function baseUrl() {
  return `http://127.0.0.1:${server.address().port}`;
}

async function handle(req, res) {
  const url = new URL(req.url, 'http://127.0.0.1');
  const path = url.pathname;
  const route = `${req.method} ${path}`;

  if (route === 'GET /authorize') {
    const query = Object.fromEntries(url.searchParams);
    records.authorize.push({ path, query });
    if (!query.redirect_uri) return sendJson(res, 400, { error: 'invalid_request', error_description: 'no redirect_uri' });
    let target;
    try {
      target = new URL(query.redirect_uri);
    } catch {
      return sendJson(res, 400, { error: 'invalid_request', error_description: 'bad redirect_uri' });
    }
    const code = randomBytes(16).toString('base64url');
    scopeOfCode.set(code, query.scope ?? query.user_scope);
    target.searchParams.append('code', code);
    if (query.state !== undefined) target.searchParams.append('state', query.state);
    for (const [name, value] of Object.entries(config.callback_params)) target.searchParams.append(name, String(value));
    res.writeHead(302, { location: target.toString(), 'cache-control': 'no-store' });
    return res.end();
  }

  if (route === 'POST /token') {
    const form = Object.fromEntries(new URLSearchParams(await readBody(req)));
    const grant = form.grant_type ?? '';
    const entry = { path, grant_type: grant, form, basic: basicAuth(req), status: null, issued: {} };
    records.token.push(entry);
    let answer = nextAnswer(grant);
    if (!answer) {
      const scope = form.scope ?? (grant === 'authorization_code' ? scopeOfCode.get(form.code) : undefined) ?? 'read';
      answer = {
        json: {
          access_token: '{{access_token}}',
          token_type: 'Bearer',
          expires_in: 3600,
          refresh_token: '{{refresh_token}}',
          scope,
        },
      };
    }
    entry.status = await sendAnswer(res, answer, entry.issued);
    return undefined;
  }

  if (route === 'POST /revoke') {
    const form = Object.fromEntries(new URLSearchParams(await readBody(req)));
    const entry = { path, form, basic: basicAuth(req), status: null };
    records.revoke.push(entry);
    entry.status = await sendAnswer(res, config.revoke ?? { status: 200 }, {});
    return undefined;
  }

  if (route === 'GET /.well-known/openid-configuration') {
    const base = baseUrl();
    return sendJson(res, 200, {
      issuer: base,
      authorization_endpoint: `${base}/authorize`,
      token_endpoint: `${base}/token`,
      revocation_endpoint: `${base}/revoke`,
    });
  }

  if (route === 'GET /__requests') return sendJson(res, 200, records);
  if (route === 'PUT /__config') {
    try {
      config = parseConfig(await readBody(req));
    } catch (err) {
      return sendJson(res, 400, { error: err.message });
    }
    cursors = {};
    return sendJson(res, 200, config);
  }
  if (route === 'POST /__reset') {
    records = { authorize: [], token: [], revoke: [] };
    return sendJson(res, 200, records);
  }
  return sendJson(res, 404, { error: 'not_found', error_description: `no route ${route}` });
}

const server = createServer((req, res) => {
  handle(req, res).catch((err) => {
    console.error(`quirks.mjs: ${req.method} ${req.url}: ${err.stack ?? err}`);
    if (!res.headersSent) sendJson(res, 500, { error: 'server_error' });
    else res.destroy();
  });
});
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(0, '127.0.0.1', resolve);
});

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

process.stdout.write(`quirks listening on ${baseUrl()}\n`);
