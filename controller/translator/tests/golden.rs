//! Golden tests: every `testdata/*.in.yaml` is translated and rendered; the result must equal
//! `testdata/*.out.yaml`. Regenerate with `UPDATE_GOLDEN=1 cargo test -p portcullis-translator`.
//!
//! A case may set options in `testdata/*.options.yaml` beside its input ([`CaseOptions`]); the
//! others run with [`opts`] and the default [`TestResolver`].
//!
//! When an Envoy binary is available (`PORTCULLIS_ENVOY`, or the workspace's `.bin/envoy`), each
//! output is also turned into a static bootstrap and checked with `envoy --mode validate`.

use std::path::{Path, PathBuf};

use portcullis_translator::egress::EgressPolicy;
use portcullis_translator::wasm::source::{WasmCodeType, WasmResolution, WasmResolver, WasmSource};
use portcullis_translator::{
    parse_documents, render_output, translate, ClientTlsFiles, OutputFormat, Resources,
    TranslateOptions,
};
use serde_json::{json, Value};

/// Resolver standing in for the runtime's cache: URLs containing `pending` are still being
/// fetched, URLs containing `unreachable` failed with a 503, everything else is served by the
/// controller at a digest-named URL under `base`.
struct TestResolver {
    base: String,
}

impl Default for TestResolver {
    fn default() -> Self {
        Self {
            base: "http://127.0.0.1:19102".into(),
        }
    }
}

impl WasmResolver for TestResolver {
    fn resolve(&self, s: &WasmSource) -> WasmResolution {
        if s.url.contains("pending") {
            WasmResolution::Pending
        } else if s.url.contains("unreachable") {
            WasmResolution::Failed {
                reason: format!("fetching {}: HTTP 503 Service Unavailable", s.url),
            }
        } else {
            let sha = s.sha256.clone().unwrap_or_else(|| "0".repeat(64));
            WasmResolution::Ready {
                serve_url: self.serve_url_for(&s.code_type, &sha).unwrap_or_default(),
                sha256: sha,
            }
        }
    }

    fn serve_url_for(&self, kind: &WasmCodeType, sha256: &str) -> Option<String> {
        Some(match kind {
            WasmCodeType::DynamicModule => format!("{}/dynamic/{sha256}.so", self.base),
            _ => format!("{}/wasm/{sha256}.wasm", self.base),
        })
    }
}

#[path = "common/options.rs"]
mod options;
use options::opts;

/// `egress` in `<case>.options.yaml`: the operator flags of `portcullis run`.
#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EgressCase {
    #[serde(default)]
    enable_backend: bool,
    #[serde(default)]
    allow_backend_cidr: Vec<String>,
    #[serde(default)]
    allow_backend_unix: bool,
    /// `--issuer-ca-bundle`.
    #[serde(default)]
    issuer_ca_bundle: Option<String>,
}

/// `<case>.options.yaml`: what a case changes from [`opts`] and the default [`TestResolver`].
#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseOptions {
    /// Base URL the resolver serves modules from (default `http://127.0.0.1:19102`).
    serve_base: Option<String>,
    wasm_fetch_tls: Option<ClientTlsFiles>,
    egress: Option<EgressCase>,
}

/// Options and resolver for the case whose input is `input`.
fn case(input: &Path) -> (TranslateOptions, TestResolver) {
    let path = PathBuf::from(input.to_string_lossy().replace(".in.yaml", ".options.yaml"));
    let co: CaseOptions = match std::fs::read_to_string(&path) {
        Ok(text) => {
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        }
        Err(_) => CaseOptions::default(),
    };
    let mut o = opts();
    o.wasm_fetch_tls = co.wasm_fetch_tls;
    if let Some(e) = co.egress {
        o.egress = EgressPolicy {
            enable_backend: e.enable_backend,
            allowed_cidrs: e
                .allow_backend_cidr
                .iter()
                .map(|c| c.parse().unwrap_or_else(|err| panic!("cidr {c}: {err}")))
                .collect(),
            allow_unix: e.allow_backend_unix,
            issuer_ca_bundle: e.issuer_ca_bundle,
        };
    }
    let mut r = TestResolver::default();
    if let Some(base) = co.serve_base {
        r.base = base;
    }
    (o, r)
}

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata")
}

