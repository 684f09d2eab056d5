//! A real Envoy with a generated static bootstrap.
//!
//! ```no_run
//! use portcullis_integration::{echo::EchoServer, envoy::EnvoyBuilder, wasm};
//! use serde_json::json;
//!
//! let echo = EchoServer::start().unwrap();
//! let envoy = EnvoyBuilder::new()
//!     .upstream(echo.addr())
//!     .wasm("ua_block", wasm::module("ua_block").unwrap(), json!({"deny": {"contains": ["GPTBot"]}}))
//!     .start()
//!     .unwrap();
//! let resp = reqwest::blocking::get(envoy.url("/")).unwrap();
//! ```
//!
//! The bootstrap has one HTTP listener (plus an optional TLS listener with the same filter
//! chain), an admin listener, the given HTTP filters in order, then the router, and a single
//! route `/` to either an upstream cluster or a `direct_response`. Everything binds 127.0.0.1
//! port 0: Envoy picks free ports, the harness reads the admin port from
//! `--admin-address-path` and the listener ports from admin `/listeners` ([`listener_ports`]),
//! so no port is chosen first and bound later. `--disable-hot-restart` lets many Envoys run in
//! parallel.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use serde_json::{json, Value};

use crate::process::{envoy_bin, Error, Process, ProcessBuilder};

/// How long Envoy may take to become LIVE (V8 compiles modules at startup; cores are shared).
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// One HTTP filter in the chain, before the router.
#[derive(Debug, Clone)]
pub enum HttpFilter {
    /// A proxy-wasm module loaded from a local file, V8 runtime, JSON config as a StringValue.
    Wasm {
        name: String,
        module: PathBuf,
        /// Passed verbatim, so tests can hand over invalid JSON too.
        config: String,
    },
    /// A filter of `libportcullis.so` (`filter_name` selects it), JSON config as a StringValue.
    Dynamic {
        filter_name: String,
        library: PathBuf,
        config: String,
    },
    /// An inline Lua filter (`default_source_code`).
    Lua { code: String },
    /// Any other filter, as the JSON of an `HttpFilter` message (`name`, `typed_config`).
    Raw(Value),
}

impl HttpFilter {
    fn to_bootstrap(&self, index: usize) -> Value {
        match self {
            HttpFilter::Wasm {
                name,
                module,
                config,
            } => {
                // One VM per filter entry: filters in one chain must not share state.
                crate::runtime::wasm_filter(module, name, &format!("{name}-{index}"), config)
            }
            HttpFilter::Dynamic {
                filter_name,
                library,
                config,
            } => crate::runtime::dynamic_filter(library, filter_name, config),
            HttpFilter::Lua { code } => json!({
                "name": "envoy.filters.http.lua",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                    "default_source_code": { "inline_string": code }
                }
            }),
            HttpFilter::Raw(v) => v.clone(),
        }
    }
}

/// Where the single route `/` goes.
#[derive(Debug, Clone)]
pub enum Route {
    Upstream(SocketAddr),
    Direct { status: u16, body: String },
}

/// PEM certificate chain and key for the optional TLS listener.
#[derive(Debug, Clone)]
pub struct Tls {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Builds the bootstrap and starts Envoy.
#[derive(Debug, Clone)]
pub struct EnvoyBuilder {
    filters: Vec<HttpFilter>,
    route: Route,
    concurrency: u32,
    tls: Option<Tls>,
    log_level: String,
    component_log_level: Option<String>,
    hcm_extra: serde_json::Map<String, Value>,
    lds: bool,
}

impl Default for EnvoyBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl EnvoyBuilder {
    /// No filters, `direct_response` 200 "ok\n", one worker thread, log level info.
    pub fn new() -> Self {
        Self {
            filters: Vec::new(),
            route: Route::Direct {
                status: 200,
                body: "ok\n".into(),
            },
            concurrency: 1,
            tls: None,
            log_level: "info".into(),
            component_log_level: None,
            hcm_extra: serde_json::Map::new(),
            lds: false,
        }
    }

    /// Route everything to this upstream (e.g. [`crate::echo::EchoServer::addr`]).
    pub fn upstream(mut self, addr: SocketAddr) -> Self {
        self.route = Route::Upstream(addr);
        self
    }

    /// Answer everything with a fixed response instead of proxying.
    pub fn direct_response(mut self, status: u16, body: impl Into<String>) -> Self {
        self.route = Route::Direct {
            status,
            body: body.into(),
        };
        self
    }

