//! `portcullis run` end to end with real Envoy 1.40: Envoy spawned per Gateway, traffic, live
//! edits over a kept-alive connection, bad manifests isolated, supervision, SIGTERM drain.

use portcullis_integration::controller::{
    conditions_of, pid_gone, resource, Controller, KeepAlive, CONVERGE,
};
use portcullis_integration::echo::{Echo, EchoServer};
use portcullis_integration::process::wait_until;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis-e2e");
const NODE: &str = "default/gw";

fn gateway(port: u16) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: portcullis}}
spec: {{controllerName: portcullis.dev/gatewayclass-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: portcullis
  listeners:
  - {{name: http, port: {port}, protocol: HTTP}}
"#
    )
}

fn backend(name: &str, port: u16) -> String {
    format!(
        r#"apiVersion: gateway.envoyproxy.io/v1alpha1
kind: Backend
metadata: {{name: {name}, namespace: default}}
spec:
  endpoints:
  - ip: {{address: 127.0.0.1, port: {port}}}
"#
    )
}

/// A route on `prefix` to Backend `backend` that tags responses with `x-route: tag`.
fn route(name: &str, prefix: &str, backend: &str, tag: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{{name: x-route, value: {tag}}}]
    backendRefs: [{{group: gateway.envoyproxy.io, kind: Backend, name: {backend}}}]
"#
    )
}

/// The Gateway's listener port; Envoy binds it on port 0 (see [`port_of`]).
const GW_PORT: u16 = 8080;

fn start(echo_port: u16, extra: &[&str]) -> Controller {
    Controller::builder(BIN)
        .manifest("gateway.yaml", gateway(GW_PORT))
        .manifest("backend.yaml", backend("echo", echo_port))
        .manifest("routes/a.yaml", route("a", "/a", "echo", "v1"))
        .args(extra.iter().copied())
        .start()
        .expect("controller starts")
}

/// The port the Gateway's Envoy bound for its listener.
fn port_of(c: &mut Controller) -> u16 {
    c.gateway_port(NODE, GW_PORT)
        .expect("Envoy bound the Gateway listener")
}

/// GET on a fresh connection until `check` accepts the response.
fn wait_http(
    c: &mut Controller,
    port: u16,
    path: &str,
    what: &str,
    check: impl Fn(&portcullis_integration::controller::RawResponse) -> bool,
) {
    let path = path.to_string();
    c.process()
        .wait_until(what, CONVERGE, || {
            let r = KeepAlive::connect(port)
                .and_then(|mut k| k.get("example.com", &path, &[]))
                .map_err(|e| e.to_string())?;
            if check(&r) {
                Ok(())
            } else {
                Err(format!(
                    "HTTP {} x-route={:?} body={}",
                    r.status,
                    r.header("x-route"),
                    r.body
                ))
            }
        })
        .expect(what);
}

fn live_edit_keeps_connection(extra: &[&str]) {
    let echo = EchoServer::start().expect("echo");
    let mut c = start(echo.port(), extra);
    let gw_port = port_of(&mut c);
    wait_http(&mut c, gw_port, "/a/x", "route a serves v1", |r| {
        r.status == 200 && r.header("x-route") == Some("v1")
    });
    c.wait_synced(NODE).expect("synced");
    let envoy_pids = c.envoy_pids();
    assert_eq!(envoy_pids.len(), 1, "one Envoy for one Gateway");

    // Open a keep-alive connection and use it before and after the edit.
    let mut conn = KeepAlive::connect(gw_port).expect("connect");
    let before = conn
        .get("example.com", "/a/1", &[])
        .expect("request before edit");
    assert_eq!(before.status, 200);
    assert_eq!(before.header("x-route"), Some("v1"));
    let echoed: Echo = serde_json::from_str(&before.body).expect("echo body");
    assert_eq!(echoed.path, "/a/1");

    let gen_before = c.status().expect("status")["xds"]["generation"]
        .as_u64()
        .unwrap_or(0);
    c.write_manifest("routes/a.yaml", &route("a", "/a", "echo", "v2"))
        .expect("edit");
    c.wait_status("new generation published", |d| {
        let g = d["xds"]["generation"].as_u64().unwrap_or(0);
        if g > gen_before {
            Ok(())
        } else {
            Err(format!("generation {g}"))
        }
    })
    .expect("new generation");
    c.wait_synced(NODE).expect("Envoy ACKed the edit");

    // Same TCP connection, new config.
    let after = conn
        .get("example.com", "/a/2", &[])
        .expect("request after edit on the same connection");
    assert_eq!(after.status, 200);
    assert_eq!(after.header("x-route"), Some("v2"), "edit applied live");
    assert_ne!(after.header("connection"), Some("close"));
    let again = conn
        .get("example.com", "/a/3", &[])
        .expect("the connection is still usable");
    assert_eq!(again.header("x-route"), Some("v2"));

    // No Envoy restart happened.
    assert_eq!(c.envoy_pids(), envoy_pids, "Envoy was not restarted");
    let starts = c.status().expect("status")["envoys"][0]["starts"].as_u64();
    assert_eq!(starts, Some(1));
}

