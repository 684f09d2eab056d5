//! The Helm chart (charts/portcullis), rendered and linted with real Helm code (helm-python-sdk:
//! the Helm v4 Go SDK), every object validated against the Kubernetes schemas (kubernetes-validate,
//! strict) and the custom resources against ../shared/crds. `scripts/chart-test.sh` does the
//! rendering and schema checks and prints the rendered objects; this test asserts the chart's
//! behaviour on them for default and non-default values.
//!
//! Needs network on first run only (scripts/chart-setup.sh installs two PyPI packages into .venv).

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Rendered once per test binary (Helm via Python is the slow part).
fn report() -> &'static Value {
    static REPORT: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    REPORT.get_or_init(render_report)
}

fn render_report() -> Value {
    let root = root();
    let out = Command::new("bash")
        .arg(root.join("scripts/chart-test.sh"))
        .current_dir(&root)
        .output()
        .expect("run scripts/chart-test.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "chart render/lint/validation failed:\n{stderr}"
    );
    serde_json::from_slice(&out.stdout).expect("chart-test.sh prints a JSON report")
}

fn objects<'a>(report: &'a Value, scenario: &str) -> &'a Vec<Value> {
    report["scenarios"][scenario]["objects"]
        .as_array()
        .unwrap_or_else(|| panic!("scenario {scenario} missing from the report"))
}

fn find<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

fn one<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    let found = find(objs, kind);
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {kind}, got {}",
        found.len()
    );
    found[0]
}