    /// Appends a wasm filter with a JSON config.
    pub fn wasm(self, name: &str, module: impl AsRef<Path>, config: Value) -> Self {
        let config = config.to_string();
        self.wasm_raw(name, module, config)
    }

    /// Appends a wasm filter with a config string passed verbatim (e.g. malformed JSON).
    pub fn wasm_raw(
        mut self,
        name: &str,
        module: impl AsRef<Path>,
        config: impl Into<String>,
    ) -> Self {
        self.filters.push(HttpFilter::Wasm {
            name: name.to_string(),
            module: module.as_ref().to_path_buf(),
            config: config.into(),
        });
        self
    }

    /// Appends filter `name` (`ua_block`, `headers`, ...) on runtime `rt`, JSON config.
    pub fn filter(self, rt: crate::runtime::Runtime, name: &str, config: Value) -> Self {
        self.filter_raw(rt, name, config.to_string())
    }

    /// [`filter`](Self::filter) with the config string passed verbatim. Panics (failing the
    /// test with the build's message) if the module or library cannot be built.
    pub fn filter_raw(
        self,
        rt: crate::runtime::Runtime,
        name: &str,
        config: impl Into<String>,
    ) -> Self {
        match rt {
            crate::runtime::Runtime::Wasm => {
                let module = crate::wasm::module(name).unwrap_or_else(|e| panic!("{e}"));
                self.wasm_raw(name, module, config)
            }
            crate::runtime::Runtime::Dynamic => {
                let library = crate::wasm::dynamic_library().unwrap_or_else(|e| panic!("{e}"));
                self.dynamic_raw(name, library, config)
            }
        }
    }

    /// Appends a filter of a dynamic-module library, config string passed verbatim.
    pub fn dynamic_raw(
        mut self,
        filter_name: &str,
        library: impl AsRef<Path>,
        config: impl Into<String>,
    ) -> Self {
        self.filters.push(HttpFilter::Dynamic {
            filter_name: filter_name.to_string(),
            library: library.as_ref().to_path_buf(),
            config: config.into(),
        });
        self
    }

    /// Appends an inline Lua filter.
    pub fn lua(mut self, code: impl Into<String>) -> Self {
        self.filters.push(HttpFilter::Lua { code: code.into() });
        self
    }

    /// Appends any other HTTP filter (JSON of Envoy's `HttpFilter`).
    pub fn raw_filter(mut self, filter: Value) -> Self {
        self.filters.push(HttpFilter::Raw(filter));
        self
    }

    /// Number of worker threads (`--concurrency`).
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Also open a TLS listener ([`Envoy::https_url`]) with the same filters and route.
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets a field of the HttpConnectionManager config, e.g.
    /// `("server_header_transformation", json!("PASS_THROUGH"))` so the upstream's `server`
    /// header reaches the filters instead of Envoy overwriting it after them.
    pub fn hcm(mut self, field: &str, value: Value) -> Self {
        self.hcm_extra.insert(field.to_string(), value);
        self
    }

    /// Envoy's `-l` level (default `info`).
    pub fn log_level(mut self, level: impl Into<String>) -> Self {
        self.log_level = level.into();
        self
    }

    /// Envoy's `--component-log-level`, e.g. `wasm:debug,lua:debug`.
    pub fn component_log_level(mut self, levels: impl Into<String>) -> Self {
        self.component_log_level = Some(levels.into());
        self
    }

    /// Serve the listeners through file-based LDS (`lds.json` in the process dir) instead of
    /// `static_resources`, so a test can change them at runtime with
    /// [`Envoy::set_dynamic_listeners`] and see how Envoy treats a rejected update.
    pub fn dynamic_listeners(mut self) -> Self {
        self.lds = true;
        self
    }

