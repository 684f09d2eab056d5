//! Entry points for the fuzz targets (`fuzz/fuzz_targets/oidc_*.rs`), also run over
//! pseudo-random inputs by the unit tests: nothing here may panic, whatever the bytes.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use super::config::Settings;
use super::cookies::{self, parse_cookie_headers};
use super::jwt::{self, Expectations, Jwks};
use super::provider::Discovery;
use super::seal::Sealer;
use super::urls;
use super::{Action, CallKind, Provider, RequestFlow};
use crate::testing::MemoryHost;

const NOW: u64 = 1_700_000_000;
const ISSUER: &str = "https://idp.example.com";
const JWKS: &str = concat!(
    "{\"keys\":[",
    include_str!("testdata/rsa1.jwk.json"),
    ",",
    include_str!("testdata/ec1.jwk.json"),
    "]}"
);

/// Config parsing: any bytes; a config that parses must survive a serde round trip.
pub fn config(data: &[u8]) {
    if let Ok(s) = Settings::from_json(data) {
        let text = serde_json::to_string(&s.config).unwrap_or_default();
        let again = Settings::from_json(text.as_bytes());
        assert_eq!(
            again.ok().map(|a| a.config),
            Some(s.config),
            "round trip of {text}"
        );
    }
}

/// Cookie parsing, chunk reassembly, stripping and opening sealed values.
pub fn cookies(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let parsed = parse_cookie_headers(text.split('\n'));
    let joined = cookies::join_chunks(&parsed, "s", 8);
    let _ = cookies::strip_own(&parsed, "s", "s-flow");
    let sealer = Sealer::new(&[9u8; 32]);
    if let Some(j) = &joined {
        let _ = sealer.open(b"session", j);
    }
    let _ = sealer.open(b"session", &text);
    // Whatever the plaintext, sealing then opening returns it, and chunks reassemble.
    if let Ok(sealed) = sealer.seal(b"aad", data) {
        assert_eq!(sealer.open(b"aad", &sealed).ok().as_deref(), Some(data));
        if let Some(chunks) = cookies::split_chunks(&sealed, 64) {
            let pairs: Vec<(String, String)> = chunks
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("n-{i}"), c.to_string()))
                .collect();
            assert_eq!(
                cookies::join_chunks(&pairs, "n", 64).as_deref(),
                Some(sealed.as_str())
            );
        }
    }
}

/// JWT parsing and verification, JWKS parsing.
pub fn jwt(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let jwks = Jwks::parse(JWKS.as_bytes()).ok();
    let aud = vec!["client".to_string()];
    let expect = Expectations {
        issuer: ISSUER,
        audiences: &aud,
        nonce: Some("n"),
        authorized_parties: &aud,
        id_token_for: Some("client"),
        require_at_jwt: false,
        now: NOW,
        skew: 60,
    };
    if let Some(jwks) = &jwks {
        // Nothing forged from fuzz bytes may verify against keys the fuzzer does not hold.
        assert!(
            jwt::verify(&text, jwks, &expect).is_err(),
            "forged token verified: {text}"
        );
    }
    let _ = jwt::unverified_claims(&text);
    let _ = Jwks::parse(data);
}

/// Query parsing and return-path sanitising.
pub fn urls(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = urls::query_pairs(&text);
    let (p, q) = urls::split_path(&text);
    let _ = urls::query_get(q, "state");
    let safe = urls::safe_return_path(p);
    assert!(
        safe.starts_with('/') && !safe.starts_with("//") && !safe.starts_with("/\\"),
        "{safe:?}"
    );
    assert!(!safe.bytes().any(|b| b.is_ascii_control()));
    let escaped = urls::html_escape(&text);
    assert!(!escaped.contains('<') && !escaped.contains('"'));
}

