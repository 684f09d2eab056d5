//! Issue 4: wasm images against a real registry (Debian `docker-registry`).
//!
//! Needs `docker-registry` and `htpasswd` (`bash scripts/setup.sh registry`).

use std::io::{Read as _, Write as _};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_integration::process::ClosedPort;
use portcullis_integration::registry::Registry;
use portcullis_oci::{
    image, inspect, pull_wasm, push_wasm, ImageFormat, OciError, PullOptions, PushOptions,
    RegistryAuth, RetryPolicy,
};
use sha2::{Digest as _, Sha256};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A real filter module when `make build-wasm` ran, else a minimal valid module with a custom
/// section so each test can make its own distinct module.
fn sample_wasm(tag: &str) -> Vec<u8> {
    let built = portcullis_integration::process::workspace_root().join("dist/wasm/headers.wasm");
    let mut wasm = std::fs::read(&built).unwrap_or_else(|_| b"\0asm\x01\0\0\0".to_vec());
    // Custom section (id 0): name "t", payload `tag`. Keeps the module valid.
    let payload_len = 2 + tag.len();
    assert!(payload_len < 128 && tag.len() < 127);
    wasm.extend_from_slice(&[0, payload_len as u8, 1, b't']);
    wasm.extend_from_slice(tag.as_bytes());
    wasm
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

#[test]
fn round_trip_both_formats_with_stable_digests() {
    let reg = Registry::start().unwrap();
    let wasm = sample_wasm("round-trip");
    rt().block_on(async {
        for format in [ImageFormat::Compat, ImageFormat::Artifact] {
            let opts = PushOptions {
                format,
                ..PushOptions::default()
            };
            let r1 = format!("{}/portcullis/rt-{format}:v1", reg.host());
            let first = push_wasm(&wasm, &r1, &opts).await.unwrap();
            // A second push (another tag, another repo) of the same module gives the same digest.
            let r2 = format!("{}/other/rt-{format}:v2", reg.host());
            let second = push_wasm(&wasm, &r2, &opts).await.unwrap();
            assert_eq!(first.manifest_digest, second.manifest_digest, "{format}");
            assert_eq!(first.wasm_sha256, sha256_hex(&wasm));
            assert_eq!(first.format, format);

            // Pull by tag.
            let pulled = pull_wasm(&r1, &PullOptions::default()).await.unwrap();
            assert_eq!(pulled.wasm, wasm, "{format}");
            assert_eq!(pulled.format, format);
            assert_eq!(pulled.manifest_digest, first.manifest_digest);
            assert_eq!(pulled.wasm_sha256, sha256_hex(&wasm));

            // Pull by digest.
            let by_digest = format!(
                "{}/portcullis/rt-{format}@{}",
                reg.host(),
                first.manifest_digest
            );
            let pulled = pull_wasm(&by_digest, &PullOptions::default())
                .await
                .unwrap();
            assert_eq!(pulled.wasm, wasm);

            // Inspect sees the layout without downloading the module.
            let info = inspect(&r1, &PullOptions::default()).await.unwrap();
            assert_eq!(info.format, Some(format));
            assert_eq!(info.manifest_digest, first.manifest_digest);
            let wasm_layer = info.wasm_layer.unwrap();
            match format {
                ImageFormat::Compat => {
                    assert_eq!(info.layers.len(), 1);
                    assert_eq!(wasm_layer.media_type, image::OCI_LAYER_TAR_GZIP);
                    assert_eq!(info.config.media_type, image::OCI_CONFIG);
                }
                _ => {
                    assert_eq!(info.layers.len(), 2);
                    assert_eq!(wasm_layer.media_type, image::WASM_CONTENT_LAYER);
                    assert_eq!(wasm_layer.size, wasm.len() as u64);
                    assert_eq!(info.config.media_type, image::WASM_CONFIG);
                }
            }
        }
        // Two formats of one module are two different images.
        let c = inspect(
            &format!("{}/portcullis/rt-compat:v1", reg.host()),
            &PullOptions::default(),
        )
        .await
        .unwrap();
        let a = inspect(
            &format!("{}/portcullis/rt-artifact:v1", reg.host()),
            &PullOptions::default(),
        )
        .await
        .unwrap();
        assert_ne!(c.manifest_digest, a.manifest_digest);
    });
}

#[test]
fn pinned_digest_is_enforced() {
    let reg = Registry::start().unwrap();
    let wasm = sample_wasm("pin");
    rt().block_on(async {
        let r = format!("{}/portcullis/pin:v1", reg.host());
        let pushed = push_wasm(&wasm, &r, &PushOptions::default()).await.unwrap();
        let hex = pushed
            .manifest_digest
            .trim_start_matches("sha256:")
            .to_string();
        for pin in [hex.clone(), format!("sha256:{hex}"), hex.to_uppercase()] {
            let opts = PullOptions {
                expected_digest: Some(pin.clone()),
                ..PullOptions::default()
            };
            let pulled = pull_wasm(&r, &opts)
                .await
                .unwrap_or_else(|e| panic!("pin {pin}: {e}"));
            assert_eq!(pulled.wasm, wasm);
        }
        // The wasm's own sha256 is not the image digest: it must be rejected like any other.
        for wrong in [sha256_hex(&wasm), "0".repeat(64)] {
            let opts = PullOptions {
                expected_digest: Some(wrong.clone()),
                ..PullOptions::default()
            };
            let err = pull_wasm(&r, &opts).await.unwrap_err();
            assert!(matches!(err, OciError::DigestMismatch { .. }), "{err}");
            let msg = err.to_string();
            assert!(
                msg.contains(&wrong) && msg.contains(&hex) && msg.contains(&reg.host()),
                "{msg}"
            );
        }
        let bad = PullOptions {
            expected_digest: Some("sha256:1234".into()),
            ..PullOptions::default()
        };
        assert!(matches!(
            pull_wasm(&r, &bad).await,
            Err(OciError::InvalidDigest(_))
        ));

        // Unknown tag and unknown repository: NotFound naming the registry.
        for missing in [
            format!("{}/portcullis/pin:nope", reg.host()),
            format!("{}/nothing/here:v1", reg.host()),
        ] {
            let err = pull_wasm(&missing, &PullOptions::default())
                .await
                .unwrap_err();
            assert!(matches!(err, OciError::NotFound { .. }), "{err}");
            assert!(err.to_string().contains(&reg.host()), "{err}");
        }
    });
}

#[test]
fn basic_auth_good_and_wrong_credentials() {
    let reg = Registry::start_with_auth("alice", "correct horse").unwrap();
    let wasm = sample_wasm("auth");
    let r = format!("{}/private/auth:v1", reg.host());
    rt().block_on(async {
        let push = PushOptions {
            auth: RegistryAuth::basic("alice", "correct horse"),
            ..PushOptions::default()
        };
        let pushed = push_wasm(&wasm, &r, &push).await.unwrap();

        // Credentials from a .dockerconfigjson, as a Kubernetes pull Secret carries them.
        let cfg = reg.docker_config_json().unwrap();
        let auth = RegistryAuth::from_docker_config_json(cfg.as_bytes(), &reg.host()).unwrap();
        let opts = PullOptions {
            auth,
            expected_digest: Some(pushed.manifest_digest.clone()),
            ..PullOptions::default()
        };
        assert_eq!(pull_wasm(&r, &opts).await.unwrap().wasm, wasm);

        // Wrong password, and no credentials at all: a clear 401 naming the registry.
        for auth in [
            RegistryAuth::basic("alice", "wrong"),
            RegistryAuth::Anonymous,
        ] {
            let opts = PullOptions {
                auth: auth.clone(),
                ..PullOptions::default()
            };
            let err = pull_wasm(&r, &opts).await.unwrap_err();
            assert!(
                matches!(err, OciError::Unauthorized { status: 401, .. }),
                "{auth:?}: {err}"
            );
            let msg = err.to_string();
            assert!(msg.contains(&reg.host()) && msg.contains("401"), "{msg}");
            let push = PushOptions {
                auth,
                ..PushOptions::default()
            };
            let err = push_wasm(&wasm, &r, &push).await.unwrap_err();
            assert!(
                matches!(err, OciError::Unauthorized { status: 401, .. }),
                "{err}"
            );
        }
    });
}

#[test]
fn registry_down_fails_fast_and_clearly() {
    // A port held closed: connections are refused.
    let closed = ClosedPort::new().unwrap();
    let port = closed.port();
    let r = format!("127.0.0.1:{port}/portcullis/down:v1");
    rt().block_on(async {
        let start = Instant::now();
        let err = pull_wasm(&r, &PullOptions::default()).await.unwrap_err();
        assert!(matches!(err, OciError::Unreachable { .. }), "{err}");
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
        // Refused connections are retried a bounded number of times (default policy: 4 tries,
        // 0.2 + 0.4 + 0.8 s backoff), far below the 120 s overall bound.
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{:?}",
            start.elapsed()
        );
    });
}

