// A strict OAuth 2.0 / OpenID Connect provider (oidc-provider v9) on loopback for Latchkey's tests.
//
//   node tests/oauth/oidc.mjs '{"redirect_uris": ["http://127.0.0.1:9/cb"]}'
//
// Configuration: one JSON object, from the first argument or else from the OIDC_CONFIG environment
// variable. Every key is optional except `redirect_uris`:
//   client_id                   "latchkey-test"
//   client_secret               "latchkey-test-secret"
//   redirect_uris               [string]  the client's registered redirect URIs (exact match)
//   token_endpoint_auth_method  "client_secret_basic" | "client_secret_post"
//   strict_client_auth          true      reject (401 invalid_client) a token, revocation or
//                                         introspection request that authenticates the client with
//                                         the other of the two methods; oidc-provider itself
//                                         accepts either whichever is registered
//   access_token_ttl            3600      seconds, for access tokens and client_credentials tokens
//   refresh_token_ttl           1209600   seconds (14 days)
//   issue_refresh_token         true      issue a refresh token on every code exchange and refresh,
//                                         whether or not offline_access was granted;
//                                         "offline_access": only when offline_access was granted
//                                         (oidc-provider's own default, and Google's behaviour: a
//                                         new grant without it answers without a refresh token)
//   rotate_refresh_token        true      every refresh consumes the presented refresh token and
//                                         issues a new one; presenting a consumed one again is
//                                         `invalid_grant` and revokes the whole grant
//   pkce_required               true      PKCE (S256 only) on every authorization request
//   events_file                 null      a path: every event below is appended there as one JSON line
//   device_flow                 false     RFC 8628 device authorization: `features.deviceFlow` on, the
//                                         client allowed the device_code grant; endpoint /device/auth
//                                         (discovery's device_authorization_endpoint), user page /device
//   device_code_ttl             600       seconds a device code (and its user code) lives
//   device_interval             null      seconds: the `interval` member added to device authorization
//                                         answers (oidc-provider states none, which means 5 s)
//   device_min_poll_secs        null      seconds: a device_code token request that comes sooner than
//                                         this after the previous one of the client, while the
//                                         authorization is pending, answers 400 `slow_down` (RFC 8628
//                                         section 3.5; oidc-provider itself never says it)
//   device_fail_polls           0         the first N device_code token requests answer 503 (a plain
//                                         text body) whatever oidc-provider made of them: an outage
//   device_fail_retry_after     null      seconds: the Retry-After header of those 503 answers
//   jwt_bearer                  null      an object: the client may also use the RFC 7523 JWT bearer
//                                         grant (urn:ietf:params:oauth:grant-type:jwt-bearer), see below
//
// The client is confidential, with grant types authorization_code, refresh_token and
// client_credentials. Scopes offered: openid offline_access profile api:read. `api:read` is
// registered as a plain scope (not a resource-server scope): without a `resource` parameter
// oidc-provider keeps only registered scopes (and silently drops unknown ones), so
// `client_credentials` with `scope=api:read` yields an opaque token with that scope, and code-flow
// access tokens are opaque too and carry the granted scopes. A request with `resource=ISSUER/api`
// gets an opaque token for that resource server (scope api:read) instead. Revocation (RFC 7009)
// and introspection (RFC 7662) are on; authorization responses carry `iss` (RFC 9207).
//
// JWT bearer (RFC 7523 section 2.1), when `jwt_bearer` is set:
//   {"issuer": "svc@test", "public_keys": {"KID": "-----BEGIN PUBLIC KEY-----..."},
//    "subject": null | "expected sub", "audience": null | "expected aud" (default: the token endpoint
//    URL), "max_lifetime": 300, "clock_tolerance": 120}
// The client (which still authenticates as usual) may send `assertion` and `scope`. The assertion
// must be a JWS signed (RS256 or ES256) by the public key its header's `kid` names, with `iss` the
// issuer, `aud` the audience, `sub` (the subject, if one is configured), `iat`, `exp` not passed
// and at most `max_lifetime` seconds after `iat`, and a `jti` never seen before; anything else is
// 400 invalid_grant (with the reason in `error_detail` and the event). It answers an opaque access
// token of the client_credentials kind (ttl `access_token_ttl`, the granted scopes); its events
// carry `assertion`: {"jti", "kid", "alg", "sub", "lifetime"} when the assertion could be read.
//
// The devInteractions pages do login and consent: GET /auth -> 303 /interaction/UID (login form),
// POST /interaction/UID `prompt=login&login=NAME&password=x` -> 303 /auth/UID -> 303
// /interaction/UID2 (consent form), POST /interaction/UID2 `prompt=consent` -> 303 /auth/UID2 -> 303
// to the redirect URI. GET /interaction/UID/abort denies (redirect with error=access_denied).
// Note: without `prompt=consent` in the authorization request, OpenID Connect drops
// `offline_access` from the requested scopes; refresh tokens are still issued (issue_refresh_token)
// and do not expire with the login session.
//
// Device flow (`device_flow`): POST /device/auth -> {device_code, user_code, verification_uri
// (ISSUER/device), verification_uri_complete, expires_in[, interval]}. The user: GET /device (a form
// with `xsrf` and `user_code`), POST /device `xsrf&user_code` -> the confirm form, POST /device
// `xsrf&user_code&confirm=yes` -> login and consent as above -> 200 "Sign-in Success"; or
// `abort=yes` instead of `confirm=yes` -> the device code is denied (`access_denied`). Token events
// of the device grant carry `grant_type: "urn:ietf:params:oauth:grant-type:device_code"`; every
// token event, and every other event past the client-authentication check, carries `at` (when
// the request arrived, milliseconds since the epoch); device authorization requests are events
// of type "device_authorization", carrying the `device_code` issued when one was.
//
// Test-only routes: GET /__stats returns
//   {"token_requests": {"authorization_code": n, "refresh_token": n, "client_credentials": n, ...},
//    "token_errors": {"invalid_grant": n, ...}, "reused_refresh_tokens": n, "revocations": n,
//    "introspections": n, "events": [event, ...]}
// where an event is
//   {"type": "token", "grant_type": "...", "client_auth": "client_secret_basic", "status": 200,
//    "error": null | "invalid_grant", "error_detail": null | "refresh token already used",
//    "refresh_token_reused": bool}
//   {"type": "revocation" | "introspection", "client_auth": "...", "status": 200, "error": null | "..."}
// `client_auth` is how the request authenticated the client: "client_secret_basic" (Authorization
// header), "client_secret_post" (client_secret in the form) or "none".
// Token requests are counted whether they succeed or not; `refresh_token_reused` is true when the
// presented refresh token had already been consumed by an earlier refresh (a replay).
//
// Prints exactly one line to stdout, `oidc listening on http://127.0.0.1:PORT`, once it accepts
// connections, and nothing else there (oidc-provider's development warnings go to stderr). Exits
// when its stdin reaches EOF (so it dies with the process that started it) or on SIGTERM/SIGINT.

