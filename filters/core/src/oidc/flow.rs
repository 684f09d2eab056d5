//! The per-request state machine.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::config::{HttpUrl, SameSite};
use super::cookies::{self, parse_cookie_headers};
use super::jwt::{self, Claims, Expectations, JwtError};
use super::seal::random_bytes;
use super::session::OpenedSession;
pub use super::session::Session;
use super::urls::{form_encode, html_escape, query_get, safe_return_path, split_path, with_query};
use super::{metrics, Action, CallKind, Callout, Provider};
use crate::host::{Direction, Host, LogLevel};

const REQ: Direction = Direction::Request;

/// The login-flow cookie: one per policy, overwritten by each new login.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FlowState {
    /// state
    s: String,
    /// nonce
    n: String,
    /// PKCE verifier
    v: String,
    /// return path
    u: String,
    /// expiry (unix seconds)
    e: u64,
}

#[derive(Debug, Default, Deserialize)]
struct TokenResponse {
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<Value>,
}

impl TokenResponse {
    fn expires_in(&self) -> Option<u64> {
        match &self.expires_in {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
enum Pending {
    #[default]
    Idle,
    Exchange(FlowState),
    LoginJwks(FlowState, TokenResponse),
    Refresh(Session),
    BearerJwks(String),
}

#[derive(Debug, Default)]
struct RequestInfo {
    path: String,
    cookies: Vec<(String, String)>,
    /// Answer with 401 JSON rather than a login redirect.
    api: bool,
}

/// One request's progress through the OIDC flow.
#[derive(Debug, Default)]
pub struct RequestFlow {
    pending: Pending,
    info: RequestInfo,
    /// `Set-Cookie` values to add to the upstream response (after a transparent refresh).
    response_cookies: Vec<String>,
}

fn now_secs(host: &dyn Host) -> u64 {
    host.now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random_b64(n: usize) -> Option<String> {
    let mut buf = vec![0u8; n];
    random_bytes(&mut buf).ok()?;
    Some(URL_SAFE_NO_PAD.encode(buf))
}

fn reject(host: &mut dyn Host, reason: &str, detail: &str) {
    host.counter_add(metrics::REJECTED, 1);
    host.counter_add(&metrics::rejected(reason), 1);
    host.log(
        LogLevel::Debug,
        &format!("oidc: rejected ({reason}): {detail}"),
    );
}

/// Header value for a claim: strings as is, arrays joined with commas, others as JSON.
/// Control characters are dropped so a claim can never split a header.
fn claim_value(v: &Value) -> String {
    let raw = match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    raw.chars().filter(|c| !c.is_control()).collect()
}

/// Whether claim `name` (value `v`) contains `wanted`. Only `scope` and `scp` are
/// space-separated lists (RFC 9068 2.2.3, RFC 8693 4.2); other strings compare whole, so a
/// `name` of "Bob admins" never satisfies `admins`.
fn claim_contains(name: &str, v: &Value, wanted: &str) -> bool {
    match v {
        Value::String(s) if name == "scope" || name == "scp" => s.split(' ').any(|p| p == wanted),
        Value::String(s) => s == wanted,
        Value::Array(a) => a.iter().any(|x| x.as_str() == Some(wanted)),
        Value::Bool(b) => b.to_string() == wanted,
        Value::Number(n) => n.to_string() == wanted,
        _ => false,
    }
}

/// Header names a backend may treat as the same header: case and `_`/`-` differ (CGI-style
/// servers map both `x-user-email` and `x_user_email` to `HTTP_X_USER_EMAIL`).
fn header_key(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

/// `scheme://host[:port]`, lowercase, default port dropped, for comparing origins.
fn normalize_origin(scheme: &str, authority: &str) -> String {
    let scheme = scheme.to_ascii_lowercase();
    let authority = authority.to_ascii_lowercase();
    let default = if scheme == "https" { ":443" } else { ":80" };
    let authority = authority.strip_suffix(default).unwrap_or(&authority);
    format!("{scheme}://{authority}")
}

impl RequestFlow {
    pub fn new() -> Self {
        Self::default()
    }

    fn session_aad(p: &Provider) -> Vec<u8> {
        format!("session\0{}", p.settings.session_cookie).into_bytes()
    }

    fn flow_aad(p: &Provider) -> Vec<u8> {
        format!("flow\0{}", p.settings.flow_cookie).into_bytes()
    }

    /// Request headers arrived.
    pub fn on_request_headers(&mut self, host: &mut dyn Host, p: &mut Provider) -> Action {
        let s = p.settings.clone();
        let now = now_secs(host);
        // Identity headers are only ever set by this filter: drop client-sent copies first,
        // with every spelling a backend could fold into the same name.
        let identity: Vec<String> = s
            .config
            .claims_to_headers
            .values()
            .chain(&s.config.forward.id_token_header)
            .map(|h| header_key(h))
            .collect();
        let mut forged: Vec<String> = host
            .headers(REQ)
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| identity.contains(&header_key(k)))
            .collect();
        forged.sort();
        forged.dedup();
        for h in &forged {
            host.remove_header(REQ, h);
        }
        let path = host.header(REQ, ":path").unwrap_or_default();
        let cookie_values: Vec<String> = host
            .headers(REQ)
            .into_iter()
            .filter(|(k, _)| k == "cookie")
            .map(|(_, v)| v)
            .collect();
        let accept = host.header(REQ, "accept").unwrap_or_default();
        let xhr = host
            .header(REQ, "x-requested-with")
            .is_some_and(|v| v.eq_ignore_ascii_case("xmlhttprequest"));
        let (path_only, query) = split_path(&path);
        let (path_only, query) = (path_only.to_string(), query.to_string());
        self.info = RequestInfo {
            cookies: parse_cookie_headers(cookie_values.iter().map(String::as_str)),
            api: s.is_api_path(&path_only) || !accept.contains("text/html") || xhr,
            path,
        };

        if s.is_pass_through(&path_only) {
            self.strip_own_cookies(host, p);
            return Action::Continue;
        }
        if !p.ready() {
            reject(
                host,
                "not_ready",
                p.last_error.as_deref().unwrap_or("discovery pending"),
            );
            let body = format!(
                "{{\"error\":\"temporarily_unavailable\",\"error_description\":\"OIDC provider {} is not reachable yet (discovery pending); retry shortly\"}}",
                s.issuer.replace('"', "")
            );
            host.send_local_response(
                503,
                &[
                    ("content-type", "application/json"),
                    ("retry-after", "2"),
                    ("cache-control", "no-store"),
                ],
                body.as_bytes(),
            );
            return Action::Responded;
        }
        if path_only == s.redirect.path {
            return self.callback(host, p, &query, now);
        }
        if s.config
            .logout
            .as_ref()
            .is_some_and(|l| l.path == path_only)
        {
            return self.logout(host, p, &path_only);
        }
        if s.config.bearer.accept {
            if let Some(auth) = host.header(REQ, "authorization") {
                if let Some((scheme, token)) = auth.split_once(' ') {
                    if scheme.eq_ignore_ascii_case("bearer") {
                        return self.bearer(host, p, token.trim().to_string(), now, true);
                    }
                }
            }
        }
        let max_age = s.config.cookie.max_age.secs();
        match self.open_session_cached(host, p, now) {
            Some(o) if o.session.login_at.saturating_add(max_age) <= now => {
                reject(host, "session_expired", "cookie.max_age reached");
                self.unauthenticated(host, p, None)
            }
            Some(o) if o.session.expires_at > now => self.authorize_opened(host, p, &o),
            Some(o) if o.session.refresh_token.is_some() => {
                let session = o.session.clone();
                let call =
                    self.refresh_call(p, session.refresh_token.as_deref().unwrap_or_default());
                self.pending = Pending::Refresh(session);
                match call {
                    Some(c) => Action::Call(c),
                    None => self.unauthenticated(host, p, None),
                }
            }
            Some(_) => {
                reject(host, "session_expired", "no refresh token");
                self.unauthenticated(host, p, None)
            }
            None => self.unauthenticated(host, p, None),
        }
    }

    /// A provider call made for this request completed (`status` 0: failed or timed out).
    pub fn on_callout_response(
        &mut self,
        host: &mut dyn Host,
        p: &mut Provider,
        status: u32,
        body: &[u8],
    ) -> Action {
        let now = now_secs(host);
        match std::mem::take(&mut self.pending) {
            Pending::Idle => Action::Continue,
            Pending::Exchange(flow) => {
                if status != 200 {
                    let detail = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                    reject(
                        host,
                        "code_exchange_failed",
                        &format!("token endpoint HTTP {status}: {detail}"),
                    );
                    return self.deny(host, p, 401, "The login could not be completed (the authorization code was refused). Please start again.", true);
                }
                match serde_json::from_slice::<TokenResponse>(body) {
                    Ok(tokens) => self.finish_login(host, p, flow, tokens, now, true),
                    Err(e) => {
                        reject(
                            host,
                            "code_exchange_failed",
                            &format!("token response: {e}"),
                        );
                        self.deny(
                            host,
                            p,
                            502,
                            "The identity provider sent an unreadable token response.",
                            true,
                        )
                    }
                }
            }
            Pending::LoginJwks(flow, tokens) => {
                if let Err(e) = p.on_jwks_refetch(status, body) {
                    host.log(LogLevel::Warn, &format!("oidc: JWKS refetch failed: {e}"));
                }
                self.finish_login(host, p, flow, tokens, now, false)
            }
            Pending::Refresh(old) => self.finish_refresh(host, p, old, status, body, now),
            Pending::BearerJwks(token) => {
                if let Err(e) = p.on_jwks_refetch(status, body) {
                    host.log(LogLevel::Warn, &format!("oidc: JWKS refetch failed: {e}"));
                }
                self.bearer(host, p, token, now, false)
            }
        }
    }

    /// Response headers from upstream: add cookies from a transparent refresh.
    pub fn on_response_headers(&mut self, host: &mut dyn Host) {
        if self.response_cookies.is_empty() {
            return;
        }
        // A shared cache must never store (and replay to others) a response carrying a session.
        host.set_header(Direction::Response, "cache-control", "no-store");
        for c in self.response_cookies.drain(..) {
            host.add_header(Direction::Response, "set-cookie", &c);
        }
    }

    /// [`open_session`](Self::open_session) through the worker's cache of opened sessions: a
    /// cookie seen before (byte for byte) and not expired skips AES-GCM and JSON.
    fn open_session_cached(
        &self,
        host: &mut dyn Host,
        p: &mut Provider,
        now: u64,
    ) -> Option<Arc<OpenedSession>> {
        let s = &p.settings;
        let sealed = cookies::join_chunks(
            &self.info.cookies,
            &s.session_cookie,
            s.config.cookie.max_chunks,
        )?;
        if let Some(hit) = p.sessions.get(&sealed, now) {
            return Some(hit);
        }
        let session = self.open_sealed(host, p, &sealed)?;
        let claims = jwt::unverified_claims(&session.id_token);
        let opened = Arc::new(OpenedSession { session, claims });
        p.sessions.put(&sealed, opened.clone(), now);
        Some(opened)
    }

    fn open_session(&self, host: &mut dyn Host, p: &Provider) -> Option<Session> {
        let s = &p.settings;
        let sealed = cookies::join_chunks(
            &self.info.cookies,
            &s.session_cookie,
            s.config.cookie.max_chunks,
        )?;
        self.open_sealed(host, p, &sealed)
    }

    fn open_sealed(&self, host: &mut dyn Host, p: &Provider, sealed: &str) -> Option<Session> {
        let opened = p.sealer.open(&Self::session_aad(p), sealed);
        match opened
            .ok()
            .and_then(|raw| serde_json::from_slice::<Session>(&raw).ok())
        {
            Some(sess) => Some(sess),
            None => {
                reject(host, "bad_session", "session cookie did not open");
                None
            }
        }
    }

    fn strip_own_cookies(&self, host: &mut dyn Host, p: &Provider) {
        let s = &p.settings;
        let own = self
            .info
            .cookies
            .iter()
            .any(|(n, _)| cookies::is_own_cookie(n, &s.session_cookie, &s.flow_cookie));
        if !own {
            return;
        }
        host.remove_header(REQ, "cookie");
        if let Some(rest) =
            cookies::strip_own(&self.info.cookies, &s.session_cookie, &s.flow_cookie)
        {
            host.set_header(REQ, "cookie", &rest);
        }
    }

    fn same_site(p: &Provider) -> SameSite {
        p.settings.config.cookie.same_site
    }

    /// `Set-Cookie` values deleting every session chunk the browser sent (from `from` on).
    fn delete_chunks(&self, p: &Provider, from: usize) -> Vec<String> {
        let s = &p.settings;
        cookies::present_chunks(
            &self.info.cookies,
            &s.session_cookie,
            s.config.cookie.max_chunks,
        )
        .into_iter()
        .filter(|i| *i >= from)
        .map(|i| {
            cookies::set_cookie(
                &s.config.cookie,
                &format!("{}-{i}", s.session_cookie),
                "",
                Some(0),
                Self::same_site(p),
            )
        })
        .collect()
    }

    fn delete_flow(&self, p: &Provider) -> Option<String> {
        let s = &p.settings;
        cookies::get(&self.info.cookies, &s.flow_cookie)?;
        Some(cookies::set_cookie(
            &s.config.cookie,
            &s.flow_cookie,
            "",
            Some(0),
            SameSite::Lax,
        ))
    }

    /// `Set-Cookie` values storing `session`, deleting leftover chunks of a larger one.
    fn session_cookies(&self, p: &Provider, session: &Session) -> Option<Vec<String>> {
        let s = &p.settings;
        let json = serde_json::to_vec(session).ok()?;
        let sealed = p.sealer.seal(&Self::session_aad(p), &json).ok()?;
        let chunks = cookies::split_chunks(&sealed, s.config.cookie.max_chunks)?;
        let mut out: Vec<String> = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                cookies::set_cookie(
                    &s.config.cookie,
                    &format!("{}-{i}", s.session_cookie),
                    c,
                    None,
                    Self::same_site(p),
                )
            })
            .collect();
        out.extend(self.delete_chunks(p, chunks.len()));
        Some(out)
    }

    /// An error answer: JSON for API clients, a small HTML page for browsers.
    fn deny(
        &mut self,
        host: &mut dyn Host,
        p: &Provider,
        status: u16,
        message: &str,
        clear_flow: bool,
    ) -> Action {
        let mut set_cookies: Vec<String> = Vec::new();
        if clear_flow {
            set_cookies.extend(self.delete_flow(p));
        }
        let www = format!(
            "Bearer realm=\"{}\", error=\"invalid_token\"",
            p.settings.config.client_id.replace('"', "")
        );
        let (ctype, body) = if self.info.api {
            let code = match status {
                401 => "unauthorized",
                403 => "forbidden",
                400 => "invalid_request",
                _ => "server_error",
            };
            (
                "application/json",
                serde_json::json!({"error": code, "error_description": message}).to_string(),
            )
        } else {
            let msg = html_escape(message);
            ("text/html; charset=utf-8", format!("<!doctype html><title>{status}</title><h1>{status}</h1><p>{msg}</p><p><a href=\"/\">Start again</a></p>"))
        };
        let mut headers: Vec<(&str, &str)> =
            vec![("content-type", ctype), ("cache-control", "no-store")];
        if status == 401 {
            headers.push(("www-authenticate", &www));
        }
        for c in &set_cookies {
            headers.push(("set-cookie", c));
        }
        host.send_local_response(status, &headers, body.as_bytes());
        Action::Responded
    }

    /// No valid session: API clients get 401, browsers are sent to the provider.
    fn unauthenticated(
        &mut self,
        host: &mut dyn Host,
        p: &Provider,
        token_error: Option<&str>,
    ) -> Action {
        let mut set_cookies = self.delete_chunks(p, 0);
        if self.info.api {
            let realm = p.settings.config.client_id.replace('"', "");
            let www = match token_error {
                Some(_) => format!("Bearer realm=\"{realm}\", error=\"invalid_token\""),
                None => format!("Bearer realm=\"{realm}\""),
            };
            let body = serde_json::json!({
                "error": if token_error.is_some() { "invalid_token" } else { "unauthorized" },
                "error_description": token_error.unwrap_or("authentication required"),
            })
            .to_string();
            let mut headers: Vec<(&str, &str)> = vec![
                ("content-type", "application/json"),
                ("www-authenticate", &www),
                ("cache-control", "no-store"),
            ];
            for c in &set_cookies {
                headers.push(("set-cookie", c));
            }
            host.send_local_response(401, &headers, body.as_bytes());
            return Action::Responded;
        }
        let Some(login) = self.login_redirect(p, host) else {
            return self.deny(
                host,
                p,
                500,
                "No randomness available to start a login.",
                false,
            );
        };
        set_cookies.push(login.1);
        let mut headers: Vec<(&str, &str)> =
            vec![("location", &login.0), ("cache-control", "no-store")];
        for c in &set_cookies {
            headers.push(("set-cookie", c));
        }
        host.send_local_response(302, &headers, b"");
        Action::Responded
    }

    /// The authorization URL and the flow cookie for a fresh login.
    fn login_redirect(&self, p: &Provider, host: &dyn Host) -> Option<(String, String)> {
        let s = &p.settings;
        let d = p.discovery.as_ref()?;
        let flow = FlowState {
            s: random_b64(24)?,
            n: random_b64(24)?,
            v: random_b64(32)?,
            u: safe_return_path(&self.info.path),
            e: now_secs(host) + s.config.flow_ttl_seconds,
        };
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(flow.v.as_bytes()));
        let location = with_query(
            &d.authorization_endpoint,
            &[
                ("response_type", "code"),
                ("client_id", &s.config.client_id),
                ("redirect_uri", &s.config.redirect_uri),
                ("scope", &s.scope),
                ("state", &flow.s),
                ("nonce", &flow.n),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
            ],
        );
        let sealed = p
            .sealer
            .seal(&Self::flow_aad(p), &serde_json::to_vec(&flow).ok()?)
            .ok()?;
        // Lax (not Strict) so the cookie comes back on the provider's cross-site redirect.
        let same_site = if s.config.cookie.same_site == SameSite::None {
            SameSite::None
        } else {
            SameSite::Lax
        };
        let cookie = cookies::set_cookie(
            &s.config.cookie,
            &s.flow_cookie,
            &sealed,
            Some(s.config.flow_ttl_seconds),
            same_site,
        );
        Some((location, cookie))
    }

    fn callback(&mut self, host: &mut dyn Host, p: &mut Provider, query: &str, now: u64) -> Action {
        // The callback is always a browser navigation.
        self.info.api = false;
        let s = p.settings.clone();
        if let Some(err) = query_get(query, "error") {
            let desc = query_get(query, "error_description").unwrap_or_default();
            reject(host, "provider_error", &format!("{err}: {desc}"));
            let msg = format!("The identity provider refused the login: {err} {desc}");
            return self.deny(host, p, 401, msg.trim(), true);
        }
        let flow = cookies::get(&self.info.cookies, &s.flow_cookie)
            .and_then(|v| p.sealer.open(&Self::flow_aad(p), v).ok())
            .and_then(|raw| serde_json::from_slice::<FlowState>(&raw).ok());
        let Some(flow) = flow else {
            reject(host, "bad_state", "no valid flow cookie");
            return self.deny(host, p, 400, "This login link is not valid any more (no login in progress in this browser). Please start again.", true);
        };
        if flow.e <= now {
            reject(host, "bad_state", "flow cookie expired");
            return self.deny(
                host,
                p,
                400,
                "The login took too long. Please start again.",
                true,
            );
        }
        let state = query_get(query, "state").unwrap_or_default();
        if !super::ct_eq(state.as_bytes(), flow.s.as_bytes()) {
            reject(host, "bad_state", "state mismatch");
            return self.deny(
                host,
                p,
                400,
                "The login state does not match (possible CSRF). Please start again.",
                true,
            );
        }
        if let Some(iss) = query_get(query, "iss") {
            if iss.trim_end_matches('/') != s.issuer {
                reject(host, "bad_issuer", "iss parameter mismatch");
                return self.deny(
                    host,
                    p,
                    400,
                    "The login answer came from an unexpected issuer.",
                    true,
                );
            }
        }
        let Some(code) = query_get(query, "code").filter(|c| !c.is_empty()) else {
            reject(host, "bad_state", "no code");
            return self.deny(
                host,
                p,
                400,
                "The login answer has no authorization code.",
                true,
            );
        };
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", s.config.redirect_uri.as_str()),
            ("code_verifier", flow.v.as_str()),
        ];
        if s.config.client_secret.is_none() {
            form.push(("client_id", s.config.client_id.as_str()));
        }
        let Some(call) = self.token_call(p, CallKind::Token, &form_encode(&form)) else {
            return self.deny(
                host,
                p,
                503,
                "The identity provider's token endpoint is not usable.",
                true,
            );
        };
        self.pending = Pending::Exchange(flow);
        Action::Call(call)
    }