fn inputs() -> Vec<PathBuf> {
    inputs_in(&testdata())
}

fn inputs_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".in.yaml"))
        .collect();
    v.sort();
    v
}

fn load(path: &Path) -> Resources {
    let text = std::fs::read_to_string(path).expect("read input");
    let (res, errs) = parse_documents(&path.display().to_string(), &text);
    assert!(errs.is_empty(), "{}: load errors: {errs:?}", path.display());
    Resources::from_parsed(res)
}

fn render(path: &Path) -> String {
    let (o, r) = case(path);
    let out = translate(&load(path), &o, &r);
    render_output(&out, OutputFormat::Yaml)
}

#[test]
fn golden() {
    let update = std::env::var("UPDATE_GOLDEN").is_ok();
    let mut failures = Vec::new();
    let ins = inputs();
    assert!(
        ins.len() >= 6,
        "expected the golden inputs, found {}",
        ins.len()
    );
    for input in ins {
        let got = render(&input);
        assert!(!got.starts_with("error:"), "{}: {got}", input.display());
        assert!(
            !got.contains("PRIVATE KEY"),
            "{}: a private key leaked into the output",
            input.display()
        );
        let out = PathBuf::from(input.to_string_lossy().replace(".in.yaml", ".out.yaml"));
        if !matches_golden(&out, &got, update) {
            failures.push(out.display().to_string());
        }
    }
    assert!(failures.is_empty(), "golden mismatches: {failures:?}");
}

/// Whether `got` equals the golden file `out` (printing the first differing lines when not);
/// with `update`, writes `got` there instead.
fn matches_golden(out: &Path, got: &str, update: bool) -> bool {
    if update {
        std::fs::write(out, got).expect("write golden");
        return true;
    }
    let want = std::fs::read_to_string(out).unwrap_or_default();
    if want == got {
        return true;
    }
    let diff: Vec<_> = want
        .lines()
        .zip(got.lines())
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .take(3)
        .collect();
    eprintln!(
        "{} differs (rerun with UPDATE_GOLDEN=1 if intended); first lines: {diff:?}",
        out.display()
    );
    false
}

/// The status suite: `testdata/status/<case>.in.yaml` (options in `<case>.options.yaml`, as
/// above) against `<case>.status.yaml`, the statuses alone. Each input opens with a comment
/// naming the Envoy Gateway or Gateway API rule it follows (`docs/conformance.md`).
fn status_dir() -> PathBuf {
    testdata().join("status")
}

fn render_statuses(path: &Path) -> String {
    let (o, r) = case(path);
    let out = translate(&load(path), &o, &r);
    serde_yaml::to_string(&out.statuses).expect("statuses render")
}