import { appendFileSync } from 'node:fs';
import { createServer } from 'node:http';

import { createPublicKey } from 'node:crypto';

import { decodeJwt, decodeProtectedHeader, jwtVerify } from 'jose';
import Provider, { errors } from 'oidc-provider';

// oidc-provider prints its development-only warnings with console.info/console.warn: keep stdout
// for the one ready line.
console.info = console.error;
console.warn = console.error;
console.log = console.error;

const raw = process.argv[2] ?? process.env.OIDC_CONFIG ?? '{}';
let config;
try {
  config = JSON.parse(raw);
} catch (err) {
  console.error(`oidc.mjs: the configuration is not JSON: ${err.message}`);
  process.exit(2);
}
const {
  client_id: clientId = 'latchkey-test',
  client_secret: clientSecret = 'latchkey-test-secret',
  redirect_uris: redirectUris,
  token_endpoint_auth_method: tokenEndpointAuthMethod = 'client_secret_basic',
  access_token_ttl: accessTokenTtl = 3600,
  refresh_token_ttl: refreshTokenTtl = 14 * 24 * 3600,
  issue_refresh_token: issueRefreshToken = true,
  rotate_refresh_token: rotateRefreshToken = true,
  pkce_required: pkceRequired = true,
  strict_client_auth: strictClientAuth = true,
  events_file: eventsFile = null,
  jwt_bearer: jwtBearer = null,
  device_flow: deviceFlow = false,
  device_code_ttl: deviceCodeTtl = 600,
  device_interval: deviceInterval = null,
  device_min_poll_secs: deviceMinPollSecs = null,
  device_fail_polls: deviceFailPolls = 0,
  device_fail_retry_after: deviceFailRetryAfter = null,
} = config;
const DEVICE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';
// When the client last polled with the device grant (the slow_down of device_min_poll_secs).
let lastDevicePoll = null;
// How many device_code token requests were answered 503 (device_fail_polls).
let deviceFailed = 0;
if (!Array.isArray(redirectUris) || redirectUris.length === 0) {
  console.error('oidc.mjs: `redirect_uris` (a non-empty array of URLs) is required');
  process.exit(2);
}