    fn token_call(&self, p: &Provider, kind: CallKind, body: &str) -> Option<Callout> {
        let s = &p.settings;
        let d = p.discovery.as_ref()?;
        let mut call = p.get(kind, &d.token_endpoint)?;
        call.method = "POST".into();
        call.headers.push((
            "content-type".into(),
            "application/x-www-form-urlencoded".into(),
        ));
        if let Some(secret) = &s.config.client_secret {
            // RFC 6749 2.3.1: both parts are form-encoded before Basic encoding.
            let enc =
                |v: &str| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
            let basic = STANDARD.encode(format!("{}:{}", enc(&s.config.client_id), enc(secret)));
            call.headers
                .push(("authorization".into(), format!("Basic {basic}")));
        }
        call.body = Some(body.as_bytes().to_vec());
        Some(call)
    }

    fn refresh_call(&self, p: &Provider, refresh_token: &str) -> Option<Callout> {
        let s = &p.settings;
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ];
        if s.config.client_secret.is_none() {
            form.push(("client_id", s.config.client_id.as_str()));
        }
        self.token_call(p, CallKind::Refresh, &form_encode(&form))
    }

    fn id_expectations<'a>(
        p: &'a Provider,
        aud: &'a [String],
        nonce: Option<&'a str>,
        now: u64,
    ) -> Expectations<'a> {
        let s = &p.settings;
        Expectations {
            issuer: &s.issuer,
            audiences: aud,
            nonce,
            authorized_parties: aud,
            id_token_for: Some(&s.config.client_id),
            require_at_jwt: false,
            now,
            skew: s.config.clock_skew_seconds,
        }
    }

    fn finish_login(
        &mut self,
        host: &mut dyn Host,
        p: &mut Provider,
        flow: FlowState,
        tokens: TokenResponse,
        now: u64,
        may_refetch: bool,
    ) -> Action {
        let Some(id_token) = tokens.id_token.clone() else {
            reject(
                host,
                "code_exchange_failed",
                "token response without id_token",
            );
            return self.deny(
                host,
                p,
                502,
                "The identity provider sent no ID token.",
                true,
            );
        };
        let aud = vec![p.settings.config.client_id.clone()];
        let verified = match p.jwks.as_ref() {
            Some(jwks) => jwt::verify(
                &id_token,
                jwks,
                &Self::id_expectations(p, &aud, Some(&flow.n), now),
            ),
            None => Err(JwtError::NoKey),
        };
        let claims = match verified {
            Ok(c) => c,
            Err(JwtError::UnknownKid(kid)) if may_refetch => match p.jwks_refetch(now) {
                Some(call) => {
                    self.pending = Pending::LoginJwks(flow, tokens);
                    return Action::Call(call);
                }
                None => {
                    reject(host, "unknown_kid", &kid);
                    return self.deny(
                        host,
                        p,
                        401,
                        "The ID token is signed by an unknown key.",
                        true,
                    );
                }
            },
            Err(e) => {
                reject(host, e.reason(), &e.to_string());
                return self.deny(
                    host,
                    p,
                    401,
                    &format!("The ID token was rejected: {e}."),
                    true,
                );
            }
        };
        let id_exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(now);
        let expires_at = match (&tokens.access_token, tokens.expires_in()) {
            (Some(_), Some(secs)) => now.saturating_add(secs),
            (Some(_), None) => now + p.settings.config.default_session_seconds,
            (None, _) => id_exp,
        };
        let session = Session {
            id_token,
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
            expires_at,
            login_at: now,
        };
        let Some(mut set_cookies) = self.session_cookies(p, &session) else {
            reject(
                host,
                "session_too_large",
                "session exceeds cookie.max_chunks",
            );
            return self.deny(
                host,
                p,
                500,
                "The session is too large for the configured cookie.max_chunks.",
                true,
            );
        };
        set_cookies.extend(self.delete_flow(p));
        host.counter_add(metrics::LOGINS, 1);
        let mut headers: Vec<(&str, &str)> =
            vec![("location", &flow.u), ("cache-control", "no-store")];
        for c in &set_cookies {
            headers.push(("set-cookie", c));
        }
        host.send_local_response(302, &headers, b"");
        Action::Responded
    }

    fn finish_refresh(
        &mut self,
        host: &mut dyn Host,
        p: &mut Provider,
        old: Session,
        status: u32,
        body: &[u8],
        now: u64,
    ) -> Action {
        let tokens = (status == 200)
            .then(|| serde_json::from_slice::<TokenResponse>(body).ok())
            .flatten();
        let Some(tokens) = tokens.filter(|t| t.access_token.is_some() || t.id_token.is_some())
        else {
            reject(
                host,
                "refresh_failed",
                &format!("token endpoint HTTP {status}"),
            );
            return self.unauthenticated(host, p, None);
        };
        if let Some(id) = &tokens.id_token {
            let aud = vec![p.settings.config.client_id.clone()];
            let checked = match p.jwks.as_ref() {
                Some(jwks) => jwt::verify(id, jwks, &Self::id_expectations(p, &aud, None, now)),
                None => Err(JwtError::NoKey),
            };
            let new = match checked {
                Ok(c) => c,
                Err(e) => {
                    reject(host, "refresh_failed", &format!("refreshed ID token: {e}"));
                    return self.unauthenticated(host, p, None);
                }
            };
            // OIDC Core 12.2: same issuer and subject as at login, else it is another user's
            // token and the session ends.
            let same = jwt::unverified_claims(&old.id_token).is_some_and(|orig| {
                ["iss", "sub"]
                    .iter()
                    .all(|c| orig.get(*c).is_some() && orig.get(*c) == new.get(*c))
            });
            if !same {
                reject(
                    host,
                    "session_mismatch",
                    "refreshed ID token has another iss or sub",
                );
                return self.unauthenticated(host, p, None);
            }
        }
        let expires_at = match (&tokens.access_token, tokens.expires_in()) {
            (Some(_), Some(secs)) => now.saturating_add(secs),
            _ => now + p.settings.config.default_session_seconds,
        };
        let session = Session {
            id_token: tokens.id_token.unwrap_or(old.id_token),
            access_token: tokens.access_token.or(old.access_token),
            refresh_token: tokens.refresh_token.or(old.refresh_token),
            expires_at,
            login_at: old.login_at,
        };
        match self.session_cookies(p, &session) {
            Some(c) => self.response_cookies = c,
            None => {
                reject(
                    host,
                    "session_too_large",
                    "refreshed session exceeds cookie.max_chunks",
                );
                return self.unauthenticated(host, p, None);
            }
        }
        host.counter_add(metrics::REFRESH, 1);
        self.authorize_session(host, p, &session)
    }

    fn bearer(
        &mut self,
        host: &mut dyn Host,
        p: &mut Provider,
        token: String,
        now: u64,
        may_refetch: bool,
    ) -> Action {
        self.info.api = true;
        let hash = Provider::token_hash(&token);
        if let Some(claims) = p.cached_bearer(&hash, now) {
            host.counter_add(metrics::BEARER_VALID, 1);
            return self.authorize(host, p, &claims);
        }
        let s = p.settings.clone();
        let expect = Expectations {
            issuer: &s.issuer,
            audiences: &s.bearer_audiences,
            nonce: None,
            authorized_parties: &s.bearer_authorized_parties,
            id_token_for: None,
            require_at_jwt: s.config.bearer.require_at_jwt,
            now,
            skew: s.config.clock_skew_seconds,
        };
        let verified = match p.jwks.as_ref() {
            Some(jwks) => jwt::verify(&token, jwks, &expect),
            None => Err(JwtError::NoKey),
        };
        match verified {
            Ok(claims) => {
                let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(now);
                let claims = Arc::new(claims);
                p.cache_bearer(hash, claims.clone(), exp);
                host.counter_add(metrics::BEARER_VALID, 1);
                self.authorize(host, p, &claims)
            }
            Err(JwtError::UnknownKid(kid)) if may_refetch => match p.jwks_refetch(now) {
                Some(call) => {
                    self.pending = Pending::BearerJwks(token);
                    Action::Call(call)
                }
                None => {
                    reject(host, "unknown_kid", &kid);
                    self.unauthenticated(host, p, Some("token signed by an unknown key"))
                }
            },
            Err(e) => {
                reject(host, e.reason(), &e.to_string());
                let msg = e.to_string();
                self.unauthenticated(host, p, Some(&msg))
            }
        }
    }

    fn authorize_session(
        &mut self,
        host: &mut dyn Host,
        p: &mut Provider,
        session: &Session,
    ) -> Action {
        let claims = jwt::unverified_claims(&session.id_token);
        self.authorize_with(host, p, session, claims.as_ref())
    }

    fn authorize_opened(
        &mut self,
        host: &mut dyn Host,
        p: &mut Provider,
        o: &OpenedSession,
    ) -> Action {
        self.authorize_with(host, p, &o.session, o.claims.as_ref())
    }

    fn authorize_with(
        &mut self,
        host: &mut dyn Host,
        p: &mut Provider,
        session: &Session,
        claims: Option<&Claims>,
    ) -> Action {
        let Some(claims) = claims else {
            reject(host, "bad_session", "stored ID token unreadable");
            return self.unauthenticated(host, p, None);
        };
        let s = p.settings.clone();
        if s.config.forward.access_token {
            if let Some(at) = &session.access_token {
                host.set_header(REQ, "authorization", &format!("Bearer {at}"));
            }
        }
        if let Some(h) = &s.config.forward.id_token_header {
            host.set_header(REQ, h, &session.id_token);
        }
        let action = self.authorize(host, p, claims);
        if action == Action::Continue {
            host.counter_add(metrics::SESSIONS_VALID, 1);
        }
        action
    }

    /// `require` check, claims to headers, cookie stripping.
    fn authorize(&mut self, host: &mut dyn Host, p: &Provider, claims: &Claims) -> Action {
        let s = &p.settings.config;
        for (claim, accepted) in &s.require {
            let ok = claims
                .get(claim)
                .is_some_and(|v| accepted.iter().any(|a| claim_contains(claim, v, a)));
            if !ok {
                reject(
                    host,
                    "forbidden",
                    &format!("claim {claim} lacks a required value"),
                );
                let msg =
                    format!("Access denied: claim {claim:?} has none of the required values.");
                return self.deny(host, p, 403, &msg, false);
            }
        }
        for (claim, header) in &s.claims_to_headers {
            if let Some(v) = claims.get(claim) {
                host.set_header(REQ, header, &claim_value(v));
            }
        }
        self.strip_own_cookies(host, p);
        Action::Continue
    }

    /// Logout CSRF check: a POST, or a GET/HEAD the browser marks as same-origin
    /// (`Sec-Fetch-Site: same-origin` or an `Origin` of this site). A foreign `Origin` or a
    /// cross-site `Sec-Fetch-Site` always refuses.
    fn logout_allowed(&self, host: &dyn Host, p: &Provider) -> bool {
        let method = host.header(REQ, ":method").unwrap_or_default();
        let site = host.header(REQ, "sec-fetch-site");
        let site = site.as_deref().map(str::to_ascii_lowercase);
        let authority = host
            .header(REQ, ":authority")
            .or_else(|| host.header(REQ, "host"))
            .unwrap_or_default();
        let scheme = host
            .header(REQ, ":scheme")
            .unwrap_or_else(|| p.settings.redirect.scheme.clone());
        // The redirect_uri origin counts as ours too: TLS may end before Envoy (`:scheme` http).
        let own = [
            normalize_origin(&scheme, &authority),
            normalize_origin(&p.settings.redirect.scheme, &p.settings.redirect.authority),
        ];
        let origin_ok = host.header(REQ, "origin").map(|o| {
            HttpUrl::parse(&o)
                .is_ok_and(|u| own.contains(&normalize_origin(&u.scheme, &u.authority)))
        });
        if origin_ok == Some(false) {
            return false;
        }
        match method.as_str() {
            "POST" => matches!(site.as_deref(), None | Some("same-origin") | Some("none")),
            "GET" | "HEAD" => site.as_deref() == Some("same-origin") || origin_ok == Some(true),
            _ => false,
        }
    }

    /// 403 for a logout that may be cross-site; the session is kept. Browsers get a button
    /// that POSTs the logout.
    fn refuse_logout(&mut self, host: &mut dyn Host, p: &Provider, path: &str) -> Action {
        reject(
            host,
            "cross_site_logout",
            "logout without POST or same-origin proof",
        );
        let message = "Logging out needs a POST or a same-origin request.";
        if self.info.api {
            return self.deny(host, p, 403, message, false);
        }
        let body = format!(
            "<!doctype html><title>403</title><h1>403</h1><p>{}</p><form method=\"post\" action=\"{}\"><button type=\"submit\">Log out</button></form>",
            html_escape(message),
            html_escape(path)
        );
        host.send_local_response(
            403,
            &[
                ("content-type", "text/html; charset=utf-8"),
                ("cache-control", "no-store"),
            ],
            body.as_bytes(),
        );
        Action::Responded
    }

    fn logout(&mut self, host: &mut dyn Host, p: &mut Provider, path: &str) -> Action {
        if !self.logout_allowed(host, p) {
            return self.refuse_logout(host, p, path);
        }
        let s = p.settings.clone();
        let session = self.open_session(host, p);
        let mut set_cookies = self.delete_chunks(p, 0);
        set_cookies.extend(self.delete_flow(p));
        let post = s
            .config
            .logout
            .as_ref()
            .and_then(|l| l.post_logout_redirect_uri.clone());
        let location = match p
            .discovery
            .as_ref()
            .and_then(|d| d.end_session_endpoint.clone())
        {
            Some(end) => {
                let mut params: Vec<(&str, &str)> = vec![("client_id", &s.config.client_id)];
                if let Some(sess) = &session {
                    params.push(("id_token_hint", &sess.id_token));
                }
                if let Some(post) = &post {
                    params.push(("post_logout_redirect_uri", post));
                }
                with_query(&end, &params)
            }
            None => post.unwrap_or_else(|| "/".into()),
        };
        let mut headers: Vec<(&str, &str)> =
            vec![("location", &location), ("cache-control", "no-store")];
        for c in &set_cookies {
            headers.push(("set-cookie", c));
        }
        host.send_local_response(302, &headers, b"");
        Action::Responded
    }
}

#[cfg(test)]
#[path = "flow_tests.rs"]
mod tests;