#[test]
fn silent_registry_hits_the_timeout() {
    // Accepts connections, never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let r = format!("127.0.0.1:{port}/portcullis/silent:v1");
    rt().block_on(async {
        let opts = PullOptions {
            timeout: Duration::from_secs(2),
            ..PullOptions::default()
        };
        let start = Instant::now();
        let err = pull_wasm(&r, &opts).await.unwrap_err();
        assert!(matches!(err, OciError::Timeout { .. }), "{err}");
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{:?}",
            start.elapsed()
        );
    });
    drop(listener);
}

/// A reverse proxy in front of the real registry that answers 500 to the first `fail` manifest
/// requests, and counts them.
async fn flaky_proxy(upstream: String, fail: usize) -> (String, Arc<AtomicUsize>) {
    use axum::body::Body;
    use axum::http::{Request, Response, StatusCode};

    let manifest_hits = Arc::new(AtomicUsize::new(0));
    let hits = manifest_hits.clone();
    let client = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |req: Request<Body>| {
        let client = client.clone();
        let upstream = upstream.clone();
        let hits = hits.clone();
        async move {
            let path_q = req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default();
            if req.uri().path().contains("/manifests/")
                && hits.fetch_add(1, Ordering::SeqCst) < fail
            {
                return Response::builder()
                    .status(StatusCode::INTERNAL_SERVER_ERROR)
                    .body(Body::from("injected failure"))
                    .unwrap();
            }
            let mut fwd = client.request(req.method().clone(), format!("{upstream}{path_q}"));
            for (k, v) in req.headers() {
                if k != "host" {
                    fwd = fwd.header(k, v);
                }
            }
            let body = axum::body::to_bytes(req.into_body(), usize::MAX)
                .await
                .unwrap();
            let resp = fwd.body(body).send().await.unwrap();
            let mut out = Response::builder().status(resp.status().as_u16());
            for (k, v) in resp.headers() {
                out = out.header(k, v);
            }
            out.body(Body::from(resp.bytes().await.unwrap())).unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr.to_string(), manifest_hits)
}

#[test]
fn server_errors_are_retried_with_backoff() {
    let reg = Registry::start().unwrap();
    let wasm = sample_wasm("flaky");
    rt().block_on(async {
        let pushed = push_wasm(
            &wasm,
            &format!("{}/portcullis/flaky:v1", reg.host()),
            &PushOptions::default(),
        )
        .await
        .unwrap();

        // Two failures, then success: the pull succeeds on the third try.
        let (proxy, hits) = flaky_proxy(reg.url(), 2).await;
        let pulled = pull_wasm(
            &format!("{proxy}/portcullis/flaky:v1"),
            &PullOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(pulled.wasm, wasm);
        assert_eq!(pulled.manifest_digest, pushed.manifest_digest);
        assert_eq!(hits.load(Ordering::SeqCst), 3);

        // More failures than tries: the error names the registry and the status, after
        // exactly `attempts` requests.
        let (proxy, hits) = flaky_proxy(reg.url(), 100).await;
        let opts = PullOptions {
            retry: RetryPolicy {
                attempts: 3,
                initial_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_millis(200),
            },
            ..PullOptions::default()
        };
        let err = pull_wasm(&format!("{proxy}/portcullis/flaky:v1"), &opts)
            .await
            .unwrap_err();
        assert!(matches!(err, OciError::Http { status: 500, .. }), "{err}");
        assert!(
            err.to_string().contains(&proxy) && err.to_string().contains("500"),
            "{err}"
        );
        assert_eq!(hits.load(Ordering::SeqCst), 3);

        // Pushes retry too: the manifest upload fails twice, then lands.
        let (proxy, hits) = flaky_proxy(reg.url(), 2).await;
        let other = sample_wasm("flaky-push");
        let pushed = push_wasm(
            &other,
            &format!("{proxy}/portcullis/flaky:v2"),
            &PushOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 3);
        let pulled = pull_wasm(
            &format!("{}/portcullis/flaky:v2", reg.host()),
            &PullOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(pulled.wasm, other);
        assert_eq!(pulled.manifest_digest, pushed.manifest_digest);
    });
}

// ---- images built by hand from the specs, pushed with raw HTTP ----

/// Uploads one blob monolithically (POST then PUT ?digest=), per the distribution spec.
async fn raw_push_blob(client: &reqwest::Client, reg: &str, repo: &str, data: &[u8]) -> String {
    let digest = format!("sha256:{}", sha256_hex(data));
    let resp = client
        .post(format!("{reg}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202, "{:?}", resp.text().await);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let location = if location.starts_with('/') {
        format!("{reg}{location}")
    } else {
        location
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let resp = client
        .put(format!("{location}{sep}digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201, "{:?}", resp.text().await);
    digest
}

async fn raw_push_manifest(
    client: &reqwest::Client,
    reg: &str,
    repo: &str,
    tag: &str,
    media_type: &str,
    body: &[u8],
) {
    let resp = client
        .put(format!("{reg}/v2/{repo}/manifests/{tag}"))
        .header("content-type", media_type)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201, "{:?}", resp.text().await);
}

/// A tar.gz holding the given files, as Docker writes layers (directory entry included).
fn tar_gz(files: &[(&str, &[u8])]) -> (Vec<u8>, Vec<u8>) {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, *data).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    (gz.finish().unwrap(), tar)
}

/// Envoy Gateway's e2e wasm image layout: Docker schema 2 manifest, config
/// `application/vnd.docker.container.image.v1+json`, and `plugin.wasm` in the last
/// `application/vnd.docker.image.rootfs.diff.tar.gzip` layer (here after an unrelated layer).
#[test]
fn pulls_docker_v2_image_built_by_hand() {
    let reg = Registry::start().unwrap();
    let wasm = sample_wasm("docker-v2");
    rt().block_on(async {
        let http = reqwest::Client::new();
        let repo = "envoygateway/wasm-docker";
        let (base_gz, base_tar) = tar_gz(&[("etc/motd", b"hello")]);
        let (wasm_gz, wasm_tar) = tar_gz(&[("plugin.wasm", &wasm)]);
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [
                format!("sha256:{}", sha256_hex(&base_tar)),
                format!("sha256:{}", sha256_hex(&wasm_tar)),
            ]},
        })
        .to_string();
        let cfg_digest = raw_push_blob(&http, &reg.url(), repo, config.as_bytes()).await;
        let base_digest = raw_push_blob(&http, &reg.url(), repo, &base_gz).await;
        let wasm_digest = raw_push_blob(&http, &reg.url(), repo, &wasm_gz).await;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": image::DOCKER_MANIFEST_V2,
            "config": {"mediaType": image::DOCKER_CONFIG, "size": config.len(), "digest": cfg_digest},
            "layers": [
                {"mediaType": image::DOCKER_LAYER_TAR_GZIP, "size": base_gz.len(), "digest": base_digest},
                {"mediaType": image::DOCKER_LAYER_TAR_GZIP, "size": wasm_gz.len(), "digest": wasm_digest},
            ],
        })
        .to_string();
        raw_push_manifest(&http, &reg.url(), repo, "v1", image::DOCKER_MANIFEST_V2, manifest.as_bytes()).await;
        let manifest_digest = format!("sha256:{}", sha256_hex(manifest.as_bytes()));

        let r = format!("{}/{repo}:v1", reg.host());
        let opts = PullOptions {
            expected_digest: Some(manifest_digest.clone()),
            ..PullOptions::default()
        };
        let pulled = pull_wasm(&r, &opts).await.unwrap();
        assert_eq!(pulled.format, ImageFormat::Docker);
        assert_eq!(pulled.wasm, wasm);
        assert_eq!(pulled.manifest_digest, manifest_digest);

        let info = inspect(&r, &PullOptions::default()).await.unwrap();
        assert_eq!(info.manifest_media_type, image::DOCKER_MANIFEST_V2);
        assert_eq!(info.format, Some(ImageFormat::Docker));
        assert_eq!(info.wasm_layer.unwrap().digest, wasm_digest);
    });
}

