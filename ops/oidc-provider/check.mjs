// End-to-end smoke test and throughput probe for server.mjs.
//
//   node check.mjs [N] [server flags...]   (N flows per client, default 200;
//                                            e.g. --stock-adapter is passed on)
//
// Starts server.mjs on port 0, signs in once with plain HTTP (manual
// redirects, hand-kept cookie jar), then runs N authorize+token flows per
// client and verifies every ID token (alg, nonce, signature against JWKS).
// Exits 0 on success, 1 with a message otherwise.

import { spawn } from 'node:child_process';
import {
  createHash, createPublicKey, randomBytes, verify,
} from 'node:crypto';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const N = Number(process.argv[2] ?? 200);
const SERVER_FLAGS = process.argv.slice(3);
const REDIRECT_URI = 'https://bench.invalid/cb';
const CLIENTS = [
  { id: 'bench-rs256', secret: 'bench-secret-rs256', alg: 'RS256' },
  { id: 'bench-es256', secret: 'bench-secret-es256', alg: 'ES256' },
];

class CheckError extends Error {}
function fail(msg) { throw new CheckError(msg); }

const b64url = (buf) => Buffer.from(buf).toString('base64url');

// ---- server ---------------------------------------------------------------

function startServer() {
  const here = dirname(fileURLToPath(import.meta.url));
  const child = spawn(process.execPath, [join(here, 'server.mjs'), '--port', '0', ...SERVER_FLAGS], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  let out = '';
  child.stderr.on('data', (d) => { stderr += d; });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new CheckError(`server not READY after 20s; stderr:\n${stderr}`)), 20000);
    child.stdout.on('data', (d) => {
      out += d;
      const m = /^READY (http:\/\/127\.0\.0\.1:(\d+))\n/m.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({
          child, issuer: m[1], stderr: () => stderr, stdout: () => out,
        });
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new CheckError(`server exited early (code ${code}); stderr:\n${stderr}`));
    });
  });
}

// ---- HTTP with a hand-kept cookie jar ---------------------------------------

class Jar {
  #cookies = new Map();

  store(res) {
    for (const line of res.headers.getSetCookie()) {
      const pair = line.split(';', 1)[0];
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      // expired (cleared) cookies come back with an empty value / 1970 date
      if (value === '' || /expires=Thu, 01 Jan 1970/i.test(line)) this.#cookies.delete(name);
      else this.#cookies.set(name, value);
    }
  }

  header() {
    return [...this.#cookies].map(([k, v]) => `${k}=${v}`).join('; ');
  }

  names() { return [...this.#cookies.keys()].sort(); }
}

async function get(url, jar) {
  const res = await fetch(url, {
    redirect: 'manual',
    headers: jar.header() ? { cookie: jar.header() } : {},
  });
  jar.store(res);
  return res;
}

// ---- OIDC pieces ------------------------------------------------------------

function newRequest(issuer, client) {
  const verifier = b64url(randomBytes(32));
  const challenge = b64url(createHash('sha256').update(verifier).digest());
  const nonce = b64url(randomBytes(16));
  const state = b64url(randomBytes(16));
  const url = new URL('/auth', issuer);
  url.search = new URLSearchParams({
    client_id: client.id,
    response_type: 'code',
    redirect_uri: REDIRECT_URI,
    scope: 'openid',
    response_mode: 'form_post',
    code_challenge: challenge,
    code_challenge_method: 'S256',
    nonce,
    state,
  }).toString();
  return { url: url.href, verifier, nonce, state };
}

const htmlDecode = (s) => s.replace(/&(amp|lt|gt|quot|#39|#x27);/g, (_, e) => ({
  amp: '&', lt: '<', gt: '>', quot: '"', '#39': "'", '#x27': "'",
})[e]);

function parseFormPost(html) {
  const action = /<form method="post" action="([^"]*)">/.exec(html)?.[1];
  const inputs = {};
  for (const m of html.matchAll(/<input type="hidden" name="([^"]+)" value="([^"]*)"\/>/g)) {
    inputs[m[1]] = htmlDecode(m[2]);
  }
  return { action: action && htmlDecode(action), inputs };
}

function checkFormPost(html, req, label) {
  const { action, inputs } = parseFormPost(html);
  if (action !== REDIRECT_URI) fail(`${label}: form action ${action} != ${REDIRECT_URI}`);
  if (inputs.error) fail(`${label}: authorization error ${inputs.error}: ${inputs.error_description}`);
  if (!inputs.code) fail(`${label}: no code in form_post page:\n${html}`);
  if (inputs.state !== req.state) fail(`${label}: state mismatch`);
  return inputs.code;
}

async function token(issuer, client, code, verifier) {
  const res = await fetch(new URL('/token', issuer), {
    method: 'POST',
    headers: {
      'content-type': 'application/x-www-form-urlencoded',
      authorization: `Basic ${Buffer.from(`${encodeURIComponent(client.id)}:${encodeURIComponent(client.secret)}`).toString('base64')}`,
    },
    body: new URLSearchParams({
      grant_type: 'authorization_code',
      code,
      redirect_uri: REDIRECT_URI,
      code_verifier: verifier,
    }),
  });
  const body = await res.json();
  if (res.status !== 200) fail(`token endpoint ${res.status}: ${JSON.stringify(body)}`);
  return body;
}