const events = [];
function record(event) {
  events.push(event);
  if (eventsFile) appendFileSync(eventsFile, `${JSON.stringify(event)}\n`);
}

function stats() {
  const tokenRequests = { authorization_code: 0, refresh_token: 0, client_credentials: 0 };
  const tokenErrors = {};
  let reused = 0;
  let revocations = 0;
  let introspections = 0;
  for (const e of events) {
    if (e.type === 'token') {
      tokenRequests[e.grant_type] = (tokenRequests[e.grant_type] ?? 0) + 1;
      if (e.error) tokenErrors[e.error] = (tokenErrors[e.error] ?? 0) + 1;
      if (e.refresh_token_reused) reused += 1;
    } else if (e.type === 'revocation') {
      revocations += 1;
    } else if (e.type === 'introspection') {
      introspections += 1;
    }
  }
  return {
    token_requests: tokenRequests,
    token_errors: tokenErrors,
    reused_refresh_tokens: reused,
    revocations,
    introspections,
    events,
  };
}

// The issuer needs the port, so bind first and build the provider afterwards.
const server = createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(0, '127.0.0.1', resolve);
});
const issuer = `http://127.0.0.1:${server.address().port}`;

const SCOPES = ['openid', 'offline_access', 'profile', 'api:read'];
const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: clientId,
      client_secret: clientSecret,
      redirect_uris: redirectUris,
      response_types: ['code'],
      grant_types: [
        'authorization_code',
        'refresh_token',
        'client_credentials',
        ...(jwtBearer ? [JWT_BEARER] : []),
        ...(deviceFlow ? [DEVICE_GRANT] : []),
      ],
      token_endpoint_auth_method: tokenEndpointAuthMethod,
      scope: SCOPES.join(' '),
    },
  ],
  scopes: SCOPES,
  claims: { openid: ['sub'], profile: ['name'] },
  // Signed cookies, so oidc-provider does not warn about unsigned ones.
  cookies: { keys: ['latchkey-test-cookie-key'] },
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: deviceFlow === true },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    // On by default in v9. No default resource: tokens are opaque and carry the static scopes. A
    // client that asks for `resource=<issuer>/api` gets an opaque token for that resource server.
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => undefined,
      useGrantedResource: async () => false,
      getResourceServerInfo: async (_ctx, resourceIndicator) => {
        if (resourceIndicator === `${issuer}/api`) {
          return { scope: 'api:read', accessTokenFormat: 'opaque', accessTokenTTL: accessTokenTtl };
        }
        throw new errors.InvalidTarget();
      },
    },
  },
  pkce: { required: () => pkceRequired },
  issueRefreshToken: async (_ctx, client, code) =>
    client.grantTypeAllowed('refresh_token') &&
    (issueRefreshToken === 'offline_access' ? code.scopes.has('offline_access') : issueRefreshToken === true),
  rotateRefreshToken,
  // Refresh tokens outlive the devInteractions login session (the test's cookie jar).
  expiresWithSession: async () => false,
  ttl: {
    AccessToken: () => accessTokenTtl,
    ClientCredentials: () => accessTokenTtl,
    RefreshToken: () => refreshTokenTtl,
    AuthorizationCode: () => 60,
    DeviceCode: () => deviceCodeTtl,
    IdToken: () => 3600,
    Interaction: () => 600,
    Session: () => 3600,
    Grant: () => refreshTokenTtl,
  },
  findAccount: async (_ctx, sub) => ({
    accountId: sub,
    claims: async () => ({ sub, name: `Test user ${sub}` }),
  }),
  // Errors as JSON with the detail, so a failing test shows why (HTML pages are unreadable there).
  renderError: async (ctx, out, error) => {
    ctx.type = 'json';
    ctx.body = { ...out, error_detail: error.error_detail };
  },
});