fn templates(report: &Value, scenario: &str) -> Vec<String> {
    report["scenarios"][scenario]["templates"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn chart_renders_lints_and_validates() {
    let report = report();
    // All 16 Gateway API standard + Envoy Gateway CRDs ship, byte-identical to ../shared/crds.
    assert_eq!(report["crd_documents"], 16);

    // ---- defaults
    let objs = objects(report, "defaults");
    let dep = one(objs, "Deployment");
    assert_eq!(
        dep["spec"]["replicas"], 2,
        "2 controller replicas by default"
    );
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(
        strings(&c["securityContext"]["capabilities"]["drop"]),
        ["ALL"]
    );
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    let args = strings(&c["args"]);
    assert!(
        args.contains(&"--provider=kubernetes".to_string()),
        "{args:?}"
    );
    assert!(
        args.contains(&"--controller-name=portcullis.dev/gatewayclass-controller".to_string()),
        "{args:?}"
    );
    assert!(
        args.contains(&"--xds-service=portcullis.portcullis-system.svc".to_string()),
        "{args:?}"
    );
    // Backend is off by default, as in Envoy Gateway (a Backend names any address).
    assert!(
        args.contains(&"--enable-backend=false".to_string()),
        "{args:?}"
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");

    let svc = one(objs, "Service");
    let ports: Vec<(String, i64)> = svc["spec"]["ports"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap_or_default().to_string(),
                        p["port"].as_i64().unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        ports,
        [
            ("grpc-xds".to_string(), 18000),
            ("https-wasm".to_string(), 18001),
            ("http-metrics".to_string(), 19100)
        ]
    );
    // The Service selects exactly the Deployment's pods.
    assert_eq!(
        svc["spec"]["selector"],
        dep["spec"]["selector"]["matchLabels"]
    );

    let gc = one(objs, "GatewayClass");
    assert_eq!(gc["metadata"]["name"], "portcullis");
    assert_eq!(
        gc["spec"]["controllerName"],
        "portcullis.dev/gatewayclass-controller"
    );
    let pdb = one(objs, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        dep["spec"]["selector"]["matchLabels"]
    );
    assert!(
        find(objs, "ServiceMonitor").is_empty(),
        "ServiceMonitor is opt-in"
    );
    assert!(
        templates(report, "defaults")
            .iter()
            .any(|t| t.contains("portcullis-crds")),
        "crds subchart enabled by default"
    );
    let sa = one(objs, "ServiceAccount");
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);

    // ---- RBAC: least privilege
    let cr = one(objs, "ClusterRole");
    let rules = cr["rules"].as_array().expect("ClusterRole rules");
    for rule in rules {
        for field in ["apiGroups", "resources", "verbs"] {
            assert!(
                !strings(&rule[field]).iter().any(|s| s == "*"),
                "no wildcards in ClusterRole: {rule}"
            );
        }
        let verbs = strings(&rule["verbs"]);
        for status_res in strings(&rule["resources"])
            .iter()
            .filter(|r| r.ends_with("/status"))
        {
            assert_eq!(
                verbs,
                ["patch"],
                "{status_res}: status is only patched (SSA)"
            );
        }
        assert!(
            !verbs.contains(&"update".to_string()) && !verbs.contains(&"escalate".to_string()),
            "cluster-wide update/escalate not needed: {rule}"
        );
    }
    let allowed = |group: &str, resource: &str, verb: &str| {
        rules.iter().any(|r| {
            strings(&r["apiGroups"]).iter().any(|g| g == group)
                && strings(&r["resources"]).iter().any(|x| x == resource)
                && strings(&r["verbs"]).iter().any(|v| v == verb)
        })
    };
    for (g, r) in [
        ("gateway.networking.k8s.io", "gateways"),
        ("gateway.networking.k8s.io", "httproutes"),
        ("gateway.networking.k8s.io", "gatewayclasses"),
        ("gateway.networking.k8s.io", "referencegrants"),
        ("gateway.networking.k8s.io", "backendtlspolicies"),
        ("gateway.envoyproxy.io", "envoyextensionpolicies"),
        ("gateway.envoyproxy.io", "securitypolicies"),
        ("gateway.envoyproxy.io", "backendtrafficpolicies"),
        ("gateway.envoyproxy.io", "backends"),
        ("", "services"),
        ("", "secrets"),
        ("", "configmaps"),
        ("", "namespaces"),
        ("discovery.k8s.io", "endpointslices"),
    ] {
        assert!(
            allowed(g, r, "list") && allowed(g, r, "watch"),
            "{g}/{r} must be watchable"
        );
    }
    assert!(allowed("apps", "deployments", "patch") && allowed("apps", "deployments", "create"));
    assert!(
        !allowed("gateway.networking.k8s.io", "gateways", "patch"),
        "specs are never written"
    );
    assert!(!allowed("", "secrets", "delete"));
    assert!(
        !allowed("coordination.k8s.io", "leases", "get"),
        "Lease access is namespaced"
    );
    let role = one(objs, "Role");
    assert_eq!(role["metadata"]["namespace"], "portcullis-system");
    for rule in role["rules"].as_array().expect("Role rules") {
        let verbs = strings(&rule["verbs"]);
        if verbs != ["create"] {
            assert_eq!(
                strings(&rule["resourceNames"]),
                ["portcullis-leader"],
                "{rule}"
            );
        }
    }
    let crb = one(objs, "ClusterRoleBinding");
    assert_eq!(crb["subjects"][0]["name"], sa["metadata"]["name"]);
    assert_eq!(crb["subjects"][0]["namespace"], "portcullis-system");

    // ---- custom: CRDs off, ServiceMonitor on, one replica, digest, parametersRef
    let objs = objects(report, "custom");
    assert!(
        !templates(report, "custom")
            .iter()
            .any(|t| t.contains("portcullis-crds")),
        "crds.enabled=false drops the CRD subchart"
    );
    let sm = one(objs, "ServiceMonitor");
    assert_eq!(sm["metadata"]["labels"]["release"], "kube-prometheus-stack");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "http-metrics");
    assert!(
        find(objs, "PodDisruptionBudget").is_empty(),
        "no PDB for one replica"
    );
    let dep = one(objs, "Deployment");
    assert_eq!(dep["spec"]["replicas"], 1);
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["image"],
        format!(
            "ghcr.io/portcullis-dev/portcullis@sha256:{}",
            "a".repeat(64)
        )
    );
    assert!(strings(&c["args"]).contains(&"--log-format=json".to_string()));
    assert!(strings(&c["args"]).contains(&"--controller-name=example.com/edge".to_string()));
    let gc = one(objs, "GatewayClass");
    assert_eq!(gc["metadata"]["name"], "edge");
    assert_eq!(gc["spec"]["controllerName"], "example.com/edge");
    assert_eq!(gc["spec"]["parametersRef"]["kind"], "EnvoyProxy");
    assert_eq!(
        one(objs, "Service")["metadata"]["annotations"]["example.com/owner"],
        "platform"
    );
    assert!(objs
        .iter()
        .all(|o| o["metadata"]["labels"]["team"] == "platform"));

    // ---- minimal: no RBAC, no GatewayClass, existing ServiceAccount, no leader election
    let objs = objects(report, "minimal");
    let kinds: Vec<&str> = objs.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(kinds, ["Deployment", "Service"]);
    let dep = one(objs, "Deployment");
    assert_eq!(
        dep["spec"]["template"]["spec"]["serviceAccountName"],
        "existing"
    );
    assert!(
        strings(&dep["spec"]["template"]["spec"]["containers"][0]["args"])
            .contains(&"--leader-election=false".to_string())
    );
}

