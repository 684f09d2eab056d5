//! Envoy bootstraps (static, JSON) and a pinned Envoy process.

use crate::util::{self, local, Guard};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub fn router() -> Value {
    json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    })
}

/// A proxy-wasm filter loaded from a local file (V8), JSON config as a StringValue.
pub fn wasm_filter(name: &str, module: &Path, config: &Value) -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": name,
                "vm_config": {
                    "vm_id": name,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": module}}
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": config.to_string()
                },
                "fail_open": false
            }
        }
    })
}

/// One filter of the Envoy dynamic module `library` (`libportcullis.so`), selected by
/// `filter_name`, its JSON config as a StringValue: exactly the HttpFilter that
/// `integration/src/runtime.rs::dynamic_filter` (and so the integration tests) produce.
pub fn dynamic_filter(library: &Path, filter_name: &str, config: &Value) -> Value {
    json!({
        "name": "envoy.filters.http.dynamic_modules",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": {
                "module": {"local": {"filename": library}},
                "do_not_close": true,
                "metrics_namespace": "portcullis"
            },
            "filter_name": filter_name,
            "filter_config": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": config.to_string()
            }
        }
    })
}

pub fn lua_filter(code: &str) -> Value {
    json!({
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": code}
        }
    })
}

/// The route every benchmark request takes: a `direct_response` or the `upstream` cluster.
pub fn bench_route(upstream: bool, extra: &Value) -> Value {
    let mut r = if upstream {
        json!({"match": {"prefix": "/"}, "route": {"cluster": "upstream"}})
    } else {
        json!({"match": {"prefix": "/"},
               "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}})
    };
    if let (Some(r), Some(extra)) = (r.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            r.insert(k.clone(), v.clone());
        }
    }
    r
}

/// An HTTP listener on 127.0.0.1:`port` with `filters` (router appended) and `routes`.
pub fn http_listener(name: &str, port: u16, filters: Vec<Value>, routes: Vec<Value>) -> Value {
    let mut chain = filters;
    chain.push(router());
    json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "codec_type": "AUTO",
                "route_config": {
                    "name": name,
                    "virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}]
                },
                "http_filters": chain
            }
        }]}]
    })
}

/// A static HTTP/1.1 cluster to 127.0.0.1:`port`.
pub fn cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]
        }
    })
}

pub fn bootstrap(
    admin_port: u16,
    listeners: Vec<Value>,
    clusters: Vec<Value>,
    secrets: Vec<Value>,
) -> Value {
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"listeners": listeners, "clusters": clusters, "secrets": secrets},
        // RE2's default program-size limit (100) refuses a regex alternation over a ~170-entry
        // deny list (program size ~1,200); raise it so the native RBAC variant can load.
        "layered_runtime": {"layers": [{"name": "static", "static_layer": {
            "re2.max_program_size.error_level": 100_000,
            "re2.max_program_size.warn_level": 100_000
        }}]}
    })
}

/// A running Envoy with `--concurrency N` (1 for every variant but the multi-worker rows),
/// pinned to `cpus` with taskset.
pub struct Envoy {
    pub log: PathBuf,
    pub guard: Guard,
}

impl Envoy {
    pub fn start(
        envoy_bin: &Path,
        dir: &Path,
        name: &str,
        cpus: &str,
        concurrency: u32,
        admin_port: u16,
        bootstrap: &Value,
    ) -> Result<Self> {
        let cfg = dir.join(format!("{name}.json"));
        std::fs::write(&cfg, serde_json::to_vec_pretty(bootstrap)?)
            .with_context(|| format!("writing {}", cfg.display()))?;
        let log = dir.join(format!("{name}.log"));
        let logf = std::fs::File::create(&log)?;
        let mut cmd = Command::new("taskset");
        cmd.arg("-c")
            .arg(cpus)
            .arg(envoy_bin)
            .arg("-c")
            .arg(&cfg)
            .arg("--concurrency")
            .arg(concurrency.to_string())
            .args(["--disable-hot-restart", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf);
        let guard = Guard::spawn(&format!("envoy {name}"), &mut cmd)?;
        let mut e = Envoy { log, guard };
        let admin = local(admin_port);
        let res = util::wait_for(
            &format!("envoy {name} ready"),
            Duration::from_secs(90),
            || {
                e.guard.check_alive()?;
                Ok(util::get(admin, "/ready")
                    .ok()
                    .filter(|r| r.status == 200)
                    .map(|_| ()))
            },
        );
        if let Err(err) = res {
            let tail = std::fs::read_to_string(&e.log).unwrap_or_default();
            let tail: String = tail
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            return Err(err.context(format!("envoy log tail:\n{tail}")));
        }
        Ok(e)
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }
}