/// Pushes an OCI compat image whose tar.gz layer holds `plugin` as plugin.wasm.
async fn push_raw_compat(
    reg: &Registry,
    repo: &str,
    plugin_gz: &[u8],
    plugin_tar_digest: &str,
) -> String {
    let http = reqwest::Client::new();
    let config = serde_json::json!({
        "architecture": "wasm", "os": "wasi",
        "rootfs": {"type": "layers", "diff_ids": [plugin_tar_digest]},
    })
    .to_string();
    let cfg = raw_push_blob(&http, &reg.url(), repo, config.as_bytes()).await;
    let layer = raw_push_blob(&http, &reg.url(), repo, plugin_gz).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": image::OCI_MANIFEST,
        "config": {"mediaType": image::OCI_CONFIG, "size": config.len(), "digest": cfg},
        "layers": [{"mediaType": image::OCI_LAYER_TAR_GZIP, "size": plugin_gz.len(), "digest": layer}],
    })
    .to_string();
    raw_push_manifest(
        &http,
        &reg.url(),
        repo,
        "v1",
        image::OCI_MANIFEST,
        manifest.as_bytes(),
    )
    .await;
    format!("{}/{repo}:v1", reg.host())
}

#[test]
fn rejects_bad_magic_and_oversized_modules() {
    let reg = Registry::start().unwrap();
    rt().block_on(async {
        // Not wasm.
        let (gz, tar) = tar_gz(&[("plugin.wasm", b"#!/bin/sh\necho not wasm\n")]);
        let r = push_raw_compat(
            &reg,
            "bad/magic",
            &gz,
            &format!("sha256:{}", sha256_hex(&tar)),
        )
        .await;
        let err = pull_wasm(&r, &PullOptions::default()).await.unwrap_err();
        assert!(matches!(err, OciError::NotWasm { .. }), "{err}");
        assert!(err.to_string().contains("\\0asm"), "{err}");

        // 256 MiB + 1 byte of module: highly compressible, so the upload stays small, but the
        // pull must refuse it while decompressing.
        let size = portcullis_oci::MAX_WASM_SIZE + 1;
        let mut header = tar::Header::new_ustar();
        header.set_size(size);
        header.set_mode(0o644);
        let content = (&b"\0asm\x01\0\0\0"[..])
            .chain(std::io::repeat(0))
            .take(size);
        let mut hasher = Sha256::new();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        {
            // Tee the tar stream into the gzip encoder and the diff_id hasher.
            struct Tee<'a>(&'a mut flate2::write::GzEncoder<Vec<u8>>, &'a mut Sha256);
            impl std::io::Write for Tee<'_> {
                fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                    self.1.update(b);
                    self.0.write_all(b)?;
                    Ok(b.len())
                }
                fn flush(&mut self) -> std::io::Result<()> {
                    self.0.flush()
                }
            }
            let mut b = tar::Builder::new(Tee(&mut gz, &mut hasher));
            b.append_data(&mut header, "plugin.wasm", content).unwrap();
            b.finish().unwrap();
        }
        let gz = gz.finish().unwrap();
        assert!(gz.len() < 2 << 20, "compressed to {} bytes", gz.len());
        let r = push_raw_compat(
            &reg,
            "too/large",
            &gz,
            &format!("sha256:{}", hex::encode(hasher.finalize())),
        )
        .await;
        let err = pull_wasm(&r, &PullOptions::default()).await.unwrap_err();
        assert!(matches!(err, OciError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("256 MiB"), "{err}");

        // An artifact whose wasm layer is declared over the limit is refused before download.
        let http = reqwest::Client::new();
        let small = b"\0asm\x01\0\0\0";
        let runtime = br#"{"type":"envoy_proxy"}"#;
        let cfg = raw_push_blob(&http, &reg.url(), "big/artifact", runtime).await;
        let wasm_digest = raw_push_blob(&http, &reg.url(), "big/artifact", small).await;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": image::OCI_MANIFEST,
            "config": {"mediaType": image::WASM_CONFIG, "size": runtime.len(), "digest": cfg},
            "layers": [
                {"mediaType": image::WASM_CONTENT_LAYER, "size": portcullis_oci::MAX_WASM_SIZE + 1, "digest": wasm_digest},
                {"mediaType": image::WASM_CONFIG, "size": runtime.len(), "digest": cfg},
            ],
        })
        .to_string();
        raw_push_manifest(&http, &reg.url(), "big/artifact", "v1", image::OCI_MANIFEST, manifest.as_bytes()).await;
        let err = pull_wasm(&format!("{}/big/artifact:v1", reg.host()), &PullOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, OciError::TooLarge { size, .. } if size == portcullis_oci::MAX_WASM_SIZE + 1), "{err}");

        // Pushing such a module is refused before any upload.
        let err = push_wasm(
            b"not wasm at all",
            &format!("{}/x/y:v1", reg.host()),
            &PushOptions::default(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, OciError::NotWasm { .. }), "{err}");
    });
}