/// Every scenario's Deployment command line is accepted by the controller's real argument parser
/// and resolves to a Kubernetes configuration (`portcullis run ... --print-config` checks the
/// flags and exits without touching the network). Env comes from the container spec, with the
/// downward-API values a pod would get.
#[test]
fn chart_command_lines_parse_in_the_controller() {
    let report = report();
    let bin = env!("CARGO_BIN_EXE_portcullis-e2e");
    let scenarios = report["scenarios"]
        .as_object()
        .expect("scenarios in the report");
    assert!(scenarios.len() >= 3, "{:?}", scenarios.keys());
    for (name, scenario) in scenarios {
        let objs = scenario["objects"].as_array().expect("objects");
        let dep = one(objs, "Deployment");
        let c = &dep["spec"]["template"]["spec"]["containers"][0];
        let args = strings(&c["args"]);
        assert_eq!(
            args.first().map(String::as_str),
            Some("run"),
            "[{name}] {args:?}"
        );
        let mut cmd = Command::new(bin);
        cmd.args(&args).arg("--print-config").env_clear();
        for e in c["env"].as_array().into_iter().flatten() {
            let key = e["name"].as_str().unwrap_or_default();
            let value = match (
                e["value"].as_str(),
                e["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
            ) {
                (Some(v), _) => v.to_string(),
                (None, Some("metadata.name")) => "portcullis-7d9f-abcde".to_string(),
                (None, Some("metadata.namespace")) => dep["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                (None, other) => panic!("[{name}] env {key}: unexpected source {other:?}"),
            };
            cmd.env(key, value);
        }
        let out = cmd.output().expect("run portcullis-e2e");
        assert!(
            out.status.success(),
            "[{name}] the controller rejects the chart's command line {args:?}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cfg: Value = serde_json::from_slice(&out.stdout).expect("--print-config prints JSON");
        assert_eq!(cfg["provider"], "kubernetes", "[{name}]");
        let k = &cfg["config"];
        let ns = dep["metadata"]["namespace"].as_str().unwrap_or_default();
        assert_eq!(k["namespace"], ns, "[{name}] namespace from POD_NAMESPACE");
        assert_eq!(
            k["identity"], "portcullis-7d9f-abcde",
            "[{name}] identity from POD_NAME"
        );
        assert_eq!(k["cache_dir"], "/var/cache/portcullis", "[{name}]");
        let svc = one(objs, "Service");
        let svc_name = svc["metadata"]["name"].as_str().unwrap_or_default();
        assert_eq!(
            k["xds_service"],
            format!("{svc_name}.{ns}.svc"),
            "[{name}] xDS Service name"
        );
        let port = |pname: &str| {
            svc["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"] == pname)
                .and_then(|p| p["port"].as_u64())
                .unwrap_or_else(|| panic!("[{name}] Service port {pname}"))
        };
        // Envoys dial the Service ports; the controller must advertise the same ones.
        assert_eq!(
            k["xds_service_port"].as_u64(),
            Some(port("grpc-xds")),
            "[{name}]"
        );
        assert_eq!(
            k["wasm_service_port"].as_u64(),
            Some(port("https-wasm")),
            "[{name}]"
        );
        let leader = args.iter().any(|a| a == "--leader-election=true");
        assert_eq!(k["leader_election"], leader, "[{name}]");
        // The chart's watchNamespaces reach the provider; the fleet NetworkPolicy flag too.
        let watched: Vec<String> = args
            .iter()
            .filter_map(|a| a.strip_prefix("--watch-namespace="))
            .map(String::from)
            .collect();
        assert_eq!(strings(&k["watch_namespaces"]), watched, "[{name}]");
        assert_eq!(
            k["fleet_network_policy"],
            args.iter().any(|a| a == "--fleet-network-policy=true"),
            "[{name}]"
        );
    }
}

/// `(apiGroup, resource, verb)` granted by a Role's or ClusterRole's rules (resourceNames-limited
/// rules included, marked by the fourth element).
fn grants(role: &Value) -> Vec<(String, String, String, bool)> {
    let mut out = Vec::new();
    for rule in role["rules"].as_array().into_iter().flatten() {
        let named = rule.get("resourceNames").is_some();
        for g in strings(&rule["apiGroups"]) {
            for r in strings(&rule["resources"]) {
                for v in strings(&rule["verbs"]) {
                    out.push((g.clone(), r.clone(), v, named));
                }
            }
        }
    }
    out
}

fn grants_any(role: &Value, group: &str, resource: &str, verb: &str) -> bool {
    grants(role)
        .iter()
        .any(|(g, r, v, named)| g == group && r == resource && v == verb && !named)
}

/// Writes the Envoy fleets need, and the namespaced reads of translation.
const FLEET_WRITES: [(&str, &str, &str); 13] = [
    ("", "secrets", "create"),
    ("", "secrets", "patch"),
    ("", "configmaps", "create"),
    ("", "configmaps", "patch"),
    ("", "services", "create"),
    ("", "services", "patch"),
    ("", "services", "delete"),
    ("", "serviceaccounts", "create"),
    ("", "serviceaccounts", "patch"),
    ("", "serviceaccounts", "delete"),
    ("apps", "deployments", "create"),
    ("apps", "deployments", "patch"),
    ("apps", "deployments", "delete"),
];
const NAMESPACED_READS: [(&str, &str); 13] = [
    ("gateway.networking.k8s.io", "gateways"),
    ("gateway.networking.k8s.io", "httproutes"),
    ("gateway.networking.k8s.io", "referencegrants"),
    ("gateway.networking.k8s.io", "backendtlspolicies"),
    ("gateway.envoyproxy.io", "envoyextensionpolicies"),
    ("gateway.envoyproxy.io", "securitypolicies"),
    ("gateway.envoyproxy.io", "backendtrafficpolicies"),
    ("gateway.envoyproxy.io", "backends"),
    ("gateway.envoyproxy.io", "envoyproxies"),
    ("", "services"),
    ("", "secrets"),
    ("", "configmaps"),
    ("discovery.k8s.io", "endpointslices"),
];

#[test]
fn chart_scopes_rbac_to_watch_namespaces() {
    let report = report();
    let ns_of = |o: &Value| {
        o["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };

    // ---- defaults: cluster-wide, as before (the documented trade-off), no NetworkPolicy.
    let objs = objects(report, "defaults");
    let cr = one(objs, "ClusterRole");
    for (g, r, v) in FLEET_WRITES {
        assert!(
            grants_any(cr, g, r, v),
            "cluster-wide mode: {g}/{r} {v} in the ClusterRole"
        );
    }
    assert!(
        !grants_any(cr, "networking.k8s.io", "networkpolicies", "create"),
        "no NetworkPolicy grant unless networkPolicy.enabled"
    );
    assert!(
        find(objs, "NetworkPolicy").is_empty(),
        "NetworkPolicy is opt-in"
    );
    let dep = one(objs, "Deployment");
    let args = strings(&dep["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--watch-namespace") || a.starts_with("--fleet-network-policy")),
        "{args:?}"
    );

    // ---- scoped: watchNamespaces [infra, apps]
    let objs = objects(report, "scoped");
    let cr = one(objs, "ClusterRole");
    for (g, r, v, named) in grants(cr) {
        // Only the cluster-scoped kinds, and the Namespaces by name.
        match (g.as_str(), r.as_str()) {
            ("gateway.networking.k8s.io", "gatewayclasses") => {
                assert!(["get", "list", "watch"].contains(&v.as_str()), "{r} {v}")
            }
            ("gateway.networking.k8s.io", "gatewayclasses/status") => assert_eq!(v, "patch"),
            ("", "namespaces") => {
                assert!(named, "Namespaces only by name");
                assert!(["get", "list", "watch"].contains(&v.as_str()), "{r} {v}");
            }
            _ => panic!("scoped ClusterRole grants {g}/{r} {v}: namespaced, it belongs in a Role"),
        }
    }
    for (g, r, v) in FLEET_WRITES {
        assert!(
            !grants_any(cr, g, r, v),
            "scoped ClusterRole must not grant {g}/{r} {v}"
        );
    }
    let ns_rule = cr["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| strings(&r["resources"]) == ["namespaces"])
        .expect("namespaces rule");
    assert_eq!(strings(&ns_rule["resourceNames"]), ["infra", "apps"]);

    let roles = find(objs, "Role");
    let bindings = find(objs, "RoleBinding");
    let sa = one(objs, "ServiceAccount");
    for ns in ["infra", "apps"] {
        let role = roles
            .iter()
            .find(|r| ns_of(r) == ns)
            .unwrap_or_else(|| panic!("no Role in {ns}"));
        for (g, r, v) in FLEET_WRITES {
            assert!(grants_any(role, g, r, v), "Role in {ns}: {g}/{r} {v}");
        }
        assert!(
            grants_any(role, "networking.k8s.io", "networkpolicies", "patch"),
            "fleet NetworkPolicy"
        );
        for (g, r) in NAMESPACED_READS {
            for v in ["get", "list", "watch"] {
                assert!(grants_any(role, g, r, v), "Role in {ns}: {g}/{r} {v}");
            }
        }
        for r in ["gateways/status", "httproutes/status"] {
            assert!(
                grants_any(role, "gateway.networking.k8s.io", r, "patch"),
                "{ns}: {r}"
            );
        }
        assert!(!grants_any(role, "", "secrets", "delete"));
        let rb = bindings
            .iter()
            .find(|b| ns_of(b) == ns)
            .unwrap_or_else(|| panic!("no RoleBinding in {ns}"));
        assert_eq!(rb["roleRef"]["kind"], "Role");
        assert_eq!(rb["roleRef"]["name"], role["metadata"]["name"]);
        assert_eq!(rb["subjects"][0]["name"], sa["metadata"]["name"]);
        assert_eq!(rb["subjects"][0]["namespace"], "portcullis-system");
    }
    // The release namespace: its own Secrets (by name, but create) and the Lease; nothing else.
    let own: Vec<&&Value> = roles
        .iter()
        .filter(|r| ns_of(r) == "portcullis-system")
        .collect();
    assert_eq!(own.len(), 2, "secrets + leader-election Roles");
    let secrets_role = own
        .iter()
        .find(|r| r["metadata"]["name"] == "portcullis-secrets")
        .expect("portcullis-secrets Role");
    for (g, r, v, named) in grants(secrets_role) {
        assert_eq!((g.as_str(), r.as_str()), ("", "secrets"));
        assert!(v == "create" || (v == "get" && named), "{v} named={named}");
    }
    let named: Vec<String> = secrets_role["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| strings(&r["resourceNames"]))
        .collect();
    assert_eq!(named, ["portcullis-xds-ca", "portcullis-session"]);
    // Bindings only where Roles are, and no Role outside the watched + release namespaces.
    for o in roles.iter().chain(bindings.iter()) {
        assert!(
            ["infra", "apps", "portcullis-system"].contains(&ns_of(o).as_str()),
            "{}",
            o["metadata"]
        );
    }
    let dep = one(objs, "Deployment");
    let args = strings(&dep["spec"]["template"]["spec"]["containers"][0]["args"]);
    for want in [
        "--watch-namespace=infra",
        "--watch-namespace=apps",
        "--fleet-network-policy=true",
        "--fleet-metrics-namespace=monitoring",
    ] {
        assert!(args.contains(&want.to_string()), "{want} in {args:?}");
    }

    // ---- values the chart refuses
    let refused = &report["refused"];
    assert!(refused["scoped-bad-name"]
        .as_str()
        .is_some_and(|m| m.contains("\"Infra\"")));
    assert!(refused["scoped-parametersref-elsewhere"]
        .as_str()
        .is_some_and(|m| m.contains("must be in watchNamespaces")));
}

#[test]
fn chart_network_policies() {
    let report = report();
    let port_list = |rule: &Value| -> Vec<(i64, String)> {
        rule["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["port"].as_i64().unwrap_or_default(),
                    p["protocol"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let tcp = |ports: &[i64]| -> Vec<(i64, String)> {
        ports.iter().map(|p| (*p, "TCP".to_string())).collect()
    };

    // ---- scoped + networkPolicy.enabled
    let objs = objects(report, "scoped");
    let np = one(objs, "NetworkPolicy");
    let dep = one(objs, "Deployment");
    assert_eq!(np["metadata"]["namespace"], "portcullis-system");
    assert_eq!(
        np["spec"]["podSelector"]["matchLabels"],
        dep["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(strings(&np["spec"]["policyTypes"]), ["Ingress", "Egress"]);
    let ingress = np["spec"]["ingress"].as_array().expect("ingress");
    assert_eq!(ingress.len(), 2, "{ingress:?}");
    // xDS + wasm only from fleet pods, only in the watched namespaces.
    assert_eq!(port_list(&ingress[0]), tcp(&[18000, 18001]));
    let from = &ingress[0]["from"][0];
    assert_eq!(
        from["podSelector"]["matchExpressions"][0],
        serde_json::json!({"key": "portcullis.dev/fleet", "operator": "Exists"})
    );
    assert_eq!(
        strings(&from["namespaceSelector"]["matchExpressions"][0]["values"]),
        ["infra", "apps"]
    );
    // The metrics port only from metricsFrom; the admin/health port is not open otherwise.
    assert_eq!(port_list(&ingress[1]), tcp(&[19100]));
    assert_eq!(
        ingress[1]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
    let egress = np["spec"]["egress"].as_array().expect("egress");
    assert_eq!(
        port_list(&egress[0]),
        [(53, "UDP".to_string()), (53, "TCP".to_string())],
        "DNS"
    );
    assert_eq!(
        egress[0]["to"][0]["podSelector"]["matchLabels"]["k8s-app"],
        "kube-dns"
    );
    assert_eq!(port_list(&egress[1]), tcp(&[443, 6443]), "API server");
    assert_eq!(egress[1]["to"][0]["ipBlock"]["cidr"], "10.0.0.1/32");
    assert_eq!(port_list(&egress[2]), tcp(&[443]), "registries");
    assert!(egress[2].get("to").is_none(), "registries: anywhere on 443");
    assert_eq!(port_list(&egress[3]), tcp(&[80]), "extraEgress");
    assert_eq!(egress.len(), 4);

    // ---- cluster-wide + networkPolicy.enabled: fleets anywhere, fleet policy RBAC cluster-wide.
    let objs = objects(report, "netpol-cluster");
    let np = one(objs, "NetworkPolicy");
    let ingress = np["spec"]["ingress"].as_array().expect("ingress");
    assert_eq!(ingress.len(), 1, "no metrics ingress without metricsFrom");
    assert_eq!(
        ingress[0]["from"][0]["namespaceSelector"],
        serde_json::json!({})
    );
    let cr = one(objs, "ClusterRole");
    for v in ["create", "patch", "delete"] {
        assert!(
            grants_any(cr, "networking.k8s.io", "networkpolicies", v),
            "{v}"
        );
    }
    let args =
        strings(&one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert!(
        args.contains(&"--fleet-network-policy=true".to_string()),
        "{args:?}"
    );
    assert!(!args
        .iter()
        .any(|a| a.starts_with("--fleet-metrics-namespace")));
}
