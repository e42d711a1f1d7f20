// Reference OIDC peer for baa's SSO benchmark: node-oidc-provider (panva),
// in memory (oidc-provider's own memory adapter, see BenchMemoryAdapter),
// plain HTTP on 127.0.0.1, one process.
//
//   node server.mjs --port N [--stock-adapter]    (N = 0 picks a free port)
//
// Prints exactly one line to stdout once listening:
//   READY http://127.0.0.1:<port>
// and runs until SIGTERM/SIGINT. See README.md for the protocol.

import { generateKeyPairSync } from 'node:crypto';
import { createServer } from 'node:http';

// stdout carries exactly one line (READY ...): oidc-provider prints its
// one-time NOTICEs with console.info, so send console.info/log to stderr.
console.info = console.error;
console.log = console.error;

const port = parsePort(process.argv.slice(2)); // (hoisted function, below)
const stockAdapter = process.argv.includes('--stock-adapter');

const { default: Provider } = await import('oidc-provider');
// oidc-provider's own memory adapter and LRU (no "exports" map: deep imports work).
const { default: MemoryAdapter } = await import('oidc-provider/lib/adapters/memory_adapter.js');
const { default: LRU } = await import('oidc-provider/lib/helpers/lru.js');

// The stock memory adapter, with two changes that matter only under load:
//  - its store is the same LRU but 100k entries instead of 1000, so codes and
//    sessions are not evicted before use when many flows are in flight;
//  - the per-grant token index (every code and access token issued under a
//    grant) is pruned lazily (amortised O(1)) instead of being scanned and
//    Math.max(...spread) on every save. With one long-lived grant per client
//    the stock index grows by ~2 entries per flow for an hour (access token
//    TTL), making each flow O(n): throughput halved within ~10k flows.
// `--stock-adapter` runs the unmodified default instead.
const GRANTABLE = new Set([
  'AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode',
  'BackchannelAuthenticationRequest', 'PreAuthorizedCode',
]);
const memberMeta = new WeakMap(); // grant members Map -> { max, pruneAt }

class BenchMemoryAdapter extends MemoryAdapter {
  #unindex(id, key, payload) {
    const { storage } = this;
    if (payload.uid && storage.get(`sessionUid:${payload.uid}`) === id) {
      storage.delete(`sessionUid:${payload.uid}`);
    }
    if (payload.userCode && storage.get(`userCode:${payload.userCode}`) === id) {
      storage.delete(`userCode:${payload.userCode}`);
    }
    if (GRANTABLE.has(this.model) && payload.grantId) {
      const grantKey = `grant:${payload.grantId}`;
      const members = storage.get(grantKey);
      if (members instanceof Map) {
        members.delete(key);
        if (members.size === 0) storage.delete(grantKey);
      }
    }
  }

  #addMember(grantId, key, expiresAt) {
    const grantKey = `grant:${grantId}`;
    let members = this.storage.get(grantKey);
    if (!(members instanceof Map)) members = new Map();
    let meta = memberMeta.get(members);
    if (!meta) {
      meta = { max: 0, pruneAt: 64 };
      memberMeta.set(members, meta);
    }
    members.set(key, expiresAt);
    if (members.size >= meta.pruneAt) {
      const now = Date.now();
      meta.max = 0;
      for (const [k, exp] of members) {
        if (exp <= now) members.delete(k);
        else if (exp > meta.max) meta.max = exp;
      }
      meta.pruneAt = Math.max(64, members.size * 2);
    }
    if (expiresAt > meta.max) meta.max = expiresAt;
    this.storage.set(
      grantKey,
      members,
      Number.isFinite(meta.max) ? { maxAge: meta.max - Date.now() } : undefined,
    );
  }

  async destroy(id) {
    const key = this.key(id);
    const payload = this.storage.get(key);
    this.storage.delete(key);
    if (payload) this.#unindex(id, key, payload);
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    const maxAge = typeof expiresIn === 'number'
      ? (expiresIn + this.clockTolerance) * 1000
      : undefined;
    const options = maxAge === undefined ? undefined : { maxAge };
    const previous = this.storage.get(key);
    if (previous) this.#unindex(id, key, previous);
    if (this.model === 'Session') this.storage.set(`sessionUid:${payload.uid}`, id, options);
    if (GRANTABLE.has(this.model) && payload.grantId) {
      this.#addMember(payload.grantId, key, maxAge === undefined ? Infinity : Date.now() + maxAge);
    }
    if (payload.userCode) this.storage.set(`userCode:${payload.userCode}`, id, options);
    this.storage.set(key, payload, options);
  }
}

function benchAdapterFactory() {
  const store = new LRU({ maxSize: 100_000 });
  // 15 s = the stock clockTolerance, which the stock factory passes too.
  return (model) => new BenchMemoryAdapter(model, store, 15);
}

function parsePort(argv) {
  const i = argv.indexOf('--port');
  const raw = i >= 0 ? argv[i + 1] : undefined;
  const m = /^--port=(\d+)$/.exec(argv.find((a) => a.startsWith('--port=')) ?? '');
  const value = raw ?? m?.[1];
  if (value === undefined || !/^\d+$/.test(value) || Number(value) > 65535) {
    process.stderr.write('usage: node server.mjs --port N   (0 = any free port)\n');
    process.exit(2);
  }
  return Number(value);
}