/// The `portcullis oci` subcommands, parsed from argv as the binary does, run in-process.
#[test]
fn cli_push_pull_inspect() {
    use clap::Parser as _;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: portcullis_oci::cli::OciCommand,
    }
    async fn run(args: &[&str]) -> anyhow::Result<()> {
        let cli = Cli::try_parse_from(std::iter::once("oci").chain(args.iter().copied()))?;
        portcullis_oci::cli::run(portcullis_oci::cli::OciArgs {
            command: cli.command,
        })
        .await
    }

    let reg = Registry::start_with_auth("carol", "pw-for-cli").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wasm = sample_wasm("cli");
    let input = dir.path().join("in.wasm");
    std::fs::write(&input, &wasm).unwrap();
    let docker_config = dir.path().join("config.json");
    std::fs::write(&docker_config, reg.docker_config_json().unwrap()).unwrap();
    let cfg = docker_config.to_str().unwrap();
    let r = format!("{}/cli/filter:v1", reg.host());
    let out = dir.path().join("out.wasm");
    let out_s = out.to_str().unwrap();
    let expected = image::build_image(&wasm, ImageFormat::Artifact)
        .unwrap()
        .manifest_digest;

    rt().block_on(async {
        run(&[
            "push",
            input.to_str().unwrap(),
            &r,
            "--format",
            "artifact",
            "--docker-config",
            cfg,
            "-q",
        ])
        .await
        .unwrap();
        run(&["inspect", &r, "--docker-config", cfg]).await.unwrap();
        run(&[
            "pull",
            &r,
            "-o",
            out_s,
            "--sha256",
            &expected,
            "--docker-config",
            cfg,
        ])
        .await
        .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), wasm);

        // A wrong pin fails and leaves the previous output untouched.
        std::fs::remove_file(&out).unwrap();
        let err = run(&[
            "pull",
            &r,
            "-o",
            out_s,
            "--sha256",
            &"ab".repeat(32),
            "--docker-config",
            cfg,
        ])
        .await
        .unwrap_err();
        assert!(format!("{err:#}").contains("digest mismatch"), "{err:#}");
        assert!(!out.exists());

        // Without credentials (an empty Docker config): 401 naming the registry.
        let empty = dir.path().join("empty.json");
        std::fs::write(&empty, "{}").unwrap();
        let err = run(&["inspect", &r, "--docker-config", empty.to_str().unwrap()])
            .await
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("401") && msg.contains(&reg.host()), "{msg}");
        // Explicit --username/--password win over the config file.
        run(&[
            "inspect",
            &r,
            "--username",
            "carol",
            "--password",
            "pw-for-cli",
        ])
        .await
        .unwrap();
    });
}

