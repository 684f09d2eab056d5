//! The ADS server against real Envoy 1.40, SotW and Delta, with hand-built resources (so these
//! tests do not depend on the translator): updates apply live, a NACK is recorded with Envoy's
//! reason while the last good config keeps serving, and a fix clears it; an edit to one
//! node's resources reaches only that node's Envoy, and only the type that changed.

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use portcullis::infra::host::{bootstrap, XdsMode};
use portcullis::metrics::Metrics;
use portcullis::translator::xds::snapshot::{XdsResources, XdsSnapshot, LISTENER_TYPE, ROUTE_TYPE};
use portcullis::xds::server::XdsServer;
use portcullis_integration::envoy::{listener_ports, wait_live, ADMIN_ADDRESS_FILE};
use portcullis_integration::process::{envoy_bin, wait_until, ProcessBuilder};
use prost::Message;
use std::time::Duration;

const NODE: &str = "test/gw";
const WAIT: Duration = Duration::from_secs(60);

fn any<M: Message>(type_url: &str, m: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: type_url.to_string(),
        value: m.encode_to_vec(),
    }
}

fn ads() -> core::ConfigSource {
    core::ConfigSource {
        resource_api_version: core::ApiVersion::V3 as i32,
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

fn http_listener(port: u16) -> listener::Listener {
    let manager = hcm::HttpConnectionManager {
        stat_prefix: "test".into(),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
            hcm::Rds {
                config_source: Some(ads()),
                route_config_name: "routes".into(),
            },
        )),
        http_filters: vec![hcm::HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(
                envoy_types::pb::google::protobuf::Any {
                    type_url: "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                        .into(),
                    value: Router::default().encode_to_vec(),
                },
            )),
            ..Default::default()
        }],
        ..Default::default()
    };
    listener::Listener {
        name: "http".into(),
        address: Some(core::Address {
            address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                address: "127.0.0.1".into(),
                port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port as u32)),
                ..Default::default()
            })),
        }),
        filter_chains: vec![listener::FilterChain {
            filters: vec![listener::Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(listener::filter::ConfigType::TypedConfig(envoy_types::pb::google::protobuf::Any {
                    type_url: "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager".into(),
                    value: manager.encode_to_vec(),
                })),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Routes answering `body` directly; `broken` adds a second virtual host with the same domain,
/// which Envoy rejects.
fn routes(body: &str, broken: bool) -> route::RouteConfiguration {
    let vhost = |name: &str| route::VirtualHost {
        name: name.into(),
        domains: vec!["*".into()],
        routes: vec![route::Route {
            r#match: Some(route::RouteMatch {
                path_specifier: Some(route::route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            action: Some(route::route::Action::DirectResponse(
                route::DirectResponseAction {
                    status: 200,
                    body: Some(core::DataSource {
                        specifier: Some(core::data_source::Specifier::InlineString(body.into())),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut virtual_hosts = vec![vhost("a")];
    if broken {
        virtual_hosts.push(vhost("b"));
    }
    route::RouteConfiguration {
        name: "routes".into(),
        virtual_hosts,
        ..Default::default()
    }
}

fn snapshot(port: u16, body: &str, broken: bool) -> XdsSnapshot {
    XdsSnapshot::from([(
        NODE.to_string(),
        std::sync::Arc::new(resources(port, body, broken)),
    )])
}

fn resources(port: u16, body: &str, broken: bool) -> XdsResources {
    let mut r = XdsResources::default();
    r.insert(
        LISTENER_TYPE,
        "http",
        any(LISTENER_TYPE, &http_listener(port)),
    );
    r.insert(ROUTE_TYPE, "routes", any(ROUTE_TYPE, &routes(body, broken)));
    r
}

fn get(url: &str) -> Result<String, String> {
    let r = reqwest::blocking::get(url).map_err(|e| e.to_string())?;
    r.text().map_err(|e| e.to_string())
}

/// An Envoy for `node` on the ADS server at `xds_port`, its listener `http` bound.
struct RunningEnvoy {
    envoy: portcullis_integration::process::Process,
    admin_port: u16,
    url: String,
}

fn start_envoy(node: &str, xds_port: u16, mode: XdsMode) -> RunningEnvoy {
    let dir = tempfile::tempdir().expect("tempdir");
    let boot = bootstrap(
        node,
        format!("127.0.0.1:{xds_port}").parse().expect("addr"),
        mode,
    )
    .expect("bootstrap renders");
    let boot_path = dir.path().join("bootstrap.json");
    std::fs::write(&boot_path, serde_json::to_vec(&boot).expect("json")).expect("write bootstrap");
    let admin_path = dir.path().join(ADMIN_ADDRESS_FILE);
    let mut envoy = ProcessBuilder::new("envoy", envoy_bin().expect("envoy"))
        .arg("-c")
        .arg(&boot_path)
        .arg("--admin-address-path")
        .arg(&admin_path)
        .args([
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "info",
        ])
        .spawn_in(dir)
        .expect("start envoy");
    let client = portcullis_integration::http::client();
    let admin_path = envoy.dir().join(ADMIN_ADDRESS_FILE);
    let admin_port = wait_live(&mut envoy, &admin_path, &client).expect("Envoy live");
    let bound = envoy
        .wait_until("Envoy binds listener http", WAIT, || {
            listener_ports(&client, admin_port)
                .map_err(|e| e.to_string())?
                .get("http")
                .copied()
                .ok_or_else(|| "no listener http yet".to_string())
        })
        .expect("listener bound");
    RunningEnvoy {
        envoy,
        admin_port,
        url: format!("http://127.0.0.1:{bound}/"),
    }
}

/// Starts the ADS server on a port-0 listener; returns its port.
fn start_xds(rt: &tokio::runtime::Runtime, xds: &XdsServer) -> u16 {
    let xds = xds.clone();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))
        .expect("bind xDS");
    let port = listener.local_addr().expect("xDS addr").port();
    rt.spawn(async move { xds.serve(listener, std::future::pending()).await });
    port
}

fn serve_update_nack_recover(mode: XdsMode) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let xds = XdsServer::new(Metrics::new());
    // The listener is on port 0; Envoy reports the port it bound on its admin.
    let http_port = 0;
    let xds_port = start_xds(&rt, &xds);
    xds.publish(&snapshot(http_port, "v1", false));

    let RunningEnvoy { mut envoy, url, .. } = start_envoy(NODE, xds_port, mode);

    envoy
        .wait_until("Envoy serves v1 from xDS", WAIT, || {
            get(&url).and_then(|b| if b == "v1" { Ok(()) } else { Err(b) })
        })
        .expect("v1");

    // A live update.
    xds.publish(&snapshot(http_port, "v2", false));
    envoy
        .wait_until("Envoy serves v2", WAIT, || {
            get(&url).and_then(|b| if b == "v2" { Ok(()) } else { Err(b) })
        })
        .expect("v2");
    let synced = xds.status().nodes[NODE].synced_generation;
    assert_eq!(synced, Some(2), "node ACKed generation 2");

    // An invalid route table: Envoy NACKs it, we record why, v2 keeps serving.
    xds.publish(&snapshot(http_port, "v3-broken", true));
    let nack = wait_until("NACK recorded", WAIT, || {
        let st = xds.status();
        st.nodes[NODE]
            .types
            .get("RouteConfiguration")
            .and_then(|t| t.nack.clone())
            .ok_or("no NACK yet")
    })
    .expect("nack");
    assert!(
        nack.error.contains("domain"),
        "Envoy's reason is kept: {}",
        nack.error
    );
    assert_eq!(
        get(&url).expect("still serving"),
        "v2",
        "last good config keeps serving"
    );
    // The rejected version is not re-sent in a loop: exactly one push for it.
    let route_status = xds.status().nodes[NODE].types["RouteConfiguration"].clone();
    assert_eq!(
        route_status.sent_version.as_deref(),
        Some(nack.version.as_str())
    );
    assert_ne!(
        route_status.acked_version.as_deref(),
        Some(nack.version.as_str())
    );

    // A fix goes out and clears the NACK.
    xds.publish(&snapshot(http_port, "v4", false));
    envoy
        .wait_until("Envoy serves v4", WAIT, || {
            get(&url).and_then(|b| if b == "v4" { Ok(()) } else { Err(b) })
        })
        .expect("v4");
    wait_until("NACK cleared", WAIT, || {
        let st = xds.status();
        match &st.nodes[NODE].types["RouteConfiguration"].nack {
            None => Ok(()),
            Some(n) => Err(format!("still {n:?}")),
        }
    })
    .expect("cleared");
    drop(envoy);
}

#[test]
fn sotw_serves_updates_and_keeps_last_good_on_nack() {
    serve_update_nack_recover(XdsMode::Sotw);
}

#[test]
fn delta_serves_updates_and_keeps_last_good_on_nack() {
    serve_update_nack_recover(XdsMode::Delta);
}

/// Envoy's xDS update counters (`listener_manager.lds.*`, `cluster_manager.cds.*`, the RDS
/// subscription's `http.test.rds.routes.*`): every response Envoy applies or rejects bumps
/// `update_attempt`.
fn update_counters(admin_port: u16) -> std::collections::BTreeMap<String, u64> {
    let url = format!("http://127.0.0.1:{admin_port}/stats?filter=update_");
    get(&url)
        .expect("admin /stats")
        .lines()
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(": ")?;
            let name = name.trim();
            let wanted = (name.starts_with("listener_manager.lds.")
                || name.starts_with("cluster_manager.cds.")
                || name.starts_with("http.test.rds.routes."))
                && ["update_attempt", "update_success", "update_rejected"]
                    .iter()
                    .any(|c| name.ends_with(c));
            Some((name.to_string(), value.trim().parse().ok()?)).filter(|_| wanted)
        })
        .collect()
}

fn two_nodes(a: &str, b: &str) -> XdsSnapshot {
    XdsSnapshot::from([
        (
            NODE_A.to_string(),
            std::sync::Arc::new(resources(0, a, false)),
        ),
        (
            NODE_B.to_string(),
            std::sync::Arc::new(resources(0, b, false)),
        ),
    ])
}

const NODE_A: &str = "test/a";
const NODE_B: &str = "test/b";

/// Two Gateways' Envoys on one ADS server: an edit to A's routes reaches A's Envoy as one RDS
/// update (its listener is not re-sent), and B's Envoy receives nothing at all.
fn edit_reaches_only_its_node(mode: XdsMode) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let xds = XdsServer::new(Metrics::new());
    let xds_port = start_xds(&rt, &xds);
    xds.publish(&two_nodes("a1", "b1"));
    let mut a = start_envoy(NODE_A, xds_port, mode);
    let b = start_envoy(NODE_B, xds_port, mode);
    for (e, body) in [(&a, "a1"), (&b, "b1")] {
        wait_until("Envoy serves its node's routes", WAIT, || {
            get(&e.url).and_then(|got| if got == body { Ok(()) } else { Err(got) })
        })
        .expect("initial routes");
    }
    wait_until("both nodes synced", WAIT, || {
        let st = xds.status();
        let synced = |n: &str| st.nodes.get(n).and_then(|s| s.synced_generation);
        if synced(NODE_A) == Some(st.generation) && synced(NODE_B) == Some(st.generation) {
            Ok(())
        } else {
            Err(format!("{:?}", st.nodes))
        }
    })
    .expect("synced");
    let a_before = update_counters(a.admin_port);
    let b_before = update_counters(b.admin_port);
    assert!(
        b_before.get("http.test.rds.routes.update_success").copied() >= Some(1),
        "the counters are there: {b_before:?}"
    );

    let generation = xds.publish(&two_nodes("a2", "b1"));
    a.envoy
        .wait_until("A serves a2", WAIT, || {
            get(&a.url).and_then(|got| if got == "a2" { Ok(()) } else { Err(got) })
        })
        .expect("a2");
    wait_until("A synced", WAIT, || {
        let st = xds.status();
        match st.nodes[NODE_A].synced_generation {
            Some(g) if g == generation => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .expect("A synced");
    // Time for a stray push to land, were there one.
    std::thread::sleep(Duration::from_millis(500));
    let a_after = update_counters(a.admin_port);
    let b_after = update_counters(b.admin_port);
    assert_eq!(b_after, b_before, "B's Envoy received no update");
    assert_eq!(get(&b.url).expect("B serves"), "b1");
    assert_eq!(
        xds.status().nodes[NODE_B].synced_generation,
        Some(generation),
        "B is synced at the new generation without a push"
    );
    let delta =
        |k: &str| a_after.get(k).copied().unwrap_or(0) - a_before.get(k).copied().unwrap_or(0);
    assert_eq!(
        delta("http.test.rds.routes.update_success"),
        1,
        "{a_before:?} -> {a_after:?}"
    );
    assert_eq!(
        delta("listener_manager.lds.update_attempt"),
        0,
        "LDS not re-sent: {a_before:?} -> {a_after:?}"
    );
    assert_eq!(
        delta("cluster_manager.cds.update_attempt"),
        0,
        "CDS not re-sent: {a_before:?} -> {a_after:?}"
    );
}

#[test]
fn sotw_edit_reaches_only_its_node() {
    edit_reaches_only_its_node(XdsMode::Sotw);
}

#[test]
fn delta_edit_reaches_only_its_node() {
    edit_reaches_only_its_node(XdsMode::Delta);
}