#[test]
fn live_edit_applies_without_restart_and_keeps_connections_sotw() {
    live_edit_keeps_connection(&[]);
}

#[test]
fn live_edit_applies_without_restart_and_keeps_connections_delta() {
    live_edit_keeps_connection(&["--xds-mode", "delta"]);
}

#[test]
fn bad_manifest_reports_reason_while_the_rest_keeps_serving() {
    let echo = EchoServer::start().expect("echo");
    let mut c = start(echo.port(), &[]);
    let gw_port = port_of(&mut c);
    wait_http(&mut c, gw_port, "/a", "route a serves", |r| r.status == 200);

    // Broken YAML, plus a route to a Backend that does not exist.
    c.write_manifest("broken.yaml", "apiVersion: v1\nkind: [unclosed\n")
        .expect("write");
    c.write_manifest("routes/b.yaml", &route("b", "/b", "missing", "b"))
        .expect("write");
    let doc = c
        .wait_status("load error and BackendNotFound reported", |d| {
            let load_err = d["loadErrors"].as_array().into_iter().flatten().any(|e| {
                e["source"]
                    .as_str()
                    .is_some_and(|s| s.ends_with("broken.yaml"))
            });
            let route_b = resource(d, "HTTPRoute", Some("default"), "b")
                .map(|r| conditions_of(&r["status"], "ResolvedRefs"))
                .unwrap_or_default();
            let not_found = route_b
                .iter()
                .any(|(s, reason, _)| s == "False" && reason == "BackendNotFound");
            if load_err && not_found {
                Ok(d.clone())
            } else {
                Err(format!("loadErrors={} b={route_b:?}", d["loadErrors"]))
            }
        })
        .expect("statuses");
    let a = resource(&doc, "HTTPRoute", Some("default"), "a").expect("route a in status");
    assert!(
        conditions_of(&a["status"], "Accepted")
            .iter()
            .all(|(s, _, _)| s == "True"),
        "route a unaffected: {a}"
    );
    c.wait_synced(NODE).expect("synced");

    // Route a still serves; route b answers 500 as the spec says for an unresolvable backend.
    let mut conn = KeepAlive::connect(gw_port).expect("connect");
    assert_eq!(conn.get("example.com", "/a", &[]).expect("a").status, 200);
    assert_eq!(conn.get("example.com", "/b", &[]).expect("b").status, 500);

    // `portcullis status` shows both.
    let out = std::process::Command::new(BIN)
        .args([
            "status",
            "--admin-addr",
            &format!("127.0.0.1:{}", c.admin_port),
        ])
        .output()
        .expect("portcullis status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("BackendNotFound"), "{text}");
    assert!(text.contains("broken.yaml"), "{text}");
    assert!(text.contains("default/gw"), "{text}");

    // A half-written save of a file that loaded before: it keeps its last good version.
    c.write_manifest("routes/a.yaml", "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: a, namespace: default\n").expect("truncate a");
    c.wait_status("a.yaml load error reported", |d| {
        let e = d["loadErrors"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["source"].as_str().is_some_and(|s| s.ends_with("a.yaml")));
        match e {
            Some(e)
                if e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("last good version")) =>
            {
                Ok(())
            }
            _ => Err(d["loadErrors"].to_string()),
        }
    })
    .expect("a.yaml error");
    let r = KeepAlive::connect(gw_port)
        .and_then(|mut k| k.get("example.com", "/a", &[]))
        .expect("a");
    assert_eq!(
        (r.status, r.header("x-route")),
        (200, Some("v1")),
        "route a keeps its last good version"
    );

    // Fixing the manifests clears the errors.
    c.write_manifest("routes/a.yaml", &route("a", "/a", "echo", "v1"))
        .expect("restore a");
    c.remove_manifest("broken.yaml").expect("rm");
    c.write_manifest("backend-missing.yaml", &backend("missing", echo.port()))
        .expect("write");
    c.wait_status("errors cleared", |d| {
        let errs = d["loadErrors"].as_array().map(Vec::len).unwrap_or(0);
        let b = resource(d, "HTTPRoute", Some("default"), "b")
            .map(|r| conditions_of(&r["status"], "ResolvedRefs"))
            .unwrap_or_default();
        if errs == 0 && !b.is_empty() && b.iter().all(|(s, _, _)| s == "True") {
            Ok(())
        } else {
            Err(format!("{errs} errors, b={b:?}"))
        }
    })
    .expect("cleared");
    wait_http(
        &mut c,
        gw_port,
        "/b",
        "route b serves once its backend exists",
        |r| r.status == 200 && r.header("x-route") == Some("b"),
    );
}

