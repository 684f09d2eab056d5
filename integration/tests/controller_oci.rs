//! `code.type: Image` under `portcullis run`: the controller pulls the module from a real
//! registry (Debian `docker-registry`, basic auth through a `kubernetes.io/dockerconfigjson`
//! pull secret), checks the manifest digest pin, and serves the module to Envoy itself.
//!
//! Needs `docker-registry` and `htpasswd` (`bash scripts/setup.sh registry`).

use base64::Engine as _;
use portcullis_integration::controller::{
    conditions_of, resource, Controller, KeepAlive, CONVERGE,
};
use portcullis_integration::echo::EchoServer;
use portcullis_integration::registry::Registry;
use portcullis_integration::wasm::module;
use portcullis_oci::{push_wasm, PushOptions, RegistryAuth};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis-e2e");
const NODE: &str = "default/gw";
/// The Gateway's listener port; Envoy binds it on port 0 (`Controller::gateway_port`).
const GW_PORT: u16 = 8080;

fn manifests(
    gw_port: u16,
    echo_port: u16,
    image: &str,
    digest: &str,
    docker_config: &str,
    secret: &str,
) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(docker_config);
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
  listeners: [{{name: http, port: {gw_port}, protocol: HTTP}}]
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: Backend
metadata: {{name: echo, namespace: default}}
spec:
  endpoints: [{{ip: {{address: 127.0.0.1, port: {echo_port}}}}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: regcred, namespace: default}}
type: kubernetes.io/dockerconfigjson
data:
  .dockerconfigjson: {b64}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: api, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /api}}}}]
    backendRefs: [{{group: gateway.envoyproxy.io, kind: Backend, name: echo}}]
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyExtensionPolicy
metadata: {{name: ua-block, namespace: default}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}}]
  wasm:
  - name: ua-block
    rootID: ua_block
    code:
      type: Image
      image:
        url: {image}
        sha256: "{digest}"
        pullSecretRef: {{name: {secret}}}
    config:
      deny: {{contains: ["BadBot"]}}
      status: 403
"#
    )
}

#[test]
fn image_code_source_is_pulled_with_its_secret_and_served_to_envoy() {
    let reg = Registry::start_with_auth("portcullis", "s3cret-pass").expect("registry");
    let (user, pass) = reg.credentials().expect("credentials");
    let wasm = std::fs::read(module("ua_block").expect("ua_block.wasm")).expect("read");
    let image = format!("{}/filters/ua-block:v1", reg.host());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pushed = rt
        .block_on(push_wasm(
            &wasm,
            &image,
            &PushOptions {
                auth: RegistryAuth::basic(user, pass),
                ..PushOptions::default()
            },
        ))
        .expect("push");
    let digest = pushed
        .manifest_digest
        .trim_start_matches("sha256:")
        .to_string();
    let docker_config = reg.docker_config_json().expect("docker config");

    let echo = EchoServer::start().expect("echo");
    // First a secret name that does not exist: the policy says so, the route is fail-closed.
    let mut c = Controller::builder(BIN)
        .manifest(
            "all.yaml",
            manifests(
                GW_PORT,
                echo.port(),
                &image,
                &digest,
                &docker_config,
                "nope",
            ),
        )
        .args([
            "--wasm-retry-initial-ms",
            "200",
            "--wasm-retry-max-ms",
            "1000",
        ])
        .start()
        .expect("controller");
    c.wait_status("missing pull secret reported", |d| {
        let p =
            resource(d, "EnvoyExtensionPolicy", Some("default"), "ua-block").ok_or("no policy")?;
        let acc = conditions_of(&p["status"], "Accepted");
        if acc
            .iter()
            .any(|(s, _, m)| s == "False" && m.contains("pull secret default/nope"))
        {
            Ok(())
        } else {
            Err(format!("{acc:?}"))
        }
    })
    .expect("missing secret");

    // With the right secret the retry pulls it and the filter runs.
    c.write_manifest(
        "all.yaml",
        &manifests(
            GW_PORT,
            echo.port(),
            &image,
            &digest,
            &docker_config,
            "regcred",
        ),
    )
    .expect("fix");
    let gw_port = c.gateway_port(NODE, GW_PORT).expect("listener bound");
    c.process()
        .wait_until("ua-block active from the image", CONVERGE, || {
            let get = |ua: &str| {
                KeepAlive::connect(gw_port)
                    .and_then(|mut k| k.get("example.com", "/api", &[("user-agent", ua)]))
                    .map_err(|e| e.to_string())
            };
            let (bad, good) = (get("BadBot/1")?.status, get("curl/8")?.status);
            if (bad, good) == (403, 200) {
                Ok(())
            } else {
                Err(format!("BadBot {bad}, curl {good}"))
            }
        })
        .expect("filter active");
    c.wait_synced(NODE).expect("synced");
    let doc = c.status().expect("status");
    let m = &doc["wasm"][0];
    assert_eq!(m["state"], "ready", "{m}");
    assert_eq!(
        m["sha256"],
        pushed.wasm_sha256.as_str(),
        "served by the module's own digest"
    );
    assert!(c
        .cache_dir()
        .join(format!("{}.wasm", pushed.wasm_sha256))
        .is_file());
}
