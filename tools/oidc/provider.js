// OpenID provider for Portcullis end-to-end tests. Test traffic only, on 127.0.0.1.
//
// Environment:
//   PORT             port to listen on on 127.0.0.1 (default 0: an ephemeral port the kernel
//                    picks; the issuer then carries the port actually bound)
//   ISSUER           issuer URL (default http://127.0.0.1:<bound port>, https:// with TLS_CERT)
//   TLS_CERT         PEM certificate chain file: serve https (with TLS_KEY)
//   TLS_KEY          PEM private key file for TLS_CERT
//   CLIENTS          JSON array of {client_id, client_secret, redirect_uris, post_logout_redirect_uris};
//                    a URI on http://127.0.0.1 without a port matches any port
//   AT_TTL           access-token lifetime in seconds (default 300)
//   ID_TTL           ID-token lifetime in seconds (default 3600)
//   BIG_CLAIM_BYTES  size of the "big" claim (scope "big"), to push tokens past 4 KB (default 0)
// Users: any login and password; user "bob" is in group "viewers", everyone else in "admins","dev".
// Prints "ready <issuer>" once listening and serving; the issuer names the bound port.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT || 0);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`PORT must be a port number (0 for ephemeral), got ${process.env.PORT}`);
  process.exit(2);
}
const tls = process.env.TLS_CERT
  ? { cert: fs.readFileSync(process.env.TLS_CERT), key: fs.readFileSync(process.env.TLS_KEY) }
  : null;

// Bind first (port 0 is fine), then build the provider with the issuer of the bound port:
// no port is chosen before it is bound.
const server = tls ? https.createServer(tls) : http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, '127.0.0.1', resolve);
});
const bound = server.address().port;
const issuer = process.env.ISSUER || `${tls ? 'https' : 'http'}://127.0.0.1:${bound}`;
const atTtl = Number(process.env.AT_TTL || 300);
const idTtl = Number(process.env.ID_TTL || 3600);
const bigBytes = Number(process.env.BIG_CLAIM_BYTES || 0);
const clients = JSON.parse(process.env.CLIENTS || '[]').map((c) => ({
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  token_endpoint_auth_method: 'client_secret_basic',
  ...c,
}));

// Fresh signing keys per run, with fresh kids (a restarted provider looks like a key
// rotation): one RSA key (RS256, used for ID tokens) and one EC key.
const run = crypto.randomBytes(4).toString('hex');
const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
const jwks = {
  keys: [
    { ...rsa, kid: `rsa-${run}`, use: 'sig', alg: 'RS256' },
    { ...ec, kid: `ec-${run}`, use: 'sig', alg: 'ES256' },
  ],
};

const bigValue = bigBytes > 0 ? 'b'.repeat(bigBytes) : undefined;

const configuration = {
  clients,
  jwks,
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
    big: ['big'],
  },
  scopes: ['openid', 'offline_access', 'email', 'groups', 'big'],
  // Put scope claims into the ID token even in the code flow (the gateway reads them there).
  conformIdTokenClaims: false,
  findAccount: async (ctx, id) => ({
    accountId: id,
    async claims() {
      const claims = {
        sub: id,
        email: `${id}@example.com`,
        email_verified: true,
        groups: id === 'bob' ? ['viewers'] : ['admins', 'dev'],
      };
      if (bigValue) claims.big = bigValue;
      return claims;
    },
  }),
  // Tests log in without a consent screen: grant whatever the client asked for.
  loadExistingGrant: async (ctx) => {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) {
      const existing = await ctx.oidc.provider.Grant.find(grantId);
      if (existing) return existing;
    }
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope(ctx.oidc.params.scope || 'openid');
    await grant.save();
    return grant;
  },
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  ttl: {
    AccessToken: atTtl,
    IdToken: idTtl,
    AuthorizationCode: 60,
    RefreshToken: 24 * 3600,
    Grant: 24 * 3600,
    Interaction: 3600,
    Session: 24 * 3600,
  },
  features: {
    devInteractions: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      // A page with the confirmation button; tests (and the browser test) press it.
      logoutSource: async (ctx, form) => {
        ctx.body = `<!DOCTYPE html><html><head><title>Sign out</title></head><body>
<h1>Sign out of the test provider?</h1>${form}
<button id="logout-yes" type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>
</body></html>`;
      },
    },
  },
};

const provider = new Provider(issuer, configuration);
provider.proxy = false;

// A redirect URI registered on http://127.0.0.1 without a port matches that URI on any port
// (as RFC 8252 7.3 does for native apps): the tests learn a gateway's port only once Envoy has
// bound it, after this provider started. URIs registered with a port still match exactly.
const anyLoopbackPort = (registered, value) => {
  const reg = URL.parse(registered);
  const got = URL.parse(value);
  if (!reg || !got || reg.protocol !== 'http:' || reg.hostname !== '127.0.0.1' || reg.port !== '') {
    return false;
  }
  if (registered.includes('127.0.0.1:')) return false; // an explicit port, even :80
  if (got.protocol !== 'http:' || got.hostname !== '127.0.0.1') return false;
  got.port = '';
  return got.href === reg.href;
};
for (const [method, list] of [['redirectUriAllowed', 'redirectUris'], ['postLogoutRedirectUriAllowed', 'postLogoutRedirectUris']]) {
  const exact = provider.Client.prototype[method];
  provider.Client.prototype[method] = function allowed(value) {
    return exact.call(this, value) || (this[list] || []).some((r) => anyLoopbackPort(r, value));
  };
}
provider.on('server_error', (ctx, err) => console.error('server_error', err));
provider.on('grant.error', (ctx, err) => console.error('grant.error', err.message, err.error_description || ''));
provider.on('end_session.error', (ctx, err) => console.error('end_session.error', err.message, err.error_description || ''));
provider.on('authorization.error', (ctx, err) => console.error('authorization.error', err.message, err.error_description || ''));

server.on('request', provider.callback());
console.log(`ready ${issuer}`);
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