#[test]
fn envoy_is_restarted_when_it_dies_and_gateways_removed_stop_theirs() {
    let echo = EchoServer::start().expect("echo");
    let mut c = start(echo.port(), &[]);
    let gw_port = port_of(&mut c);
    wait_http(&mut c, gw_port, "/a", "route a serves", |r| r.status == 200);
    let pids = c.envoy_pids();
    assert_eq!(pids.len(), 1);
    // SAFETY: kill(2) on the Envoy our controller started.
    unsafe {
        libc::kill(pids[0] as libc::pid_t, libc::SIGKILL);
    }
    c.wait_status("Envoy restarted", |d| {
        let e = &d["envoys"][0];
        let pid = e["pid"].as_u64().map(|p| p as u32);
        if e["starts"].as_u64() == Some(2)
            && e["state"] == "running"
            && pid.is_some()
            && pid != Some(pids[0])
        {
            Ok(())
        } else {
            Err(e.to_string())
        }
    })
    .expect("restart");
    // The new Envoy bound a new port.
    let gw_port = port_of(&mut c);
    wait_http(
        &mut c,
        gw_port,
        "/a",
        "route a serves again after the restart",
        |r| r.status == 200,
    );

    // Removing the Gateway drains and stops its Envoy.
    let new_pid = c.envoy_pids()[0];
    c.remove_manifest("gateway.yaml").expect("rm");
    c.wait_status("Envoy stopped with its Gateway", |d| {
        let n = d["envoys"].as_array().map(Vec::len).unwrap_or(0);
        if n == 0 {
            Ok(())
        } else {
            Err(d["envoys"].to_string())
        }
    })
    .expect("stopped");
    wait_until("Envoy process gone", CONVERGE, || {
        if pid_gone(new_pid) {
            Ok(())
        } else {
            Err("alive")
        }
    })
    .expect("gone");
}

#[test]
fn sigterm_drains_envoy_and_exits_cleanly() {
    let echo = EchoServer::start().expect("echo");
    let mut c = start(echo.port(), &[]);
    let gw_port = port_of(&mut c);
    wait_http(&mut c, gw_port, "/a", "route a serves", |r| r.status == 200);
    c.wait_synced(NODE).expect("synced");
    let pids = c.envoy_pids();
    assert_eq!(pids.len(), 1);
    let status = c
        .terminate(Duration::from_secs(60))
        .expect("controller exits");
    assert!(status.success(), "clean exit, got {status}");
    assert!(pid_gone(pids[0]), "no orphan Envoy");
    let logs = c.logs();
    assert!(
        logs.contains("draining Envoy listeners"),
        "Envoy was drained:\n{logs}"
    );
    assert!(logs.contains("Envoy stopped"), "{logs}");
}

#[test]
fn metrics_and_healthz() {
    let echo = EchoServer::start().expect("echo");
    let mut c = start(echo.port(), &[]);
    c.wait_synced(NODE).expect("synced");
    let m = c.metrics().expect("metrics");
    for name in [
        "portcullis_xds_acks_total",
        "portcullis_snapshot_generation",
        "portcullis_envoys_running 1",
        "portcullis_translations_total",
    ] {
        assert!(m.contains(name), "{name} missing from:\n{m}");
    }
    let health = reqwest::blocking::get(c.admin_url("/healthz")).expect("healthz");
    assert!(health.status().is_success());
}

#[test]
fn envoy_nack_shows_in_status_and_last_good_config_keeps_serving() {
    let echo = EchoServer::start().expect("echo");
    let mut c = start(echo.port(), &[]);
    let gw_port = port_of(&mut c);
    wait_http(&mut c, gw_port, "/a", "route a serves", |r| {
        r.status == 200 && r.header("x-route") == Some("v1")
    });
    c.wait_synced(NODE).expect("synced");

    // Valid for the translator, but Envoy's RE2 rejects a program this large: a NACK.
    let greedy = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: greedy, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: RegularExpression, value: "/re/(a{1000}b{1000})+"}}]
    backendRefs: [{group: gateway.envoyproxy.io, kind: Backend, name: echo}]