function verifyIdToken(idToken, keys, client, issuer, nonce) {
  const parts = idToken.split('.');
  if (parts.length !== 3) fail('id_token is not a compact JWS');
  const header = JSON.parse(Buffer.from(parts[0], 'base64url'));
  const claims = JSON.parse(Buffer.from(parts[1], 'base64url'));
  if (header.alg !== client.alg) fail(`${client.id}: id_token alg ${header.alg} != ${client.alg}`);
  if (claims.nonce !== nonce) fail(`${client.id}: nonce ${claims.nonce} != ${nonce}`);
  if (claims.iss !== issuer) fail(`${client.id}: iss ${claims.iss} != ${issuer}`);
  if (claims.aud !== client.id && !(Array.isArray(claims.aud) && claims.aud.includes(client.id))) {
    fail(`${client.id}: aud ${claims.aud}`);
  }
  if (claims.sub !== 'bench') fail(`${client.id}: sub ${claims.sub}`);
  const key = keys.get(header.kid);
  if (!key) fail(`${client.id}: kid ${header.kid} not in JWKS`);
  const ok = verify(
    'sha256',
    Buffer.from(`${parts[0]}.${parts[1]}`),
    header.alg === 'ES256' ? { key, dsaEncoding: 'ieee-p1363' } : key,
    Buffer.from(parts[2], 'base64url'),
  );
  if (!ok) fail(`${client.id}: id_token signature does not verify`);
}

// ---- flows ------------------------------------------------------------------

async function signIn(issuer, jar) {
  const client = CLIENTS[0];
  const req = newRequest(issuer, client);
  let url = req.url;
  const hops = [];
  for (let i = 0; i < 10; i += 1) {
    const res = await get(url, jar);
    hops.push(`${res.status} ${new URL(url).pathname}`);
    if (res.status >= 300 && res.status < 400) {
      url = new URL(res.headers.get('location'), url).href;
      await res.arrayBuffer();
      continue;
    }
    const html = await res.text();
    if (res.status !== 200) fail(`sign-in: ${res.status} at ${url}:\n${html}`);
    const code = checkFormPost(html, req, 'sign-in');
    return { client, req, code, hops };
  }
  return fail(`sign-in: too many redirects: ${hops.join(' -> ')}`);
}

async function oneFlow(issuer, jar, client, keys, counts) {
  const req = newRequest(issuer, client);
  const res = await get(req.url, jar);
  counts[res.status] = (counts[res.status] ?? 0) + 1;
  const html = await res.text();
  if (res.status !== 200) {
    fail(`${client.id}: authorize after sign-in gave ${res.status} (location ${res.headers.get('location')}), expected 200 form_post`);
  }
  const code = checkFormPost(html, req, client.id);
  const tokens = await token(issuer, client, code, req.verifier);
  if (!tokens.id_token) fail(`${client.id}: no id_token in ${JSON.stringify(tokens)}`);
  verifyIdToken(tokens.id_token, keys, client, issuer, req.nonce);
}

async function main() {
  const server = await startServer();
  try {
    const { issuer } = server;
    console.log(`server: ${issuer}`);

    const jwks = await (await fetch(new URL('/jwks', issuer))).json();
    const keys = new Map(jwks.keys.map((k) => [k.kid, createPublicKey({ key: k, format: 'jwk' })]));
    const algs = jwks.keys.map((k) => k.alg).sort().join(',');
    if (algs !== 'ES256,RS256') fail(`JWKS publishes ${algs}, expected ES256,RS256`);

    const jar = new Jar();
    const s = await signIn(issuer, jar);
    console.log(`sign-in: ${s.hops.join(' -> ')}`);
    console.log(`cookies kept: ${jar.names().join(', ')}`);
    const first = await token(issuer, s.client, s.code, s.req.verifier);
    verifyIdToken(first.id_token, keys, s.client, issuer, s.req.nonce);

    // warm-up so both clients' grants exist and JIT is warm
    for (const client of CLIENTS) await oneFlow(issuer, jar, client, keys, {});

    let total = 0;
    for (const client of CLIENTS) {
      const counts = {};
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < N; i += 1) await oneFlow(issuer, jar, client, keys, counts);
      const secs = Number(process.hrtime.bigint() - t0) / 1e9;
      total += N;
      console.log(`${client.id}: ${N} flows OK in ${secs.toFixed(3)} s = ${(N / secs).toFixed(1)} flows/s `
        + `(sequential, 1 connection at a time; authorize statuses ${JSON.stringify(counts)})`);
    }
    if (server.stdout() !== `READY ${issuer}\n`) fail(`server stdout is not exactly the READY line:\n${server.stdout()}`);
    const err = server.stderr().split('\n').filter((l) => /error/i.test(l));
    if (err.length) fail(`server reported errors:\n${err.join('\n')}`);
    console.log(`${total} flows verified`);
  } finally {
    server.child.kill('SIGTERM');
  }
  const [code, signal] = await new Promise((r) => {
    if (server.child.exitCode !== null) r([server.child.exitCode, null]);
    else server.child.on('exit', (c, s) => r([c, s]));
  });
  if (code !== 0) fail(`server did not exit cleanly on SIGTERM (code ${code}, signal ${signal})`);
  console.log('server exited 0 on SIGTERM');
}

main().then(() => { console.log('OK'); process.exit(0); }, (err) => {
  console.error(`FAIL: ${err instanceof CheckError ? err.message : err?.stack ?? err}`);
  process.exit(1);
});