    /// The listeners this builder describes (`http`, and `https` with TLS), on these ports.
    /// Listener names get `name_prefix` so they can be added to another Envoy's LDS.
    pub fn listeners(
        &self,
        name_prefix: &str,
        http_port: u16,
        https_port: Option<u16>,
    ) -> Vec<Value> {
        let mut http_filters: Vec<Value> = self
            .filters
            .iter()
            .enumerate()
            .map(|(i, f)| f.to_bootstrap(i))
            .collect();
        http_filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
        }));
        let route = match &self.route {
            Route::Upstream(_) => {
                json!({"match": {"prefix": "/"}, "route": {"cluster": "upstream"}})
            }
            Route::Direct { status, body } => json!({
                "match": {"prefix": "/"},
                "direct_response": {"status": status, "body": {"inline_string": body}}
            }),
        };
        let hcm = |stat_prefix: &str| {
            let mut hcm = json!({
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": stat_prefix,
                    "codec_type": "AUTO",
                    "route_config": {
                        "name": "local",
                        "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route.clone()]}]
                    },
                    "http_filters": http_filters.clone()
                }
            });
            if let Some(cfg) = hcm["typed_config"].as_object_mut() {
                cfg.extend(self.hcm_extra.clone());
            }
            hcm
        };
        let mut listeners = vec![json!({
            "name": format!("{name_prefix}http"),
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": http_port}},
            "filter_chains": [{"filters": [hcm("http")]}]
        })];
        if let (Some(tls), Some(port)) = (&self.tls, https_port) {
            listeners.push(json!({
                "name": format!("{name_prefix}https"),
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{
                    "filters": [hcm("https")],
                    "transport_socket": {
                        "name": "envoy.transport_sockets.tls",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                            "common_tls_context": {
                                "tls_certificates": [{
                                    "certificate_chain": {"inline_string": tls.cert_pem},
                                    "private_key": {"inline_string": tls.key_pem}
                                }]
                            }
                        }
                    }
                }]
            }));
        }
        listeners
    }

    /// The bootstrap for the given ports (exposed so tests can inspect or validate it). With
    /// [`dynamic_listeners`](Self::dynamic_listeners), listeners come from `lds_path`.
    pub fn bootstrap(
        &self,
        http_port: u16,
        https_port: Option<u16>,
        admin_port: u16,
        lds_path: Option<&Path>,
    ) -> Value {
        let listeners = match lds_path {
            Some(_) => Vec::new(),
            None => self.listeners("", http_port, https_port),
        };
        let mut clusters = Vec::new();
        if let Route::Upstream(addr) = &self.route {
            clusters.push(json!({
                "name": "upstream",
                "type": "STATIC",
                "connect_timeout": "5s",
                "load_assignment": {
                    "cluster_name": "upstream",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                        "address": addr.ip().to_string(), "port_value": addr.port()
                    }}}}]}]
                }
            }));
        }
        let mut bootstrap = json!({
            // Required by xDS (file-based too); harmless otherwise.
            "node": {"id": "portcullis-test", "cluster": "portcullis-test"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
            "static_resources": {"listeners": listeners, "clusters": clusters}
        });
        if let Some(path) = lds_path {
            bootstrap["dynamic_resources"] = json!({
                "lds_config": {"path_config_source": {"path": path}, "resource_api_version": "V3"}
            });
        }
        bootstrap
    }

    /// Writes the bootstrap and spawns Envoy without waiting; returns the process and ports.
    fn spawn(&self) -> Result<Spawned, Error> {
        // Port 0 everywhere: the ports Envoy bound are read back once it is LIVE.
        let http_port = 0;
        let https_port = self.tls.as_ref().map(|_| 0);
        let admin_port = 0;
        let dir = tempfile::Builder::new()
            .prefix("portcullis-envoy-")
            .tempdir()
            .map_err(|e| Error::Io {
                what: "create envoy temp dir".into(),
                source: e,
            })?;
        let config_path = dir.path().join("envoy.json");
        let lds_path = self.lds.then(|| dir.path().join("lds.json"));
        if let Some(lds) = &lds_path {
            write_lds(lds, 1, &self.listeners("", http_port, https_port))?;
        }
        let bootstrap = self.bootstrap(http_port, https_port, admin_port, lds_path.as_deref());
        let text = serde_json::to_string_pretty(&bootstrap).map_err(|e| Error::Io {
            what: "serialize bootstrap".into(),
            source: e.into(),
        })?;
        std::fs::write(&config_path, text).map_err(|e| Error::Io {
            what: format!("write {}", config_path.display()),
            source: e,
        })?;
        let admin_address_path = dir.path().join(ADMIN_ADDRESS_FILE);
        let mut b = ProcessBuilder::new("envoy", envoy_bin()?)
            .arg("-c")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_address_path)
            .args(["--concurrency", &self.concurrency.to_string()])
            .args(["-l", &self.log_level])
            .arg("--disable-hot-restart");
        if let Some(levels) = &self.component_log_level {
            b = b.args(["--component-log-level", levels]);
        }
        let process = b.spawn_in(dir)?;
        Ok(Spawned {
            process,
            admin_address_path,
            lds_path,
        })
    }

    /// Starts Envoy and waits until admin `/ready` answers `LIVE`.
    pub fn start(&self) -> Result<Envoy, Error> {
        let Spawned {
            mut process,
            admin_address_path,
            lds_path,
        } = self.spawn()?;
        let client = admin_client();
        let admin_port = wait_live(&mut process, &admin_address_path, &client)?;
        let ports = listener_ports(&client, admin_port)?;
        let bound = |name: &str| {
            ports.get(name).copied().ok_or_else(|| {
                Error::io(
                    "read Envoy's listener ports",
                    std::io::Error::other(format!("no listener {name:?} in /listeners: {ports:?}")),
                )
            })
        };
        let http_port = bound("http")?;
        let https_port = match self.tls {
            Some(_) => Some(bound("https")?),
            None => None,
        };
        // The LDS record keeps port 0, as first sent: re-sending it changes nothing.
        let listeners = match &lds_path {
            Some(_) => self.listeners("", 0, self.tls.as_ref().map(|_| 0)),
            None => Vec::new(),
        };
        Ok(Envoy {
            process,
            http_port,
            https_port,
            admin_port,
            client,
            lds: lds_path.map(|path| Lds {
                path,
                version: 1,
                listeners,
            }),
        })
    }

    /// Starts Envoy expecting it to refuse the config: waits for it to exit and returns the
    /// exit status and its log. Fails if it becomes LIVE instead, or is still running after
    /// [`READY_TIMEOUT`].
    pub fn start_expect_exit(&self) -> Result<(ExitStatus, String), Error> {
        let Spawned {
            mut process,
            admin_address_path,
            ..
        } = self.spawn()?;
        let client = admin_client();
        let outcome = process.wait_until("Envoy to exit", READY_TIMEOUT, || {
            let live = read_admin_port(&admin_address_path).is_some_and(|port| {
                client
                    .get(format!("http://127.0.0.1:{port}/ready"))
                    .send()
                    .and_then(|r| r.text())
                    .is_ok_and(|b| b.trim() == "LIVE")
            });
            if live {
                Ok(())
            } else {
                Err("running")
            }
        });
        match outcome {
            Err(Error::Exited { status, .. }) => Ok((status, process.logs())),
            Err(e) => Err(e),
            Ok(()) => Err(Error::Exited {
                name: "envoy".into(),
                what: "Envoy to refuse its config, but it became LIVE".into(),
                status: process.kill().unwrap_or_default(),
                logs: process.log_tail(),
            }),
        }
    }
}