/// HTTPS with a private CA: `ca_file` makes it trusted; without it the TLS error names the registry.
#[test]
fn https_registry_with_custom_ca() {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "portcullis test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
    let reg = Registry::start_with_tls(&leaf.pem(), &leaf_key.serialize_pem()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();

    let wasm = sample_wasm("tls");
    let r = format!("{}/secure/filter:v1", reg.host());
    rt().block_on(async {
        let push = PushOptions {
            ca_file: Some(ca_file.clone()),
            ..PushOptions::default()
        };
        let pushed = push_wasm(&wasm, &r, &push).await.unwrap();
        let pull = PullOptions {
            ca_file: Some(ca_file.clone()),
            expected_digest: Some(pushed.manifest_digest),
            ..PullOptions::default()
        };
        assert_eq!(pull_wasm(&r, &pull).await.unwrap().wasm, wasm);

        // HTTPS without our CA: refused, with the registry named and the reason kept.
        let untrusted = PullOptions {
            insecure: Some(false),
            ..PullOptions::default()
        };
        let err = pull_wasm(&r, &untrusted).await.unwrap_err();
        assert!(matches!(err, OciError::Tls { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&reg.host()), "{msg}");
        assert!(
            msg.to_lowercase().contains("certificate") || msg.contains("UnknownIssuer"),
            "{msg}"
        );

        // A CA file that is not PEM is reported as such, not silently ignored.
        let bogus = dir.path().join("bogus.pem");
        std::fs::write(&bogus, "not a certificate").unwrap();
        let opts = PullOptions {
            ca_file: Some(bogus),
            ..PullOptions::default()
        };
        let err = pull_wasm(&r, &opts).await.unwrap_err();
        assert!(matches!(err, OciError::CaFile { .. }), "{err}");
        assert!(err.to_string().contains("bogus.pem"), "{err}");
        let missing = PullOptions {
            ca_file: Some(dir.path().join("missing.pem")),
            ..PullOptions::default()
        };
        assert!(matches!(
            pull_wasm(&r, &missing).await,
            Err(OciError::CaFile { .. })
        ));
    });
}

/// What `docker buildx` pushes: an OCI index with the image and an attestation manifest
/// (`unknown/unknown`). Pull picks the image; a pin may name the index or the image.
#[test]
fn pulls_through_an_image_index() {
    let reg = Registry::start().unwrap();
    let wasm = sample_wasm("index");
    let other = sample_wasm("attestation-stand-in");
    rt().block_on(async {
        let repo = "buildx/filter";
        let img = push_wasm(
            &wasm,
            &format!("{}/{repo}:img", reg.host()),
            &PushOptions::default(),
        )
        .await
        .unwrap();
        let att = push_wasm(
            &other,
            &format!("{}/{repo}:att", reg.host()),
            &PushOptions::default(),
        )
        .await
        .unwrap();
        // Index entries carry the size of the manifest they point at.
        let img_len = image::build_image(&wasm, ImageFormat::Compat)
            .unwrap()
            .manifest
            .len();
        let att_len = image::build_image(&other, ImageFormat::Compat)
            .unwrap()
            .manifest
            .len();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": image::OCI_INDEX,
            "manifests": [
                {"mediaType": image::OCI_MANIFEST, "digest": att.manifest_digest, "size": att_len,
                 "platform": {"architecture": "unknown", "os": "unknown"}},
                {"mediaType": image::OCI_MANIFEST, "digest": img.manifest_digest, "size": img_len,
                 "platform": {"architecture": "wasm", "os": "wasi"}},
            ],
        })
        .to_string();
        let http = reqwest::Client::new();
        raw_push_manifest(
            &http,
            &reg.url(),
            repo,
            "v1",
            image::OCI_INDEX,
            index.as_bytes(),
        )
        .await;
        let index_digest = format!("sha256:{}", sha256_hex(index.as_bytes()));

        let r = format!("{}/{repo}:v1", reg.host());
        for pin in [
            None,
            Some(index_digest.clone()),
            Some(img.manifest_digest.clone()),
        ] {
            let opts = PullOptions {
                expected_digest: pin.clone(),
                ..PullOptions::default()
            };
            let pulled = pull_wasm(&r, &opts)
                .await
                .unwrap_or_else(|e| panic!("pin {pin:?}: {e}"));
            assert_eq!(pulled.wasm, wasm);
            assert_eq!(pulled.manifest_digest, img.manifest_digest);
        }
        let opts = PullOptions {
            expected_digest: Some(att.manifest_digest.clone()),
            ..PullOptions::default()
        };
        assert!(matches!(
            pull_wasm(&r, &opts).await,
            Err(OciError::DigestMismatch { .. })
        ));
        let info = inspect(&r, &PullOptions::default()).await.unwrap();
        assert_eq!(info.index_digest.as_deref(), Some(index_digest.as_str()));
        assert_eq!(info.manifest_digest, img.manifest_digest);
    });
}