fn settings() -> Option<Settings> {
    let cfg = serde_json::json!({
        "issuer": ISSUER,
        "provider_cluster": "idp",
        "client_id": "client",
        "client_secret": "secret",
        "redirect_uri": "https://app.example.com/cb",
        "logout": {"path": "/logout", "post_logout_redirect_uri": "https://app.example.com/"},
        "cookie": {"secret": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="},
        "api_paths": [{"path_prefix": "/api"}],
        "claims_to_headers": {"email": "x-user-email", "groups": "x-user-groups"},
        "require": {"groups": ["admins"]},
        "bearer": {"accept": true}
    });
    Settings::from_json(cfg.to_string().as_bytes()).ok()
}

fn provider() -> Option<Provider> {
    let mut p = Provider::new(Arc::new(settings()?));
    p.poll(NOW)?;
    let disc = serde_json::json!({
        "issuer": ISSUER,
        "authorization_endpoint": "https://idp.example.com/auth",
        "token_endpoint": "https://idp.example.com/token",
        "jwks_uri": "https://idp.example.com/jwks",
        "end_session_endpoint": "https://idp.example.com/end"
    });
    p.on_fetch(CallKind::Discovery, 200, disc.to_string().as_bytes(), NOW)
        .ok()?;
    p.poll(NOW)?;
    p.on_fetch(CallKind::Jwks, 200, JWKS.as_bytes(), NOW).ok()?;
    Some(p)
}

/// The whole request flow: `:path`, `cookie`, `accept`, `authorization` and a callout answer
/// taken from the input lines.
pub fn request(data: &[u8]) {
    let Some(mut p) = provider() else { return };
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let path = lines.next().unwrap_or("/");
    let cookie = lines.next().unwrap_or("");
    let accept = lines.next().unwrap_or("");
    let authorization = lines.next().unwrap_or("");
    let status: u32 = lines.next().and_then(|s| s.parse().ok()).unwrap_or(200);
    let body: String = lines.collect::<Vec<_>>().join("\n");
    let mut host = MemoryHost::with_request(&[
        (":method", "GET"),
        (":path", path),
        ("cookie", cookie),
        ("accept", accept),
        ("authorization", authorization),
        ("x-user-email", "forged"),
    ]);
    host.now = Some(UNIX_EPOCH + Duration::from_secs(NOW));
    let mut flow = RequestFlow::new();
    let mut action = flow.on_request_headers(&mut host, &mut p);
    for _ in 0..3 {
        let Action::Call(_) = action else { break };
        action = flow.on_callout_response(&mut host, &mut p, status, body.as_bytes());
    }
    flow.on_response_headers(&mut host);
    // A request that went upstream never carries a client-supplied identity header.
    if action == Action::Continue {
        assert!(!host
            .values(crate::host::Direction::Request, "x-user-email")
            .contains(&"forged".to_string()));
    }
}

/// The `location` of a local response, checked to be one header line.
fn location(host: &MemoryHost) -> Option<String> {
    let r = host.local_response.as_ref()?;
    let (_, v) = r.headers.iter().find(|(k, _)| k == "location")?;
    assert!(
        !v.bytes().any(|b| b.is_ascii_control()),
        "location header with control bytes: {v:?}"
    );
    Some(v.clone())
}

/// Discovery document and JWKS bodies (split at the first NUL byte; without one, the input is
/// both), loaded as the provider loads them, then a login redirect and a logout built from the
/// document's endpoints.
pub fn discovery(data: &[u8]) {
    let (doc, keys) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, data),
    };
    let Some(settings) = settings() else { return };
    let parsed = Discovery::parse(doc, &settings);
    let _ = Jwks::parse(keys);
    let mut p = Provider::new(Arc::new(settings));
    let Some(first) = p.poll(NOW) else { return };
    assert_eq!(first.kind, CallKind::Discovery);
    let loaded = p.on_fetch(CallKind::Discovery, 200, doc, NOW);
    assert_eq!(loaded.is_ok(), parsed.is_ok(), "{loaded:?} vs {parsed:?}");
    let Ok(d) = parsed else {
        assert!(p.discovery.is_none() && !p.ready());
        return;
    };
    assert_eq!(p.discovery.as_ref(), Some(&d));
    // The keys come next, from `jwks_uri`; keys that do not load leave the filter unready.
    let jwks_call = p
        .poll(NOW)
        .expect("a JWKS fetch follows a loaded discovery document");
    assert_eq!(jwks_call.kind, CallKind::Jwks);
    assert!(jwks_call.path.starts_with('/'), "{jwks_call:?}");
    if p.on_fetch(CallKind::Jwks, 200, keys, NOW).is_err() {
        assert!(!p.ready());
        if p.on_fetch(CallKind::Jwks, 200, JWKS.as_bytes(), NOW)
            .is_err()
        {
            return;
        }
    }
    assert!(p.ready());
    // A browser without a session is sent to `authorization_endpoint`.
    let mut host = MemoryHost::with_request(&[
        (":method", "GET"),
        (":path", "/app"),
        (":authority", "app.example.com"),
        ("accept", "text/html"),
    ]);
    host.now = Some(UNIX_EPOCH + Duration::from_secs(NOW));
    let mut flow = RequestFlow::new();
    if flow.on_request_headers(&mut host, &mut p) == Action::Responded {
        if let Some(loc) = location(&host) {
            assert!(loc.starts_with(&d.authorization_endpoint), "{loc:?}");
        }
    }
    // A same-origin logout is sent to `end_session_endpoint`, else the post-logout URI.
    let mut host = MemoryHost::with_request(&[
        (":method", "POST"),
        (":path", "/logout"),
        (":authority", "app.example.com"),
        ("sec-fetch-site", "same-origin"),
    ]);
    host.now = Some(UNIX_EPOCH + Duration::from_secs(NOW));
    let mut flow = RequestFlow::new();
    if flow.on_request_headers(&mut host, &mut p) == Action::Responded {
        if let Some(loc) = location(&host) {
            let want = d
                .end_session_endpoint
                .as_deref()
                .unwrap_or("https://app.example.com/");
            assert!(loc.starts_with(want), "{loc:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    const DISCOVERY: &str = concat!(
        "{\"issuer\":\"https://idp.example.com\",",
        "\"authorization_endpoint\":\"https://idp.example.com/auth\",",
        "\"token_endpoint\":\"https://idp.example.com/token\",",
        "\"jwks_uri\":\"https://idp.example.com/jwks\",",
        "\"end_session_endpoint\":\"https://idp.example.com/end\"}"
    );
    use super::JWKS;

    /// Runs every entry point over pseudo-random and hand-picked inputs.
    #[test]
    fn entry_points_survive_noise() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"/?=&;.-_%+ \n\"\\ABCabc019eyJ{}[]:,=\r\x00\xff";
        let mut inputs: Vec<Vec<u8>> = vec![
            b"/oauth2/cb?code=x&state=y\na=b\ntext/html\n\n200\n{}".to_vec(),
            b"/logout\nportcullis-abc-0=zz\ntext/html".to_vec(),
            b"/api/x\n\n\nBearer eyJhbGciOiJub25lIn0.e30.\n".to_vec(),
            b"/cb?state=&code=\n\n\n\n200\n{\"id_token\":\"a.b.c\"}".to_vec(),
            b"//evil.example/\n".to_vec(),
            [DISCOVERY.as_bytes(), b"\0", JWKS.as_bytes()].concat(),
        ];
        for _ in 0..300 {
            let len = (next() % 200) as usize;
            inputs.push(
                (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect(),
            );
        }
        for input in &inputs {
            super::config(input);
            super::cookies(input);
            super::jwt(input);
            super::urls(input);
            super::request(input);
            super::discovery(input);
        }
    }
}