/// A just-spawned Envoy, not yet known to be ready.
struct Spawned {
    process: Process,
    admin_address_path: PathBuf,
    lds_path: Option<PathBuf>,
}

/// The file, in Envoy's temp dir, that `--admin-address-path` names.
pub const ADMIN_ADDRESS_FILE: &str = "admin-address";

/// The admin port from an `--admin-address-path` file (`127.0.0.1:PORT`), once Envoy wrote it.
fn read_admin_port(path: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(path).ok()?;
    let addr: SocketAddr = text.trim().parse().ok()?;
    (addr.port() != 0).then_some(addr.port())
}

/// Waits until an Envoy started with its admin on port 0 and `--admin-address-path path` has
/// written its admin address and answers `LIVE` on `/ready`; returns the admin port.
pub fn wait_live(
    process: &mut Process,
    admin_address_path: &Path,
    client: &reqwest::blocking::Client,
) -> Result<u16, Error> {
    process.wait_until("Envoy admin /ready to say LIVE", READY_TIMEOUT, || {
        let port = read_admin_port(admin_address_path)
            .ok_or_else(|| format!("no admin address in {} yet", admin_address_path.display()))?;
        let resp = client
            .get(format!("http://127.0.0.1:{port}/ready"))
            .send()
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp.text().map_err(|e| e.to_string())?;
        if status.is_success() && body.trim() == "LIVE" {
            Ok(port)
        } else {
            Err(format!("{status}: {}", body.trim()))
        }
    })
}

/// The port each listener bound, by listener name, from admin `/listeners?format=json`
/// (listeners configured on port 0 report the port the kernel gave them).
pub fn listener_ports(
    client: &reqwest::blocking::Client,
    admin_port: u16,
) -> Result<BTreeMap<String, u16>, Error> {
    let url = format!("http://127.0.0.1:{admin_port}/listeners?format=json");
    let body: Value = client
        .get(&url)
        .send()
        .and_then(|r| r.json())
        .map_err(|e| http_err(&url, e))?;
    Ok(bound_listener_ports(&body))
}

