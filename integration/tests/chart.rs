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
    }
}