"#;
    c.write_manifest("routes/greedy.yaml", greedy)
        .expect("write");
    c.write_manifest("routes/a.yaml", &route("a", "/a", "echo", "v2"))
        .expect("edit a in the same change");
    let nack = c
        .wait_status("NACK reported", |d| {
            let t = &d["xds"]["nodes"][NODE]["types"]["RouteConfiguration"]["nack"];
            if t.is_object() {
                Ok(t.clone())
            } else {
                Err(d["xds"].to_string())
            }
        })
        .expect("nack");
    assert!(
        nack["error"]
            .as_str()
            .is_some_and(|e| e.contains("program size")),
        "Envoy's reason: {nack}"
    );
    // The rejected route table is not applied: route a still answers with the last good (v1).
    let r = KeepAlive::connect(gw_port)
        .and_then(|mut k| k.get("example.com", "/a", &[]))
        .expect("a");
    assert_eq!(
        (r.status, r.header("x-route")),
        (200, Some("v1")),
        "last good config serves"
    );
    assert!(
        c.logs().contains("Envoy rejected xDS (NACK)"),
        "NACK logged"
    );
    let out = std::process::Command::new(BIN)
        .args([
            "status",
            "--admin-addr",
            &format!("127.0.0.1:{}", c.admin_port),
        ])
        .output()
        .expect("portcullis status");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("program size"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Removing the offending route fixes it: new config ACKed, NACK cleared.
    c.remove_manifest("routes/greedy.yaml").expect("rm");
    c.wait_status("NACK cleared", |d| {
        let t = &d["xds"]["nodes"][NODE]["types"]["RouteConfiguration"]["nack"];
        if t.is_null() {
            Ok(())
        } else {
            Err(t.to_string())
        }
    })
    .expect("cleared");
    wait_http(&mut c, gw_port, "/a", "route a serves v2", |r| {
        r.status == 200 && r.header("x-route") == Some("v2")
    });
}

#[test]
fn lua_through_envoy_extension_policy_applies_to_its_route_only() {
    let echo = EchoServer::start().expect("echo");
    let mut c = start(echo.port(), &[]);
    let gw_port = port_of(&mut c);
    c.write_manifest("routes/b.yaml", &route("b", "/b", "echo", "b"))
        .expect("route b");
    // A Lua user-agent blocker, as users run today, from a ConfigMap (ValueRef).
    let lua = r#"apiVersion: v1
kind: ConfigMap
metadata: {name: ua-lua, namespace: default}
data:
  lua: |
    function envoy_on_request(handle)
      local ua = handle:headers():get("user-agent") or ""
      if string.find(ua, "BadBot", 1, true) then
        handle:respond({[":status"] = "403"}, "blocked by lua\n")
      end
    end
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyExtensionPolicy
metadata: {name: lua-ua, namespace: default}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: b}]
  lua:
  - type: ValueRef
    valueRef: {kind: ConfigMap, name: ua-lua}
"#;
    c.write_manifest("lua.yaml", lua).expect("lua policy");
    c.process()
        .wait_until("lua blocks on /b only", CONVERGE, || {
            let get = |path: &str, ua: &str| {
                KeepAlive::connect(gw_port)
                    .and_then(|mut k| k.get("example.com", path, &[("user-agent", ua)]))
                    .map(|r| r.status)
                    .map_err(|e| e.to_string())
            };
            let got = (
                get("/b", "BadBot/2")?,
                get("/b", "curl/8")?,
                get("/a", "BadBot/2")?,
            );
            if got == (403, 200, 200) {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        })
        .expect("lua");
}

#[test]
fn envoys_do_not_outlive_a_killed_controller() {
    let echo = EchoServer::start().expect("echo");
    let mut c = start(echo.port(), &[]);
    let gw_port = port_of(&mut c);
    wait_http(&mut c, gw_port, "/a", "route a serves", |r| r.status == 200);
    let envoy = c.envoy_pids()[0];
    // SIGKILL to the controller alone: no chance to drain, yet its Envoy must not linger.
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(c.process().pid() as libc::pid_t, libc::SIGKILL);
    }
    c.process()
        .wait_exit(Duration::from_secs(30))
        .expect("controller dead");
    wait_until("orphaned Envoy exits", CONVERGE, || {
        if pid_gone(envoy) {
            Ok(())
        } else {
            Err("alive")
        }
    })
    .expect("Envoy gone");
}