/// Listener name → bound port, from an admin `/listeners?format=json` document. A listener
/// still binding (port 0) is left out.
pub fn bound_listener_ports(doc: &Value) -> BTreeMap<String, u16> {
    doc["listener_statuses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| {
            let name = l["name"].as_str()?.to_string();
            let port = l["local_address"]["socket_address"]["port_value"].as_u64()?;
            let port = u16::try_from(port).ok().filter(|p| *p != 0)?;
            Some((name, port))
        })
        .collect()
}

/// The port `listener` bound, from an admin `/listeners?format=json` document.
pub fn bound_listener_port(doc: &Value, listener: &str) -> Option<u16> {
    bound_listener_ports(doc).get(listener).copied()
}

/// Envoy's LDS update counters (`listener_manager.lds.update_success` / `update_rejected`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LdsUpdates {
    pub accepted: u64,
    pub rejected: u64,
}

/// [`LdsUpdates`] from admin `/stats` on `admin_port` (a counter not there yet reads 0).
pub(crate) fn lds_update_counts(
    client: &reqwest::blocking::Client,
    admin_port: u16,
) -> Result<LdsUpdates, String> {
    let url = format!("http://127.0.0.1:{admin_port}/stats?filter=listener_manager.lds.update_");
    let body = client
        .get(&url)
        .send()
        .and_then(|r| r.text())
        .map_err(|e| format!("{url}: {e}"))?;
    let value = |name: &str| {
        body.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(": ")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    Ok(LdsUpdates {
        accepted: value("listener_manager.lds.update_success"),
        rejected: value("listener_manager.lds.update_rejected"),
    })
}

/// Writes an LDS discovery response next to `path` and renames it into place: Envoy's file
/// watcher reacts to the move, and never reads a half-written file.
pub(crate) fn write_lds(path: &Path, version: u64, listeners: &[Value]) -> Result<(), Error> {
    let resources: Vec<Value> = listeners
        .iter()
        .map(|l| {
            let mut l = l.clone();
            l["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
            l
        })
        .collect();
    let doc = json!({"version_info": version.to_string(), "resources": resources});
    let tmp = path.with_extension(format!("tmp{version}"));
    std::fs::write(&tmp, doc.to_string())
        .map_err(|e| Error::io(format!("write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(format!("rename to {}", path.display()), e))
}

/// File-based LDS state of an Envoy started with [`EnvoyBuilder::dynamic_listeners`].
struct Lds {
    path: PathBuf,
    version: u64,
    listeners: Vec<Value>,
}

fn admin_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .unwrap_or_else(|_| reqwest::blocking::Client::new())
}

/// Runs `envoy --mode validate -c <config>` and returns the exit status and output.
pub fn validate(config: &Path) -> Result<(ExitStatus, String), Error> {
    validate_in(config, None)
}

/// Like [`validate`], from directory `cwd` (relative paths in the config resolve from there).
pub fn validate_in(config: &Path, cwd: Option<&Path>) -> Result<(ExitStatus, String), Error> {
    let mut b = ProcessBuilder::new("envoy-validate", envoy_bin()?)
        .args(["--mode", "validate", "-c"])
        .arg(config)
        .arg("--disable-hot-restart");
    if let Some(cwd) = cwd {
        b = b.current_dir(cwd);
    }
    let mut p = b.spawn()?;
    let status = p.wait_exit(READY_TIMEOUT)?;
    Ok((status, p.logs()))
}

/// A running Envoy; killed on drop (its log is printed if the test is failing).
pub struct Envoy {
    process: Process,
    http_port: u16,
    https_port: Option<u16>,
    admin_port: u16,
    client: reqwest::blocking::Client,
    lds: Option<Lds>,
}

impl Envoy {
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    pub fn https_port(&self) -> Option<u16> {
        self.https_port
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// The port listener `name` bound (e.g. one added with
    /// [`apply_dynamic_listeners`](Self::apply_dynamic_listeners) on port 0); `None` if Envoy
    /// has no such listener.
    pub fn listener_port(&self, name: &str) -> Result<Option<u16>, Error> {
        Ok(listener_ports(&self.client, self.admin_port)?
            .get(name)
            .copied())
    }

    /// `http://127.0.0.1:<port><path>` on the plain listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    /// `https://127.0.0.1:<port><path>` on the TLS listener, if one was configured.
    pub fn https_url(&self, path: &str) -> Option<String> {
        self.https_port
            .map(|p| format!("https://127.0.0.1:{p}{path}"))
    }

    /// GET on the admin interface, e.g. `/stats?filter=portcullis`; the body as text.
    pub fn admin_get(&self, path: &str) -> Result<String, Error> {
        let url = format!("http://127.0.0.1:{}{path}", self.admin_port);
        let resp = self
            .client
            .get(&url)
            .send()
            .map_err(|e| http_err(&url, e))?;
        resp.text().map_err(|e| http_err(&url, e))
    }

    /// Every stat whose name contains `filter` (plain-text `/stats`), as name → value.
    /// Histograms and other non-integer stats are skipped.
    pub fn stats(&self, filter: &str) -> Result<std::collections::BTreeMap<String, u64>, Error> {
        let body = self.admin_get(&format!("/stats?filter={}", url_escape(filter)))?;
        Ok(body
            .lines()
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(": ")?;
                Some((name.trim().to_string(), value.trim().parse().ok()?))
            })
            .collect())
    }

    /// The value of the stat whose full name is `name`, else the one ending with `.<name>` (Envoy prefixes
    /// wasm custom metrics, e.g. `wasmcustom.`). `None` if no such stat exists yet.
    /// Panics (a test helper) if the suffix is ambiguous.
    pub fn counter(&self, name: &str) -> Result<Option<u64>, Error> {
        let stats = self.stats(name)?;
        if let Some(v) = stats.get(name) {
            return Ok(Some(*v));
        }
        let suffix = format!(".{name}");
        let hits: Vec<(&String, &u64)> = stats
            .iter()
            .filter(|(k, _)| *k == name || k.ends_with(&suffix))
            .collect();
        assert!(hits.len() <= 1, "counter {name} is ambiguous: {hits:?}");
        Ok(hits.first().map(|(_, v)| **v))
    }

    /// The listeners currently served through LDS (empty without
    /// [`EnvoyBuilder::dynamic_listeners`]).
    pub fn dynamic_listeners(&self) -> Vec<Value> {
        self.lds
            .as_ref()
            .map(|l| l.listeners.clone())
            .unwrap_or_default()
    }

    /// Replaces the LDS listeners (see [`EnvoyBuilder::listeners`] to build some) and returns
    /// the new version. Envoy applies or rejects the update asynchronously: wait on
    /// `listener_manager.lds.update_success` / `update_rejected` with [`Envoy::counter`].
    pub fn set_dynamic_listeners(&mut self, listeners: Vec<Value>) -> Result<u64, Error> {
        let lds = self.lds.as_mut().ok_or_else(|| {
            Error::io(
                "set_dynamic_listeners",
                std::io::Error::other("Envoy was not started with dynamic_listeners()"),
            )
        })?;
        lds.version += 1;
        write_lds(&lds.path, lds.version, &listeners)?;
        lds.listeners = listeners;
        Ok(lds.version)
    }

    /// [`set_dynamic_listeners`](Self::set_dynamic_listeners), then waits until Envoy either
    /// accepts the update (`true`) or rejects it (`false`; Envoy keeps serving the previous
    /// listeners, and so does this handle's record of them).
    pub fn apply_dynamic_listeners(&mut self, listeners: Vec<Value>) -> Result<bool, Error> {
        let client = self.client.clone();
        let port = self.admin_port;
        let before = lds_update_counts(&client, port)
            .map_err(|e| Error::io("Envoy admin /stats", std::io::Error::other(e)))?;
        let previous = self.dynamic_listeners();
        let version = self.set_dynamic_listeners(listeners)?;
        let accepted = self.process.wait_until(
            &format!("Envoy to accept or reject LDS version {version}"),
            READY_TIMEOUT,
            || {
                let now = lds_update_counts(&client, port)?;
                if now.accepted > before.accepted {
                    Ok(true)
                } else if now.rejected > before.rejected {
                    Ok(false)
                } else {
                    Err(format!("no LDS update yet: {now:?}"))
                }
            },
        )?;
        if !accepted {
            if let Some(lds) = self.lds.as_mut() {
                lds.listeners = previous;
            }
        }
        Ok(accepted)
    }

    /// Everything Envoy logged so far.
    pub fn logs(&self) -> String {
        self.process.logs()
    }

    /// The underlying process (log path, temp dir with `envoy.json`, exit status).
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }
}

fn http_err(url: &str, e: reqwest::Error) -> Error {
    Error::Io {
        what: format!("GET {url}"),
        source: std::io::Error::other(e),
    }
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
