//! End-to-end environment for the oidc filter: a real oidc-provider, an echo upstream and an
//! Envoy with one listener per policy (each its own oidc filter config) plus the
//! `provider_cluster` pointing at the provider. Also [`Agent`]: a cookie-keeping HTTP client
//! that can walk the whole login flow, submitting the provider's devInteractions form.
//!
//! `envoy.rs` builds a single-listener bootstrap without extra clusters, hence this module.
//! The filter runs on either [`Runtime`] ([`EnvOptions::runtime`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::blocking::Client;
use reqwest::Url;
use serde_json::{json, Value};

use crate::echo::{Echo, EchoServer};
use crate::oidc_provider::{OidcProvider, ProviderOptions, TestClient};
use crate::process::{envoy_bin, workspace_root, Error, Process, ProcessBuilder};
use crate::runtime::Runtime;

/// Name of the provider cluster in the bootstrap.
pub const PROVIDER_CLUSTER: &str = "oidc-idp";

fn io(what: impl Into<String>, e: impl std::fmt::Display) -> Error {
    Error::Io {
        what: what.into(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// The oidc module: `dist/wasm/oidc.wasm` if present, else the cargo output, else built
/// (cargo + wasm-opt when available) once per process.
pub fn oidc_module() -> Result<PathBuf, Error> {
    let root = workspace_root();
    let dist = root.join("dist/wasm/oidc.wasm");
    if dist.is_file() {
        return Ok(dist);
    }
    let raw = root.join("target/wasm32-wasip1/wasm/oidc.wasm");
    static BUILD: Mutex<()> = Mutex::new(());
    let _g = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    if !raw.is_file() {
        let status = Command::new("cargo")
            .current_dir(&root)
            .args([
                "build",
                "--profile",
                "wasm",
                "--target",
                "wasm32-wasip1",
                "-p",
                "oidc",
            ])
            .status()
            .map_err(|e| io("cargo build -p oidc", e))?;
        if !status.success() {
            return Err(io("cargo build -p oidc", status));
        }
    }
    Ok(raw)
}

/// The oidc `HttpFilter` of listener `index` on `runtime`. On wasm every listener's filter
/// shares one VM (`vm_id` `oidc`, as the controller shares VMs per module) with its own plugin
/// name; the dynamic module has one filter config per listener.
pub fn oidc_filter(runtime: Runtime, index: usize, config: &Value) -> Result<Value, Error> {
    Ok(match runtime {
        Runtime::Wasm => {
            let mut f =
                crate::runtime::wasm_filter(&oidc_module()?, "oidc", "oidc", &config.to_string());
            f["typed_config"]["config"]["name"] = json!(format!("oidc-{index}"));
            f
        }
        Runtime::Dynamic => {
            let library = crate::wasm::dynamic_library().map_err(|e| io("libportcullis.so", e))?;
            crate::runtime::dynamic_filter(&library, "oidc", &config.to_string())
        }
    })
}

/// One protected listener: a client at the provider and its filter config.
#[derive(Debug, Clone)]
pub struct Policy {
    pub client_id: String,
    pub port: u16,
    pub config: Value,
}

/// Edits a policy's config: (policy index, config).
pub type ConfigEdit = Box<dyn Fn(usize, &mut Value)>;

/// Options for [`OidcEnv::start`].
pub struct EnvOptions {
    /// Which build of the filter Envoy runs (default [`Runtime::Wasm`]).
    pub runtime: Runtime,
    /// Client ids, one listener each.
    pub clients: Vec<String>,
    pub provider: ProviderOptions,
    /// Edits each policy's config (index, config) before Envoy starts.
    pub edit: ConfigEdit,
    /// Point `provider_cluster` at a port where nothing listens.
    pub provider_down: bool,
}

impl Default for EnvOptions {
    fn default() -> Self {
        Self {
            runtime: Runtime::Wasm,
            clients: vec!["app".into()],
            provider: ProviderOptions::default(),
            edit: Box::new(|_, _| {}),
            provider_down: false,
        }
    }
}

pub struct OidcEnv {
    pub policies: Vec<Policy>,
    pub provider: OidcProvider,
    pub echo: EchoServer,
    envoy: Process,
    admin_port: u16,
    /// Held while the env lives when the provider is meant to be down.
    _closed: Option<crate::process::ClosedPort>,
}

/// A random base64 32-byte cookie secret.
pub fn random_secret() -> String {
    use base64::Engine;
    let bytes: Vec<u8> = (0..32).map(|_| fastrand::u8(..)).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The default filter config for a listener on `port` against `issuer`.
pub fn default_config(issuer: &str, client_id: &str, port: u16) -> Value {
    json!({
        "issuer": issuer,
        "provider_cluster": PROVIDER_CLUSTER,
        "client_id": client_id,
        "client_secret": format!("{client_id}-secret"),
        "redirect_uri": format!("http://127.0.0.1:{port}/oauth2/callback"),
        "scopes": ["openid", "email", "groups"],
        "logout": {"path": "/logout", "post_logout_redirect_uri": format!("http://127.0.0.1:{port}/")},
        "cookie": {"name": "portcullis", "secret": random_secret()},
        "pass_through": [{"path_prefix": "/healthz"}],
        "api_paths": [{"path_prefix": "/api"}],
        "forward": {"access_token": true, "id_token_header": "x-id-token"},
        "claims_to_headers": {"email": "x-user-email", "groups": "x-user-groups"},
        "bearer": {"accept": true},
        "clock_skew_seconds": 0
    })
}

impl OidcEnv {
    /// Starts provider, echo upstream and Envoy; waits until every listener has finished
    /// discovery (answers something other than 503), unless the provider is down.
    ///
    /// No port is chosen up front. Envoy binds each policy's listener on port 0 (file-based
    /// LDS, first with a placeholder that answers 503), the harness reads the ports it bound
    /// from the admin, then replaces the listeners with the real ones, whose redirect URIs name
    /// those ports: same name, same address, so Envoy keeps the socket. The provider's clients
    /// are native ones, whose loopback redirect URIs match on any port (RFC 8252 7.3).
    pub fn start(opts: EnvOptions) -> Result<Self, Error> {
        let echo = EchoServer::start()?;
        let dir = tempfile::Builder::new()
            .prefix("portcullis-oidc-envoy-")
            .tempdir()
            .map_err(|e| io("tempdir", e))?;
        let lds_path = dir.path().join("lds.json");
        let placeholders: Vec<Value> = (0..opts.clients.len())
            .map(|i| listener(i, 0, placeholder_filters()))
            .collect();
        crate::envoy::write_lds(&lds_path, 1, &placeholders)?;
        // The provider is down: its cluster names a port held closed (connections refused).
        let closed = if opts.provider_down {
            Some(crate::process::ClosedPort::new()?)
        } else {
            None
        };
        let mut popts = opts.provider.clone();
        // The provider runs first, so the static provider cluster can name its port.
        popts.clients = opts
            .clients
            .iter()
            .map(|c| TestClient::loopback(c))
            .collect();
        let provider = OidcProvider::start(popts)?;
        let provider_port = closed.as_ref().map_or(provider.port(), |c| c.port());
        let issuer = provider.issuer();
        let boot = bootstrap(&lds_path, echo.port(), provider_port);
        let config_path = dir.path().join("envoy.json");
        let text = serde_json::to_string_pretty(&boot).map_err(|e| io("bootstrap", e))?;
        std::fs::write(&config_path, text).map_err(|e| io("write bootstrap", e))?;
        let admin_address_path = dir.path().join(crate::envoy::ADMIN_ADDRESS_FILE);
        let mut envoy = ProcessBuilder::new("envoy", envoy_bin()?)
            .arg("-c")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_address_path)
            .args(["--concurrency", "1", "-l", "info", "--disable-hot-restart"])
            .spawn_in(dir)?;
        let client = crate::http::client();
        let admin_port = crate::envoy::wait_live(&mut envoy, &admin_address_path, &client)?;
        let names: Vec<String> = (0..opts.clients.len()).map(listener_name).collect();
        let ports: Vec<u16> = envoy.wait_until(
            "Envoy to bind the policy listeners",
            Duration::from_secs(60),
            || {
                let bound =
                    crate::envoy::listener_ports(&client, admin_port).map_err(|e| e.to_string())?;
                names
                    .iter()
                    .map(|n| {
                        bound
                            .get(n)
                            .copied()
                            .ok_or(format!("{n} not bound: {bound:?}"))
                    })
                    .collect::<Result<Vec<u16>, String>>()
            },
        )?;
        let policies: Vec<Policy> = opts
            .clients
            .iter()
            .zip(&ports)
            .enumerate()
            .map(|(i, (c, p))| {
                let mut config = default_config(&issuer, c, *p);
                (opts.edit)(i, &mut config);
                Policy {
                    client_id: c.clone(),
                    port: *p,
                    config,
                }
            })
            .collect();
        let listeners: Vec<Value> = policies
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let filter = oidc_filter(opts.runtime, i, &p.config)?;
                Ok(listener(i, 0, vec![filter, router()]))
            })
            .collect::<Result<_, Error>>()?;
        let before = crate::envoy::lds_update_counts(&client, admin_port)
            .map_err(|e| io("admin /stats", e))?;
        crate::envoy::write_lds(&lds_path, 2, &listeners)?;
        let accepted = envoy.wait_until(
            "Envoy to take the oidc listeners",
            Duration::from_secs(60),
            || {
                let now = crate::envoy::lds_update_counts(&client, admin_port)?;
                if now.accepted > before.accepted {
                    Ok(true)
                } else if now.rejected > before.rejected {
                    Ok(false)
                } else {
                    Err(format!("LDS version 2 not applied yet: {now:?}"))
                }
            },
        )?;
        if !accepted {
            return Err(io(
                "oidc listeners",
                "Envoy rejected the oidc listeners (see its log)",
            ));
        }
        let rebound = crate::envoy::listener_ports(&client, admin_port)?;
        for (name, port) in names.iter().zip(&ports) {
            if rebound.get(name) != Some(port) {
                return Err(io(
                    "oidc listeners",
                    format!("{name} moved from port {port} to {:?}", rebound.get(name)),
                ));
            }
        }
        if !opts.provider_down {
            for p in &policies {
                let url = format!("http://127.0.0.1:{}/", p.port);
                envoy.wait_until("oidc discovery to finish", Duration::from_secs(60), || {
                    let r = client
                        .get(&url)
                        .header("accept", "text/html")
                        .send()
                        .map_err(|e| e.to_string())?;
                    if r.status().as_u16() == 503 {
                        Err(r.text().unwrap_or_default())
                    } else {
                        Ok(())
                    }
                })?;
            }
        }
        Ok(Self {
            policies,
            provider,
            echo,
            envoy,
            admin_port,
            _closed: closed,
        })
    }

    /// Restarts the provider on the same port (see [`OidcProvider::restart`]).
    pub fn restart_provider(&mut self) -> Result<(), Error> {
        self.provider.restart()
    }

    /// `http://127.0.0.1:<port of policy i><path>`
    pub fn url(&self, i: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.policies[i].port)
    }

    /// Sum of every stat whose name ends with `name` (Envoy prefixes the filters' metrics:
    /// `wasmcustom.` on wasm, the `portcullis.` namespace on the dynamic module).
    pub fn counter(&self, name: &str) -> u64 {
        let url = format!("http://127.0.0.1:{}/stats?filter={name}", self.admin_port);
        let body = crate::http::client()
            .get(&url)
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default();
        body.lines()
            .filter_map(|l| l.rsplit_once(": "))
            .filter(|(k, _)| k.ends_with(name))
            .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
            .sum()
    }

    pub fn envoy_logs(&self) -> String {
        self.envoy.logs()
    }
}