/// A tenant's `Backend` cannot point Envoy at loopback (where Envoy's admin and the controller
/// listen) unless the operator allows the range. With an allow-list that does not name
/// 127.0.0.0/8, a route to the Envoy's own admin port (by IP) and one to `localhost` report
/// `ResolvedRefs=False` / `RefNotPermitted` naming the flag, no cluster for them reaches Envoy,
/// and requests get the spec's 500 for an unresolvable backend instead of `/config_dump`.
#[test]
fn loopback_backend_is_refused_unless_allowed() {
    let echo = EchoServer::start().expect("echo");
    // Replaces the harness's default `--allow-backend-cidr 127.0.0.0/8`.
    let mut c = start(echo.port(), &["--allow-backend-cidr", "192.0.2.0/24"]);
    let gw_port = port_of(&mut c);
    let admin = c.envoy_admin(NODE).expect("Envoy admin address");
    let admin_port: u16 = admin
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("admin port");
    c.write_manifest("backend-admin.yaml", &backend("admin", admin_port))
        .expect("write");
    c.write_manifest(
        "backend-local.yaml",
        &format!(
            r#"apiVersion: gateway.envoyproxy.io/v1alpha1
kind: Backend
metadata: {{name: local, namespace: default}}
spec:
  endpoints:
  - fqdn: {{hostname: localhost, port: {admin_port}}}
"#
        ),
    )
    .expect("write");
    c.write_manifest("routes/b.yaml", &route("b", "/b", "admin", "b"))
        .expect("write");
    c.write_manifest("routes/c.yaml", &route("c", "/c", "local", "c"))
        .expect("write");
    let doc = c
        .wait_status("the routes are refused", |d| {
            let refused = |name: &str| {
                resource(d, "HTTPRoute", Some("default"), name)
                    .map(|r| conditions_of(&r["status"], "ResolvedRefs"))
                    .unwrap_or_default()
                    .into_iter()
                    .any(|(s, reason, _)| s == "False" && reason == "RefNotPermitted")
            };
            if ["a", "b", "c"].into_iter().all(refused) {
                Ok(d.clone())
            } else {
                Err(d["resources"].to_string())
            }
        })
        .expect("statuses");
    for (route, needle) in [("b", "127.0.0.1"), ("c", "localhost")] {
        let r = resource(&doc, "HTTPRoute", Some("default"), route).expect("route");
        let msg = conditions_of(&r["status"], "ResolvedRefs")
            .into_iter()
            .map(|(_, _, m)| m)
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            msg.contains(needle) && msg.contains("--allow-backend-cidr"),
            "route {route}: the reason names the address and the flag: {msg}"
        );
    }
    c.wait_synced(NODE).expect("synced");
    let mut conn = KeepAlive::connect(gw_port).expect("connect");
    for path in ["/a", "/b", "/c"] {
        let r = conn.get("example.com", path, &[]).expect("get");
        assert_eq!(r.status, 500, "{path}: {}", r.body);
        assert!(!r.body.contains("configs"), "{path} reached Envoy's admin");
    }
    let dump = c.envoy_config_dump(NODE).expect("config dump");
    for cluster in [
        "backend/default/echo",
        "backend/default/admin",
        "backend/default/local",
    ] {
        assert!(
            !dump.contains(&format!("\"{cluster}")),
            "cluster {cluster} reached Envoy"
        );
    }
}

/// Every listener the controller builds rejects header names with underscores (they would reach
/// WSGI/PHP upstreams as dashes, past header stripping) and gives each path one spelling before
/// routes and filters match on it.
#[test]
fn listeners_reject_underscored_headers_and_normalize_paths() {
    let echo = EchoServer::start().expect("echo");
    let mut c = start(echo.port(), &[]);
    let gw_port = port_of(&mut c);
    wait_http(&mut c, gw_port, "/a", "route a serves", |r| r.status == 200);
    let get = |path: &str, headers: &[(&str, &str)]| {
        KeepAlive::connect(gw_port)
            .and_then(|mut k| k.get("example.com", path, headers))
            .expect("request")
    };
    let r = get("/a", &[("x_user_email", "root@evil.example")]);
    assert_eq!(r.status, 400, "underscored header: {}", r.body);
    assert_eq!(get("/a", &[("x-user-email", "a@b")]).status, 200);
    // An escaped slash is unescaped with a redirect, so the client sees the path that matched.
    let r = get("/a%2Fb", &[]);
    assert!((300..400).contains(&r.status), "HTTP {}", r.status);
    assert!(
        r.header("location").is_some_and(|l| l.ends_with("/a/b")),
        "{:?}",
        r.header("location")
    );
    // Dot segments and repeated slashes resolve before routing.
    for path in ["/x/../a", "//a"] {
        let r = get(path, &[]);
        assert_eq!((r.status, r.header("x-route")), (200, Some("v1")), "{path}");
    }
}
