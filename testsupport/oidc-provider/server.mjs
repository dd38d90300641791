// A real OpenID Connect provider (panva/oidc-provider 9.x) for credproxy's integration tests.
//
// Usage:
//   node server.mjs <port> <config.json>     serve on 127.0.0.1:<port> (0 = chosen by the OS)
//   node server.mjs --generate-key <rsa|ec> <out.json>
//                                             write a fresh private signing key (JWK + PEM)
//
// When serving, the first (and only) line on stdout is `LISTENING <port>`, printed once the
// socket accepts connections; the issuer is then `http://127.0.0.1:<port>`. Everything else
// (oidc-provider's runtime warnings, errors) goes to stderr.
//
// config.json:
//   {
//     "clients": [{ "client_id": "...", "client_secret": "...", "roles": ["..."],
//                   "groups": ["..."], "extra_claims": { ... },
//                   "token_endpoint_auth_method": "client_secret_basic" }],
//     "token_ttl_secs": 300,
//     "resources": { "urn:credproxy": { "audience": "credproxy", "scope": "proxy" } },
//     "default_resource": "urn:credproxy",
//     "jwks": { "keys": [ <private JWK with kid and alg> ] }
//   }
//
// Client-credentials access tokens are JWTs (RFC 9068) signed with the first key, whose audience
// comes from the requested (or default) resource indicator, with a Keycloak-shaped
// `realm_access.roles` and a `groups` claim. An unknown resource indicator is `invalid_target`.
//
// `GET /__stats` returns `{"jwks_requests": n}`: how often the JWKS was fetched, so tests can
// assert that a verifier does not hammer the provider.

import { createServer } from 'node:http';
import { createHash, generateKeyPairSync } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import process from 'node:process';


function usage(message) {
  process.stderr.write(`${message}\nusage: node server.mjs <port> <config.json>\n`
    + '       node server.mjs --generate-key <rsa|ec> <out.json>\n');
  process.exit(64);
}

// RFC 7638 JWK thumbprint: a stable, content-derived key id.
function thumbprint(jwk) {
  const members = jwk.kty === 'RSA'
    ? { e: jwk.e, kty: jwk.kty, n: jwk.n }
    : { crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y };
  return createHash('sha256').update(JSON.stringify(members)).digest('base64url');
}

function generateKey(kind, out) {
  let pair;
  let alg;
  let pemType;
  if (kind === 'rsa') {
    pair = generateKeyPairSync('rsa', { modulusLength: 2048 });
    alg = 'RS256';
    // PKCS#1 is the form every RSA PEM reader accepts.
    pemType = 'pkcs1';
  } else if (kind === 'ec') {
    pair = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    alg = 'ES256';
    pemType = 'pkcs8';
  } else {
    usage(`unknown key kind ${kind}`);
  }
  const jwk = pair.privateKey.export({ format: 'jwk' });
  jwk.kid = thumbprint(jwk);
  jwk.alg = alg;
  jwk.use = 'sig';
  const pem = pair.privateKey.export({ format: 'pem', type: pemType });
  writeFileSync(out, JSON.stringify({ jwk, pem }), { mode: 0o600 });
}

function listen(server, port) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      server.off('error', reject);
      resolve(server.address().port);
    });
  });
}

async function serve(portArg, configPath) {
  const port = Number.parseInt(portArg, 10);
  if (!Number.isInteger(port) || port < 0 || port > 65535) usage(`bad port ${portArg}`);
  // Imported here so that key generation does not print oidc-provider's runtime warning.
  const { Provider, errors } = await import('oidc-provider');
  const config = JSON.parse(readFileSync(configPath, 'utf8'));
  const clientsById = new Map(config.clients.map((c) => [c.client_id, c]));
  const resources = config.resources ?? {};
  const ttl = config.token_ttl_secs ?? 300;
  const signingAlg = config.jwks.keys[0].alg ?? 'RS256';

  let jwksRequests = 0;
  let handler = null;
  // Tests move this provider's clock forward together with credproxy's (`POST
  // /__advance?seconds=N`), so tokens it issues afterwards carry the moved time and a refresh
  // can be reached without waiting for it. Only ever forward.
  let offsetMs = 0;
  const realNow = Date.now.bind(Date);
  Date.now = () => realNow() + offsetMs;
  const server = createServer((req, res) => {
    if (req.method === 'POST' && req.url.startsWith('/__advance?seconds=')) {
      const seconds = Number.parseFloat(req.url.split('=')[1]);
      if (!(seconds >= 0)) {
        res.writeHead(400).end();
        return;
      }
      offsetMs += seconds * 1000;
      res.writeHead(204).end();
      return;
    }
    if (req.method === 'GET' && req.url === '/__stats') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ jwks_requests: jwksRequests }));
      return;
    }
    if (req.url === '/jwks' || req.url.startsWith('/jwks?')) jwksRequests += 1;
    if (!handler) {
      res.writeHead(503).end();
      return;
    }
    handler(req, res);
  });

  // The issuer must name the real port, which is only known once the socket is bound.
  const actualPort = await listen(server, port);
  const issuer = `http://127.0.0.1:${actualPort}`;

  const provider = new Provider(issuer, {
    clients: config.clients.map((c) => ({
      client_id: c.client_id,
      client_secret: c.client_secret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: c.token_endpoint_auth_method ?? 'client_secret_basic',
      // Client metadata is validated against the keystore: with only an EC key, the
      // default RS256 would make every client invalid.
      id_token_signed_response_alg: signingAlg,
    })),
    jwks: config.jwks,
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: false },
      revocation: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => config.default_resource,
        useGrantedResource: () => true,
        getResourceServerInfo: (_ctx, resourceIndicator) => {
          const rs = resources[resourceIndicator];
          if (!rs) throw new errors.InvalidTarget();
          return {
            scope: rs.scope ?? 'proxy',
            audience: rs.audience,
            accessTokenTTL: ttl,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: signingAlg } },
          };
        },
      },
    },
    ttl: {
      ClientCredentials: () => ttl,
    },
    extraTokenClaims: (_ctx, token) => {
      const client = clientsById.get(token.clientId);
      if (!client) return undefined;
      return {
        ...(client.extra_claims ?? {}),
        realm_access: { roles: client.roles ?? [] },
        groups: client.groups ?? [],
      };
    },
  });
  provider.on('server_error', (_ctx, err) => {
    process.stderr.write(`server_error: ${err.stack ?? err}\n`);
  });
  handler = provider.callback();

  process.stdout.write(`LISTENING ${actualPort}\n`);

  // Leave promptly and quietly when the harness stops us.
  for (const signal of ['SIGTERM', 'SIGINT']) {
    process.on(signal, () => process.exit(0));
  }
}

const args = process.argv.slice(2);
if (args[0] === '--generate-key') {
  if (args.length !== 3) usage('--generate-key needs a kind and an output file');
  generateKey(args[1], args[2]);
} else {
  if (args.length !== 2) usage('need a port and a config file');
  await serve(args[0], args[1]);
}