/// The published compat image, read back with raw HTTP and GNU tar/gzip (not our code): the
/// manifest and config are what the spec says, and the layer is a plain tar.gz holding
/// `plugin.wasm` with fixed metadata.
#[test]
fn compat_image_reads_with_gnu_tar() {
    let reg = Registry::start().unwrap();
    let wasm = sample_wasm("gnu-tar");
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let repo = "portcullis/gnutar";
        let pushed = push_wasm(
            &wasm,
            &format!("{}/{repo}:v1", reg.host()),
            &PushOptions::default(),
        )
        .await
        .unwrap();
        let http = reqwest::Client::new();
        let resp = http
            .get(format!("{}/v2/{repo}/manifests/v1", reg.url()))
            .header("accept", image::OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["content-type"], image::OCI_MANIFEST);
        assert_eq!(
            resp.headers()["docker-content-digest"],
            pushed.manifest_digest.as_str()
        );
        let manifest: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(manifest["schemaVersion"], 2);
        assert_eq!(manifest["config"]["mediaType"], image::OCI_CONFIG);
        assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
        assert_eq!(
            manifest["layers"][0]["mediaType"],
            image::OCI_LAYER_TAR_GZIP
        );
        assert_eq!(
            manifest["annotations"]["module.wasm.image/variant"],
            "compat"
        );

        let blob = |d: &serde_json::Value| {
            let url = format!("{}/v2/{repo}/blobs/{}", reg.url(), d.as_str().unwrap());
            let http = http.clone();
            async move { http.get(url).send().await.unwrap().bytes().await.unwrap() }
        };
        let layer = blob(&manifest["layers"][0]["digest"]).await;
        let config: serde_json::Value =
            serde_json::from_slice(&blob(&manifest["config"]["digest"]).await).unwrap();
        assert!(config.get("created").is_none(), "no timestamps: {config}");
        let layer_path = dir.path().join("layer.tar.gz");
        std::fs::write(&layer_path, &layer).unwrap();

        let run = |args: &[&str]| {
            let out = std::process::Command::new(args[0])
                .args(&args[1..])
                .env("TZ", "UTC")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        let path = layer_path.to_str().unwrap();
        let listing = String::from_utf8(run(&[
            "tar",
            "--numeric-owner",
            "--full-time",
            "-tvzf",
            path,
        ]))
        .unwrap();
        let fields: Vec<&str> = listing.split_whitespace().collect();
        // -rw-r--r-- 0/0 SIZE 1970-01-01 00:00:00 plugin.wasm
        assert_eq!(fields.len(), 6, "{listing}");
        assert_eq!(fields[0], "-rw-r--r--", "{listing}");
        assert_eq!(fields[1], "0/0", "{listing}");
        assert_eq!(fields[2], wasm.len().to_string(), "{listing}");
        assert!(fields[3].starts_with("1970-01-01"), "{listing}");
        assert_eq!(fields[5], "plugin.wasm", "{listing}");
        assert_eq!(run(&["tar", "-xzOf", path, "plugin.wasm"]), wasm);
        // diff_ids: sha256 of the uncompressed tar, as gzip itself decompresses it.
        let tar = run(&["gzip", "-dc", path]);
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            format!("sha256:{}", sha256_hex(&tar))
        );
    });
}