fn listener_name(index: usize) -> String {
    format!("policy-{index}")
}

/// Listener `policy-<index>` on `port` with these HTTP filters, routing to the echo upstream.
fn listener(index: usize, port: u16, http_filters: Vec<Value>) -> Value {
    json!({
        "name": listener_name(index),
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": format!("policy{index}"),
                "route_config": {"name": "local", "virtual_hosts": [{"name": "all", "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]}]},
                "http_filters": http_filters
            }
        }]}]
    })
}

fn router() -> Value {
    json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
}

/// Until the oidc config is known: answer 503 for everything (never the upstream unprotected).
fn placeholder_filters() -> Vec<Value> {
    vec![
        json!({"name": "envoy.filters.http.fault", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
            "abort": {"http_status": 503, "percentage": {"numerator": 100}}}}),
        router(),
    ]
}

/// Admin on port 0 (read back from `--admin-address-path`), listeners from `lds` (file-based
/// LDS), the echo upstream and the provider as static clusters.
fn bootstrap(lds: &std::path::Path, echo_port: u16, provider_port: u16) -> Value {
    let cluster = |name: &str, port: u16| {
        json!({
            "name": name, "type": "STATIC", "connect_timeout": "2s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address":
                {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}
        })
    };
    json!({
        // File-based LDS needs a node identity.
        "node": {"id": "oidc-e2e", "cluster": "portcullis-tests"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {
            "lds_config": {"path_config_source": {"path": lds}, "resource_api_version": "V3"}
        },
        "static_resources": {
            "clusters": [cluster("upstream", echo_port), cluster(PROVIDER_CLUSTER, provider_port)]
        }
    })
}

/// A response as the agent saw it.
#[derive(Debug, Clone)]
pub struct Resp {
    pub url: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The `Location`, resolved against the request URL.
    pub fn location(&self) -> Option<String> {
        let loc = self.header("location")?;
        Url::parse(&self.url)
            .ok()?
            .join(loc)
            .ok()
            .map(|u| u.to_string())
    }

    /// The echo upstream's view of the request.
    pub fn echo(&self) -> Echo {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not an echo body ({e}): {}", self.body))
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// An HTTP client with a cookie jar keyed by name only: everything here runs on 127.0.0.1,
/// and browsers share cookies across ports of one host, which is exactly what the
/// two-policies test needs to exercise.
#[derive(Clone)]
pub struct Agent {
    client: Client,
    pub jar: BTreeMap<String, String>,
    /// Every exchange, in order: the `Cookie` header sent and the response (for replays).
    pub history: Vec<(String, Resp)>,
}

impl Default for Agent {
    fn default() -> Self {
        Self::new()
    }
}

impl Agent {
    pub fn new() -> Self {
        Self {
            client: crate::http::client(),
            jar: BTreeMap::new(),
            history: Vec::new(),
        }
    }

    /// An agent that also trusts the CA certificates in `pem` (a provider served over https).
    pub fn trusting(pem: &[u8]) -> Self {
        Self {
            client: crate::http::client_trusting(pem).expect("CA PEM parses"),
            jar: BTreeMap::new(),
            history: Vec::new(),
        }
    }

    fn apply(&mut self, headers: &[(String, String)]) {
        for (k, v) in headers {
            if k != "set-cookie" {
                continue;
            }
            let Some((name, value)) = v.split(';').next().and_then(|f| f.split_once('=')) else {
                continue;
            };
            let lower = v.to_ascii_lowercase();
            let deleted = lower.contains("max-age=0") || lower.contains("expires=thu, 01 jan 1970");
            if deleted {
                self.jar.remove(name.trim());
            } else {
                self.jar
                    .insert(name.trim().to_string(), value.trim().to_string());
            }
        }
    }

    pub fn cookie_header(&self) -> String {
        self.jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// A request with the jar's cookies and extra headers; applies `Set-Cookie`.
    pub fn send(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        form: Option<&[(&str, &str)]>,
    ) -> Resp {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET);
        let mut req = self.client.request(method, url);
        let sent = self.cookie_header();
        if !self.jar.is_empty() {
            req = req.header("cookie", &sent);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(form) = form {
            let body = form
                .iter()
                .map(|(k, v)| format!("{}={}", urlenc(k), urlenc(v)))
                .collect::<Vec<_>>()
                .join("&");
            req = req
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body);
        }
        let resp = req.send().unwrap_or_else(|e| panic!("{url}: {e}"));
        let status = resp.status().as_u16();
        let headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = resp.text().unwrap_or_default();
        self.apply(&headers);
        let resp = Resp {
            url: url.to_string(),
            status,
            headers,
            body,
        };
        self.history.push((sent, resp.clone()));
        resp
    }

    /// A browser-like GET (`Accept: text/html`).
    pub fn get(&mut self, url: &str) -> Resp {
        self.send(
            "GET",
            url,
            &[("accept", "text/html,application/xhtml+xml")],
            None,
        )
    }

    /// Follows redirects (at most 20) from `resp`, submitting the provider's login form as
    /// `user` (unless empty) when it shows up and its logout confirmation when `confirm_logout`. Returns the
    /// first response that is neither a redirect nor one of those forms.
    pub fn follow(&mut self, mut resp: Resp, user: &str, confirm_logout: bool) -> Resp {
        for _ in 0..20 {
            if (300..400).contains(&resp.status) {
                let Some(next) = resp.location() else {
                    return resp;
                };
                resp = self.get(&next);
                continue;
            }
            if !user.is_empty() && resp.status == 200 && resp.body.contains("name=\"login\"") {
                let Some(action) = form_action(&resp.body) else {
                    return resp;
                };
                let url = Url::parse(&resp.url)
                    .and_then(|u| u.join(&action))
                    .map(|u| u.to_string())
                    .unwrap_or(action);
                resp = self.send(
                    "POST",
                    &url,
                    &[("accept", "text/html")],
                    Some(&[("prompt", "login"), ("login", user), ("password", "pw")]),
                );
                continue;
            }
            if confirm_logout && resp.status == 200 && resp.body.contains("op.logoutForm") {
                let Some(action) = form_action(&resp.body) else {
                    return resp;
                };
                let xsrf = hidden_value(&resp.body, "xsrf").unwrap_or_default();
                let url = Url::parse(&resp.url)
                    .and_then(|u| u.join(&action))
                    .map(|u| u.to_string())
                    .unwrap_or(action);
                resp = self.send(
                    "POST",
                    &url,
                    &[("accept", "text/html")],
                    Some(&[("xsrf", &xsrf), ("logout", "yes")]),
                );
                continue;
            }
            return resp;
        }
        resp
    }

    /// Replaces the jar with the cookies of a `Cookie` header.
    pub fn set_cookies(&mut self, header: &str) {
        self.jar = header
            .split(';')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
    }

    /// The first recorded exchange whose URL contains `needle`.
    pub fn find(&self, needle: &str) -> Option<&(String, Resp)> {
        self.history.iter().find(|(_, r)| r.url.contains(needle))
    }

    /// Visits `url` and logs in as `user` if asked to; returns the final response.
    pub fn login(&mut self, url: &str, user: &str) -> Resp {
        let first = self.get(url);
        self.follow(first, user, false)
    }
}

fn urlenc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `action` of the first form in an HTML page.
pub fn form_action(html: &str) -> Option<String> {
    let start = html.find("<form")?;
    let rest = &html[start..];
    let a = rest.find("action=\"")? + "action=\"".len();
    let end = rest[a..].find('"')?;
    Some(rest[a..a + end].replace("&amp;", "&"))
}

fn hidden_value(html: &str, name: &str) -> Option<String> {
    let key = format!("name=\"{name}\"");
    let at = html.find(&key)?;
    let tag_start = html[..at].rfind('<')?;
    let tag_end = at + html[at..].find('>')?;
    let tag = &html[tag_start..tag_end];
    let v = tag.find("value=\"")? + "value=\"".len();
    let end = tag[v..].find('"')?;
    Some(tag[v..v + end].to_string())
}
