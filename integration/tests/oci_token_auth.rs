//! Issue 4: the Docker token (Bearer) flow against a real registry.
//!
//! Debian's `docker-registry` runs with `auth.token`: it answers `401` with
//! `WWW-Authenticate: Bearer realm=...,service=...` and verifies ES256 JWTs signed by a key whose
//! certificate is in its `rootcertbundle`. The token server is ours, in this test: it checks the
//! Basic credentials the client sends, and signs a token granting the scope asked for.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use portcullis_integration::registry::{Registry, TokenAuth};
use portcullis_oci::{pull_wasm, push_wasm, OciError, PullOptions, PushOptions, RegistryAuth};

const USER: &str = "token-user";
const PASS: &str = "token-pass";
const SERVICE: &str = "portcullis-test-registry";
const ISSUER: &str = "portcullis-test-token-issuer";

struct Issuer {
    key: jsonwebtoken::EncodingKey,
    cert_der_b64: String,
    /// Scopes of tokens issued, and requests refused.
    issued: Mutex<Vec<String>>,
    refused: Mutex<usize>,
}

/// `GET /token?service=..&scope=repository:NAME:ACTIONS` with Basic credentials.
async fn token(
    axum::extract::State(issuer): axum::extract::State<Arc<Issuer>>,
    axum::extract::Query(q): axum::extract::Query<BTreeMap<String, String>>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"))
    );
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == expected);
    if !authorized || q.get("service").map(String::as_str) != Some(SERVICE) {
        *issuer.refused.lock().unwrap() += 1;
        return (axum::http::StatusCode::UNAUTHORIZED, "bad credentials").into_response();
    }
    let scope = q.get("scope").cloned().unwrap_or_default();
    let access: Vec<serde_json::Value> = scope
        .split(' ')
        .filter_map(|s| {
            let mut parts = s.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
        })
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": USER, "aud": SERVICE,
        "iat": now - 5, "nbf": now - 5, "exp": now + 300,
        "jti": format!("{now}-{}", issuer.issued.lock().unwrap().len()),
        "access": access,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.x5c = Some(vec![issuer.cert_der_b64.clone()]);
    let jwt = jsonwebtoken::encode(&header, &claims, &issuer.key).unwrap();
    issuer.issued.lock().unwrap().push(scope);
    axum::Json(serde_json::json!({"token": jwt, "expires_in": 300})).into_response()
}

#[test]
fn bearer_token_flow_with_docker_config_credentials() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let key_pair = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![ISSUER.to_string()])
        .unwrap()
        .self_signed(&key_pair)
        .unwrap();
    let issuer = Arc::new(Issuer {
        key: jsonwebtoken::EncodingKey::from_ec_der(&key_pair.serialize_der()),
        cert_der_b64: base64::engine::general_purpose::STANDARD.encode(cert.der()),
        issued: Mutex::new(Vec::new()),
        refused: Mutex::new(0),
    });

    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let realm = format!("http://{}/token", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/token", axum::routing::get(token))
        .with_state(issuer.clone());
    rt.spawn(async move { axum::serve(listener, app).await });

    let reg = Registry::start_with_token_auth(TokenAuth {
        realm,
        service: SERVICE.into(),
        issuer: ISSUER.into(),
        root_cert_pem: cert.pem(),
    })
    .unwrap();

    let wasm = b"\0asm\x01\0\0\0\0\x06\x01tbearer".to_vec();
    let r = format!("{}/private/tok:v1", reg.host());
    rt.block_on(async {
        // No token: the registry itself says so with a Bearer challenge.
        let resp = reqwest::get(format!("{}/v2/", reg.url())).await.unwrap();
        assert_eq!(resp.status().as_u16(), 401);
        let challenge = resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            challenge.starts_with("Bearer ") && challenge.contains(SERVICE),
            "{challenge}"
        );

        let push = PushOptions {
            auth: RegistryAuth::basic(USER, PASS),
            ..PushOptions::default()
        };
        let pushed = push_wasm(&wasm, &r, &push).await.unwrap();

        // Pull with the credentials from a .dockerconfigjson.
        let cfg = serde_json::json!({"auths": {reg.host(): {"username": USER, "password": PASS}}})
            .to_string();
        let opts = PullOptions {
            auth: RegistryAuth::from_docker_config_json(cfg.as_bytes(), &reg.host()).unwrap(),
            expected_digest: Some(pushed.manifest_digest.clone()),
            ..PullOptions::default()
        };
        let pulled = pull_wasm(&r, &opts).await.unwrap();
        assert_eq!(pulled.wasm, wasm);

        let issued = issuer.issued.lock().unwrap().clone();
        assert!(
            issued
                .iter()
                .any(|s| s == "repository:private/tok:pull,push"),
            "{issued:?}"
        );
        assert!(
            issued.iter().any(|s| s == "repository:private/tok:pull"),
            "{issued:?}"
        );

        // Wrong password: the token server refuses, and the error names the registry and 401.
        let refused_before = *issuer.refused.lock().unwrap();
        let opts = PullOptions {
            auth: RegistryAuth::basic(USER, "wrong"),
            ..PullOptions::default()
        };
        let err = pull_wasm(&r, &opts).await.unwrap_err();
        assert!(
            matches!(err, OciError::Unauthorized { status: 401, .. }),
            "{err}"
        );
        assert!(err.to_string().contains(&reg.host()), "{err}");
        assert!(*issuer.refused.lock().unwrap() > refused_before);
    });
}