const HOST = '127.0.0.1';
const ACCOUNT_ID = 'bench';
const REDIRECT_URI = 'https://bench.invalid/cb';

const CLIENTS = [
  {
    client_id: 'bench-rs256',
    client_secret: 'bench-secret-rs256',
    id_token_signed_response_alg: 'RS256',
  },
  {
    client_id: 'bench-es256',
    client_secret: 'bench-secret-es256',
    id_token_signed_response_alg: 'ES256',
  },
].map((c) => ({
  ...c,
  token_endpoint_auth_method: 'client_secret_basic',
  response_types: ['code'],
  grant_types: ['authorization_code'],
  redirect_uris: [REDIRECT_URI],
}));
const BENCH_CLIENT_IDS = new Set(CLIENTS.map((c) => c.client_id));

function signingKeys() {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 })
    .privateKey.export({ format: 'jwk' });
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' })
    .privateKey.export({ format: 'jwk' });
  return [
    { ...rsa, kid: 'bench-rs256', alg: 'RS256', use: 'sig' },
    { ...ec, kid: 'bench-es256', alg: 'ES256', use: 'sig' },
  ];
}

function buildProvider(issuer, stockAdapter) {
  const provider = new Provider(issuer, {
    ...(stockAdapter ? {} : { adapter: benchAdapterFactory() }),
    clients: CLIENTS,
    jwks: { keys: signingKeys() },
    cookies: {
      keys: ['bench-cookie-key-1', 'bench-cookie-key-2'],
    },
    features: {
      devInteractions: { enabled: false },
    },
    // PKCE: v9's default only requires it for public clients and FAPI 2.0;
    // require it for every client here. v9 accepts only S256.
    pkce: { required: () => true },
    responseTypes: ['code'],
    // The stock defaults, written out (the default functions print a NOTICE).
    ttl: {
      AccessToken: 60 * 60,
      AuthorizationCode: 60,
      IdToken: 60 * 60,
      Interaction: 60 * 60,
      Session: 14 * 24 * 60 * 60,
      Grant: 14 * 24 * 60 * 60,
    },
    async findAccount(ctx, accountId) {
      if (accountId !== ACCOUNT_ID) return undefined;
      return {
        accountId,
        async claims() {
          return { sub: accountId };
        },
      };
    },
    // Default behaviour (grant id from the interaction result or stored on
    // the session per client), plus: once the session has signed in, the
    // benchmark's own (first-party) clients get an implicit openid grant, so
    // one sign-in covers both clients without a consent interaction.
    async loadExistingGrant(ctx) {
      const { client, session, result } = ctx.oidc;
      const grantId = result?.consent?.grantId || session.grantIdFor(client.clientId);
      if (grantId) {
        const found = await ctx.oidc.provider.Grant.find(grantId);
        if (found) return found;
      }
      if (session.accountId && BENCH_CLIENT_IDS.has(client.clientId)) {
        const grant = new ctx.oidc.provider.Grant({
          accountId: session.accountId,
          clientId: client.clientId,
        });
        grant.addOIDCScope('openid');
        await grant.save();
        session.grantIdFor(client.clientId, grant.jti);
        return grant;
      }
      return undefined;
    },
  });
  provider.proxy = false;
  // No per-request logging; surface only real server errors.
  provider.on('server_error', (ctx, err) => {
    process.stderr.write(`server_error: ${err?.stack ?? err}\n`);
  });
  return provider;
}

// GET /interaction/:uid — sign the fixed account in and grant openid at once,
// then 303 back to the provider's resume URL.
async function finishInteraction(provider, req, res) {
  const details = await provider.interactionDetails(req, res);
  const clientId = details.params.client_id;
  let grant = details.grantId ? await provider.Grant.find(details.grantId) : undefined;
  if (!grant) grant = new provider.Grant({ accountId: ACCOUNT_ID, clientId });
  grant.addOIDCScope('openid');
  const grantId = await grant.save();
  await provider.interactionFinished(req, res, {
    login: { accountId: ACCOUNT_ID },
    consent: { grantId },
  }, { mergeWithLastSubmission: false });
}

let providerHandler;
let provider;

const server = createServer((req, res) => {
  if (!providerHandler) {
    res.statusCode = 503;
    res.end();
    return;
  }
  if (req.method === 'GET' && req.url.startsWith('/interaction/')) {
    finishInteraction(provider, req, res).catch((err) => {
      process.stderr.write(`interaction error: ${err?.stack ?? err}\n`);
      if (!res.headersSent) {
        res.statusCode = 400;
        res.setHeader('Content-Type', 'text/plain');
        res.end(`interaction failed: ${err?.message ?? err}\n`);
      } else {
        res.end();
      }
    });
    return;
  }
  providerHandler(req, res);
});

server.listen(port, HOST, () => {
  const actual = server.address().port;
  const issuer = `http://${HOST}:${actual}`;
  provider = buildProvider(issuer, stockAdapter);
  providerHandler = provider.callback();
  process.stdout.write(`READY ${issuer}\n`);
});

function shutdown() {
  server.close();
  server.closeAllConnections();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