#[test]
fn status_golden() {
    let update = std::env::var("UPDATE_GOLDEN").is_ok();
    let ins = inputs_in(&status_dir());
    assert!(
        ins.len() >= 60,
        "expected at least 60 status cases, found {}",
        ins.len()
    );
    let mut failures = Vec::new();
    for input in ins {
        let text = std::fs::read_to_string(&input).expect("read input");
        assert!(
            text.starts_with("# "),
            "{}: a status case opens with a comment naming the rule it follows",
            input.display()
        );
        let got = render_statuses(&input);
        let out = PathBuf::from(input.to_string_lossy().replace(".in.yaml", ".status.yaml"));
        if !matches_golden(&out, &got, update) {
            failures.push(out.display().to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "status golden mismatches: {failures:?}"
    );
}

#[test]
fn output_is_deterministic_and_order_independent() {
    let mut all = inputs();
    all.extend(inputs_in(&status_dir()));
    for input in all {
        let text = std::fs::read_to_string(&input).expect("read");
        let a = render(&input);
        assert_eq!(a, render(&input), "{}: two runs differ", input.display());
        // The protos themselves, not only their rendering, must be byte-identical (the ADS
        // server versions snapshots by content).
        let res = load(&input);
        let (o, r) = case(&input);
        for _ in 0..5 {
            let x = translate(&res, &o, &r);
            let y = translate(&res, &o, &r);
            assert_eq!(
                x.xds,
                y.xds,
                "{}: xDS bytes differ between runs",
                input.display()
            );
        }
        // Reversing document order must not change anything.
        let mut docs: Vec<&str> = text.split("\n---\n").collect();
        docs.reverse();
        let (res, errs) = parse_documents("reversed", &docs.join("\n---\n"));
        assert!(errs.is_empty());
        let out = translate(&Resources::from_parsed(res), &o, &r);
        assert_eq!(
            a,
            render_output(&out, OutputFormat::Yaml),
            "{}: order-dependent output",
            input.display()
        );
    }
}

fn envoy_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("PORTCULLIS_ENVOY") {
        return Some(PathBuf::from(p));
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.bin/envoy");
    p.exists().then_some(p)
}

fn strip_type(mut v: Value) -> Value {
    if let Value::Object(o) = &mut v {
        o.remove("@type");
    }
    v
}

/// A static bootstrap equivalent to one node's ADS resources: RDS inlined, EDS made STATIC.
fn static_bootstrap(node: &Value) -> Value {
    let empty = vec![];
    let routes = node
        .get("routes")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let endpoints = node
        .get("endpoints")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let mut listeners = Vec::new();
    for l in node
        .get("listeners")
        .and_then(Value::as_array)
        .unwrap_or(&empty)
    {
        let mut l = strip_type(l.clone());
        for fc in l["filter_chains"].as_array_mut().into_iter().flatten() {
            for f in fc["filters"].as_array_mut().into_iter().flatten() {
                let hcm = &mut f["typed_config"];
                let name = hcm["rds"]["route_config_name"].clone();
                let rc = routes
                    .iter()
                    .find(|r| r["name"] == name)
                    .cloned()
                    .expect("route config for rds");
                if let Value::Object(o) = hcm {
                    o.remove("rds");
                    o.insert("route_config".into(), strip_type(rc));
                }
            }
        }
        listeners.push(l);
    }
    let mut clusters = Vec::new();
    for c in node
        .get("clusters")
        .and_then(Value::as_array)
        .unwrap_or(&empty)
    {
        let mut c = strip_type(c.clone());
        if c["type"] == "EDS" {
            let name = c["name"].clone();
            let cla = endpoints
                .iter()
                .find(|e| e["cluster_name"] == name)
                .cloned()
                .expect("endpoints for eds cluster");
            if let Value::Object(o) = &mut c {
                o.remove("eds_cluster_config");
                o.insert("type".into(), json!("STATIC"));
                o.insert("load_assignment".into(), strip_type(cla));
            }
        }
        clusters.push(c);
    }
    json!({ "static_resources": { "listeners": listeners, "clusters": clusters } })
}

#[test]
fn envoy_accepts_every_golden_output() {
    let Some(envoy) = envoy_bin() else {
        eprintln!("skipping: no Envoy (set PORTCULLIS_ENVOY or run `make setup`)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("portcullis-golden-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let mut checked = 0;
    for input in inputs().into_iter().chain(inputs_in(&status_dir())) {
        let (o, r) = case(&input);
        let out = translate(&load(&input), &o, &r);
        let doc: Value =
            serde_json::from_str(&render_output(&out, OutputFormat::Json)).expect("json output");
        for (node, res) in doc["xds"].as_object().into_iter().flatten() {
            let mut boot = static_bootstrap(res);
            // Test certificates are real; restore redacted keys from the IR.
            restore_keys(&mut boot, &out.ir);
            local_cert_files(&mut boot);
            if !local_dynamic_modules(&mut boot, &dir) {
                eprintln!(
                    "skipping {} node {node}: it loads a dynamic module and dist/dynamic/libportcullis.so is not built",
                    input.display()
                );
                continue;
            }
            let file = dir.join(format!(
                "{}-{}.json",
                input.file_name().and_then(|n| n.to_str()).unwrap_or("x"),
                node.replace('/', "_")
            ));
            std::fs::write(&file, serde_json::to_vec_pretty(&boot).expect("json"))
                .expect("write bootstrap");
            let o = std::process::Command::new(&envoy)
                // Envoy looks for remote dynamic modules in its temp directory first.
                .env("TMPDIR", &dir)
                .args(["--mode", "validate", "--log-level", "error", "-c"])
                .arg(&file)
                .output()
                .expect("run envoy");
            assert!(
                o.status.success(),
                "envoy rejected {} node {node}:\n{}\n{}",
                input.display(),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no node validated");
}

fn restore_keys(v: &mut Value, ir: &portcullis_translator::ir::Ir) {
    let keys: Vec<(String, String)> = ir
        .gateways
        .values()
        .flat_map(|g| g.ports.iter())
        .flat_map(|p| p.chains.iter())
        .flat_map(|c| c.certificates.iter())
        .map(|c| (c.cert_pem.clone(), c.key_pem.clone()))
        .collect();
    fn walk(v: &mut Value, keys: &[(String, String)]) {
        match v {
            Value::Object(o) => {
                if let (Some(cert), true) = (
                    o.get("certificate_chain")
                        .and_then(|c| c["inline_string"].as_str())
                        .map(str::to_string),
                    o.contains_key("private_key"),
                ) {
                    if let Some((_, k)) = keys.iter().find(|(c, _)| *c == cert) {
                        o.insert("private_key".into(), json!({ "inline_string": k }));
                    }
                }
                o.values_mut().for_each(|x| walk(x, keys));
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, keys)),
            _ => {}
        }
    }
    walk(v, &keys);
}

/// Envoy reads certificate files given by path (`filename`), so validation needs them: cases
/// name `/etc/envoy/certs/<file>` (as in the Envoy pod), served here from `testdata/certs/`.
/// Points every dynamic module of `boot` at the workspace's `libportcullis.so`: `local`
/// filenames become its path; `remote` modules get its sha256, with a copy in `tmp` where Envoy
/// caches fetched modules (`envoy_dynamic_module_<sha256>.so`), so validation needs no fetch.
/// Returns false when `boot` loads a module and the library is not built.
fn local_dynamic_modules(boot: &mut Value, tmp: &Path) -> bool {
    /// Rewrites the modules under `v` once `lib` is known; counts them.
    fn rewrite(v: &mut Value, lib: Option<(&str, &str)>) -> usize {
        match v {
            Value::Object(o) => {
                let mut n = 0;
                if let Some(m) = o.get_mut("dynamic_module_config").map(|c| &mut c["module"]) {
                    n += 1;
                    if let Some((path, sha)) = lib {
                        if m.get("local").is_some() {
                            m["local"]["filename"] = json!(path);
                        }
                        if m.get("remote").is_some() {
                            m["remote"]["sha256"] = json!(sha);
                        }
                    }
                }
                n + o.values_mut().map(|v| rewrite(v, lib)).sum::<usize>()
            }
            Value::Array(a) => a.iter_mut().map(|v| rewrite(v, lib)).sum(),
            _ => 0,
        }
    }
    if rewrite(boot, None) == 0 {
        return true;
    }
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/dynamic/libportcullis.so");
    let Ok(bytes) = std::fs::read(&lib) else {
        return false;
    };
    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    let cached = tmp.join(format!("envoy_dynamic_module_{sha}.so"));
    if !cached.exists() {
        std::fs::write(&cached, &bytes).expect("copy module");
    }
    rewrite(boot, Some((&lib.display().to_string(), &sha)));
    true
}

fn local_cert_files(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(f)) = o.get_mut("filename") {
                if let Some(name) = f.strip_prefix("/etc/envoy/certs/") {
                    let local = testdata().join("certs").join(name);
                    assert!(local.exists(), "missing test file {}", local.display());
                    *f = local.display().to_string();
                }
            }
            o.values_mut().for_each(local_cert_files);
        }
        Value::Array(a) => a.iter_mut().for_each(local_cert_files),
        _ => {}
    }
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list dir")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            yaml_files(&p, out);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
}

fn load_all(paths: &[PathBuf]) -> Resources {
    let mut all = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(p).expect("read");
        let (res, errs) = parse_documents(&p.display().to_string(), &text);
        assert!(errs.is_empty(), "{}: {errs:?}", p.display());
        all.extend(res);
    }
    Resources::from_parsed(all)
}

/// The quickstart and every seed pattern translate with every condition healthy, alone and
/// all patterns together, and (when Envoy is here) Envoy accepts the result.
#[test]
fn examples_are_fully_accepted() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut sets: Vec<(String, Vec<PathBuf>)> = Vec::new();
    let mut local = Vec::new();
    yaml_files(&examples.join("local"), &mut local);
    // The EnvoyProxy that registers the quickstart's dynamic module is written by `make run`
    // (it pins the built library's sha256); an equivalent one stands in for it here.
    let generated =
        std::env::temp_dir().join(format!("portcullis-quickstart-{}", std::process::id()));
    std::fs::create_dir_all(&generated).expect("tmp");
    let envoy_proxy = generated.join("envoyproxy.yaml");
    std::fs::write(
        &envoy_proxy,
        format!(
            "apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: EnvoyProxy\n\
             metadata: {{name: quickstart-modules, namespace: default}}\n\
             spec:\n  dynamicModules:\n  - name: portcullis\n    source:\n      type: Remote\n\
             \x20     remote: {{url: 'http://127.0.0.1:18081/dynamic/libportcullis.so', sha256: {}}}\n",
            "ab".repeat(32)
        ),
    )
    .expect("write EnvoyProxy");
    local.push(envoy_proxy);
    sets.push(("local".into(), local));
    let mut patterns = Vec::new();
    yaml_files(&examples.join("patterns"), &mut patterns);
    assert!(
        patterns.len() >= 4,
        "expected the seed patterns, found {patterns:?}"
    );
    for p in &patterns {
        sets.push((p.display().to_string(), vec![p.clone()]));
    }
    sets.push(("all patterns".into(), patterns));
    for (name, files) in sets {
        let out = translate(&load_all(&files), &opts(), &TestResolver::default());
        assert!(!out.gateways.is_empty(), "{name}: no Gateway programmed");
        let doc: Value = serde_json::to_value(&out.statuses).expect("statuses");
        let mut bad = Vec::new();
        fn walk(v: &Value, bad: &mut Vec<String>) {
            match v {
                Value::Object(o) => {
                    if let (Some(t), Some(s)) = (
                        o.get("type").and_then(Value::as_str),
                        o.get("status").and_then(Value::as_str),
                    ) {
                        let healthy = if t == "Conflicted" {
                            s == "False"
                        } else {
                            s == "True" && t != "UnsupportedFields"
                        };
                        if !healthy {
                            bad.push(v.to_string());
                        }
                    }
                    o.values().for_each(|x| walk(x, bad));
                }
                Value::Array(a) => a.iter().for_each(|x| walk(x, bad)),
                _ => {}
            }
        }
        walk(&doc, &mut bad);
        assert!(bad.is_empty(), "{name}: unhealthy conditions: {bad:#?}");
        // Every HTTPRoute and policy got a status.
        let kinds: Vec<&str> = out.statuses.iter().map(|s| s.kind.as_str()).collect();
        assert!(kinds.contains(&"HTTPRoute"), "{name}: no HTTPRoute status");
        if let Some(envoy) = envoy_bin() {
            let doc: Value =
                serde_json::from_str(&render_output(&out, OutputFormat::Json)).expect("json");
            let dir =
                std::env::temp_dir().join(format!("portcullis-examples-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("tmp");
            for (node, res) in doc["xds"].as_object().into_iter().flatten() {
                let mut boot = static_bootstrap(res);
                restore_keys(&mut boot, &out.ir);
                if !local_dynamic_modules(&mut boot, &dir) {
                    eprintln!("{name}: not validated by Envoy: dist/dynamic/libportcullis.so is not built");
                    continue;
                }
                let file = dir.join(format!("{}.json", node.replace('/', "_")));
                std::fs::write(&file, serde_json::to_vec(&boot).expect("json")).expect("write");
                let o = std::process::Command::new(&envoy)
                    // Envoy looks for remote dynamic modules in its temp directory first.
                    .env("TMPDIR", &dir)
                    .args(["--mode", "validate", "--log-level", "error", "-c"])
                    .arg(&file)
                    .output()
                    .expect("envoy");
                assert!(
                    o.status.success(),
                    "{name}: envoy rejected {node}: {}",
                    String::from_utf8_lossy(&o.stdout)
                );
            }
        }
    }
}