if (jwtBearer) {
  const keys = new Map(Object.entries(jwtBearer.public_keys ?? {}).map(([kid, pem]) => [kid, createPublicKey(pem)]));
  const audience = jwtBearer.audience ?? `${issuer}/token`;
  const maxLifetime = jwtBearer.max_lifetime ?? 300;
  const seenJtis = new Set();
  provider.registerGrantType(
    JWT_BEARER,
    async (ctx) => {
      const { assertion } = ctx.oidc.params;
      if (!assertion) throw new errors.InvalidRequest('missing assertion');
      let header;
      let claims;
      try {
        header = decodeProtectedHeader(assertion);
        claims = decodeJwt(assertion);
      } catch {
        throw new errors.InvalidGrant('the assertion is not a JWT');
      }
      ctx.state.latchkeyAssertion = {
        jti: claims.jti ?? null,
        kid: header.kid ?? null,
        alg: header.alg ?? null,
        sub: claims.sub ?? null,
        lifetime: typeof claims.exp === 'number' && typeof claims.iat === 'number' ? claims.exp - claims.iat : null,
      };
      const key = keys.get(header.kid);
      if (!key) throw new errors.InvalidGrant(`no key with kid ${JSON.stringify(header.kid ?? null)}`);
      let payload;
      try {
        ({ payload } = await jwtVerify(assertion, key, {
          algorithms: ['RS256', 'ES256'],
          issuer: jwtBearer.issuer,
          audience,
          subject: jwtBearer.subject ?? undefined,
          requiredClaims: ['iss', 'sub', 'aud', 'iat', 'exp', 'jti'],
          clockTolerance: jwtBearer.clock_tolerance ?? 120,
        }));
      } catch (err) {
        throw new errors.InvalidGrant(`assertion refused: ${err.code ?? err.message}`);
      }
      if (payload.exp - payload.iat > maxLifetime) {
        throw new errors.InvalidGrant(`the assertion lives ${payload.exp - payload.iat} s, more than ${maxLifetime} s`);
      }
      if (seenJtis.has(payload.jti)) throw new errors.InvalidGrant('jti already used');
      seenJtis.add(payload.jti);
      const { client } = ctx.oidc;
      const requested = (ctx.oidc.params.scope ?? '').split(' ').filter(Boolean);
      const granted = requested.filter((s) => client.scope.split(' ').includes(s));
      const token = new provider.ClientCredentials({ client, scope: granted.join(' ') || undefined });
      const value = await token.save();
      ctx.body = { access_token: value, token_type: 'Bearer', expires_in: token.expiration, scope: token.scope };
    },
    ['assertion', 'scope'],
  );
}

// Remember why a grant failed: the response body only says `invalid_grant`.
provider.on('grant.error', (ctx, err) => {
  ctx.state.latchkeyGrantError = err;
});

// The endpoints where the client authenticates (oidc-provider's default routes).
const CLIENT_AUTH_ROUTES = {
  '/token': 'token',
  '/token/revocation': 'revocation',
  '/token/introspection': 'introspection',
  '/device/auth': 'device_authorization',
};

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

provider.use(async (ctx, next) => {
  if (ctx.method === 'GET' && ctx.path === '/__stats') {
    ctx.type = 'json';
    ctx.body = stats();
    return;
  }
  const type = ctx.method === 'POST' ? CLIENT_AUTH_ROUTES[ctx.path] : undefined;
  if (type === undefined) {
    await next();
    return;
  }
  // When the request arrived, before the provider's own handling: what timing tests compare.
  const arrived = Date.now();
  const basic = /^basic /i.test(ctx.get('authorization'));
  if (strictClientAuth && basic !== (tokenEndpointAuthMethod === 'client_secret_basic')) {
    const form = await readForm(ctx.req);
    const clientAuth = basic ? 'client_secret_basic' : form.has('client_secret') ? 'client_secret_post' : 'none';
    ctx.status = 401;
    ctx.body = {
      error: 'invalid_client',
      error_description: `the client must authenticate with ${tokenEndpointAuthMethod}, not ${clientAuth}`,
    };
    record({
      type,
      ...(type === 'token' ? { grant_type: form.get('grant_type') } : {}),
      client_auth: clientAuth,
      status: 401,
      error: 'invalid_client',
      ...(type === 'token' ? { error_detail: null, refresh_token_reused: false } : {}),
    });
    return;
  }
  await next();
  if (type === 'device_authorization' && ctx.status === 200 && deviceInterval !== null) {
    ctx.body = { ...ctx.body, interval: deviceInterval };
  }
  if (type === 'token' && ctx.oidc?.params?.grant_type === DEVICE_GRANT) {
    const now = Date.now();
    const tooSoon =
      deviceMinPollSecs !== null && lastDevicePoll !== null && now - lastDevicePoll < deviceMinPollSecs * 1000;
    lastDevicePoll = now;
    if (tooSoon && ctx.body?.error === 'authorization_pending') {
      ctx.status = 400;
      ctx.body = { error: 'slow_down', error_description: `poll at most every ${deviceMinPollSecs} s` };
    }
    if (deviceFailed < deviceFailPolls) {
      deviceFailed += 1;
      ctx.status = 503;
      ctx.body = 'service unavailable';
      if (deviceFailRetryAfter !== null) ctx.set('Retry-After', String(deviceFailRetryAfter));
    }
  }
  const clientAuth = basic ? 'client_secret_basic' : ctx.oidc?.params?.client_secret ? 'client_secret_post' : 'none';
  const error = ctx.status >= 400 ? (ctx.body?.error ?? `http_${ctx.status}`) : null;
  if (type === 'token') {
    const detail = ctx.state.latchkeyGrantError?.error_detail ?? null;
    record({
      type,
      grant_type: ctx.oidc?.params?.grant_type ?? null,
      client_auth: clientAuth,
      status: ctx.status,
      error,
      error_detail: detail,
      refresh_token_reused: detail === 'refresh token already used',
      at: arrived,
      ...(ctx.state.latchkeyAssertion ? { assertion: ctx.state.latchkeyAssertion } : {}),
    });
  } else {
    // The device code issued: for tests that look for it where it must not be (a canary).
    const issued = type === 'device_authorization' && ctx.status === 200 ? { device_code: ctx.body?.device_code } : {};
    record({ type, client_auth: clientAuth, status: ctx.status, error, at: arrived, ...issued });
  }
});

server.on('request', provider.callback());

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

process.stdout.write(`oidc listening on ${issuer}\n`);
