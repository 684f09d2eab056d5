//! Registry I/O on top of `oci-client`: client setup (plain HTTP, CA file, timeouts), retries
//! with backoff, error mapping, and the pull/push/inspect flows.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use indicatif::ProgressBar;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWrite;

use crate::image::{self, Descriptor, Manifest, ParsedManifest};
use crate::{
    progress, ImageInfo, OciError, PullOptions, PulledWasm, PushOptions, PushedImage, RegistryAuth,
    RetryPolicy, MAX_WASM_SIZE,
};

/// Connection settings shared by pulls, pushes and inspects.
struct Conn<'a> {
    auth: &'a RegistryAuth,
    insecure: Option<bool>,
    ca_file: Option<&'a PathBuf>,
    timeout: Duration,
    retry: RetryPolicy,
}

/// One registry + repository, with a configured client.
struct Session {
    client: Client,
    auth: oci_client::secrets::RegistryAuth,
    reference: Reference,
    registry: String,
    retry: RetryPolicy,
    timeout: Duration,
}

fn parse_reference(reference: &str) -> Result<Reference, OciError> {
    // Istio writes image URLs as `oci://registry/repo:tag`.
    let trimmed = reference.trim();
    trimmed
        .strip_prefix("oci://")
        .unwrap_or(trimmed)
        .parse::<Reference>()
        .map_err(|e| OciError::InvalidReference {
            reference: reference.to_string(),
            reason: e.to_string(),
        })
}

/// The registry host (`host[:port]`) a reference points at, as credentials are looked up:
/// `ghcr.io/org/f:1` gives `ghcr.io`, `org/f:1` gives `index.docker.io`, `oci://` is accepted.
pub fn registry_host(reference: &str) -> Result<String, OciError> {
    Ok(parse_reference(reference)?.resolve_registry().to_string())
}

fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Session {
    fn new(reference: &str, conn: &Conn<'_>) -> Result<Self, OciError> {
        let reference = parse_reference(reference)?;
        let registry = reference.resolve_registry().to_string();
        let plain_http = conn
            .insecure
            .unwrap_or_else(|| conn.ca_file.is_none() && is_loopback(&registry));
        let mut extra_root_certificates = Vec::new();
        if let Some(path) = conn.ca_file {
            let data = std::fs::read(path).map_err(|source| OciError::CaFile {
                path: path.clone(),
                source,
            })?;
            // reqwest accepts a PEM file without certificates; say so instead of failing later
            // with an unknown-issuer TLS error.
            if !data
                .windows(b"-----BEGIN CERTIFICATE-----".len())
                .any(|w| w == b"-----BEGIN CERTIFICATE-----")
            {
                return Err(OciError::CaFile {
                    path: path.clone(),
                    source: io::Error::other("it holds no PEM certificate"),
                });
            }
            extra_root_certificates.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            });
        }
        let config = ClientConfig {
            protocol: if plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            extra_root_certificates,
            connect_timeout: Some(conn.timeout.min(Duration::from_secs(5))),
            read_timeout: Some(conn.timeout),
            ..ClientConfig::default()
        };
        // `Client::new` silently falls back to defaults on a bad config (e.g. a CA file that is
        // not PEM); `try_from` lets us report it.
        let client = Client::try_from(config).map_err(|e| {
            OciError::Invalid(format!("cannot set up the HTTP client for {registry}: {e}"))
        })?;
        let auth = match conn.auth {
            RegistryAuth::Anonymous => oci_client::secrets::RegistryAuth::Anonymous,
            RegistryAuth::Basic { username, password } => {
                oci_client::secrets::RegistryAuth::Basic(username.clone(), password.clone())
            }
            RegistryAuth::Bearer(t) => oci_client::secrets::RegistryAuth::Bearer(t.clone()),
        };
        tracing::debug!(%registry, plain_http, auth = ?conn.auth, "registry session");
        Ok(Session {
            client,
            auth,
            reference,
            registry,
            retry: conn.retry,
            timeout: conn.timeout,
        })
    }

    fn name(&self) -> String {
        self.reference.whole()
    }

    /// Maps an `oci-client` error to ours, naming the registry and the HTTP status.
    fn map_err(&self, err: OciDistributionError, what: &str) -> OciError {
        let registry = self.registry.clone();
        let reference = self.name();
        let by_status = |status: u16, url: String, message: String| match status {
            401 | 403 => OciError::Unauthorized {
                registry: registry.clone(),
                reference: reference.clone(),
                status,
            },
            404 => OciError::NotFound {
                registry: registry.clone(),
                what: what.to_string(),
            },
            _ => OciError::Http {
                registry: registry.clone(),
                status,
                url,
                message: message.trim().chars().take(300).collect(),
            },
        };
        match err {
            OciDistributionError::UnauthorizedError { url } => by_status(401, url, String::new()),
            OciDistributionError::AuthenticationFailure(msg) => {
                tracing::debug!(%registry, %msg, "token server refused the credentials");
                by_status(401, String::new(), msg)
            }
            OciDistributionError::ServerError { code, url, message } => {
                by_status(code, url, message)
            }
            OciDistributionError::RegistryError { envelope, url } => {
                let status = envelope
                    .errors
                    .iter()
                    .map(|e| match e.code {
                        OciErrorCode::Unauthorized => 401,
                        OciErrorCode::Denied => 403,
                        OciErrorCode::BlobUnknown
                        | OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound => 404,
                        OciErrorCode::Toomanyrequests => 429,
                        _ => 400,
                    })
                    .next()
                    .unwrap_or(400);
                by_status(status, url, envelope.to_string())
            }
            OciDistributionError::ImageManifestNotFoundError(_) => {
                by_status(404, String::new(), String::new())
            }
            OciDistributionError::RequestError(e) => self.map_reqwest(&e, what),
            OciDistributionError::DigestError(e) => OciError::Registry {
                registry,
                message: format!("{what}: content does not match its digest: {e}"),
            },
            other => {
                // IO errors from our sink carry our own error; look through the chain.
                let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&other);
                while let Some(s) = source {
                    if let Some(r) = s.downcast_ref::<reqwest::Error>() {
                        return self.map_reqwest(r, what);
                    }
                    source = s.source();
                }
                OciError::Registry {
                    registry,
                    message: format!("{what}: {other}"),
                }
            }
        }
    }

    fn map_reqwest(&self, e: &reqwest::Error, what: &str) -> OciError {
        if e.is_timeout() {
            return OciError::Timeout {
                registry: self.registry.clone(),
                after: self.timeout,
            };
        }
        if let Some(status) = e.status() {
            return self.map_err(
                OciDistributionError::ServerError {
                    code: status.as_u16(),
                    url: e.url().map(|u| u.to_string()).unwrap_or_default(),
                    message: String::new(),
                },
                what,
            );
        }
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            detail = format!("{detail}: {s}");
            source = s.source();
        }
        // A certificate problem will not go away on retry; name it as such.
        if detail.contains("certificate") {
            return OciError::Tls {
                registry: self.registry.clone(),
                detail,
            };
        }
        if e.is_connect() {
            OciError::Unreachable {
                registry: self.registry.clone(),
                detail,
            }
        } else {
            OciError::Registry {
                registry: self.registry.clone(),
                message: format!("{what}: {detail}"),
            }
        }
    }

    /// Runs `op` with retries on transient errors, exponential backoff between tries.
    async fn retry<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, OciError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OciError>>,
    {
        let attempts = self.retry.attempts.max(1);
        let mut delay = self.retry.initial_backoff;
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() && attempt < attempts => {
                    tracing::warn!(registry = %self.registry, %what, attempt, error = %e, ?delay, "retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.retry.max_backoff);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Bounds a whole operation by the configured timeout.
    async fn bounded<T>(
        &self,
        fut: impl Future<Output = Result<T, OciError>>,
    ) -> Result<T, OciError> {
        // Blob calls only authenticate when the credentials are already in the client's store.
        self.client
            .store_auth_if_needed(&self.registry, &self.auth)
            .await;
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(OciError::Timeout {
                registry: self.registry.clone(),
                after: self.timeout,
            }),
        }
    }

    async fn manifest(&self, reference: &Reference) -> Result<(Vec<u8>, String), OciError> {
        let what = format!("manifest {}", reference.whole());
        self.retry(&what, || async {
            let (body, _) = self
                .client
                .pull_manifest_raw(reference, &self.auth, image::ACCEPTED_MANIFESTS)
                .await
                .map_err(|e| self.map_err(e, &what))?;
            // Our own digest of the exact bytes: this is what pins compare against.
            let digest = image::sha256_digest(&body);
            Ok((body.to_vec(), digest))
        })
        .await
    }

    /// Resolves the reference to an image manifest, following an index to one image.
    async fn resolve(&self) -> Result<Resolved, OciError> {
        let name = self.name();
        let (body, digest) = self.manifest(&self.reference).await?;
        match image::parse_manifest(&body, &name)? {
            ParsedManifest::Image(manifest) => Ok(Resolved {
                manifest,
                digest,
                index_digest: None,
            }),
            ParsedManifest::Index(index) => {
                let child = image::pick_from_index(&index, &name)?;
                let child_ref = self.reference.clone_with_digest(child.clone());
                let (body, child_digest) = self.manifest(&child_ref).await?;
                if child_digest != child {
                    return Err(OciError::DigestMismatch {
                        registry: self.registry.clone(),
                        reference: child_ref.whole(),
                        expected: child.trim_start_matches("sha256:").to_string(),
                        actual: child_digest.trim_start_matches("sha256:").to_string(),
                    });
                }
                match image::parse_manifest(&body, &name)? {
                    ParsedManifest::Image(manifest) => Ok(Resolved {
                        manifest,
                        digest: child_digest,
                        index_digest: Some(digest),
                    }),
                    ParsedManifest::Index(_) => Err(OciError::UnsupportedImage {
                        reference: name,
                        reason: "nested image index".into(),
                    }),
                }
            }
        }
    }

    /// Uploads one blob in chunks, advancing `bar` as chunks are handed to the client; falls
    /// back to oci-client's monolithic-capable upload if the registry rejects chunked uploads.
    async fn push_blob(
        &self,
        data: bytes::Bytes,
        digest: &str,
        bar: &ProgressBar,
    ) -> Result<(), OciError> {
        const CHUNK: usize = 1 << 20;
        let what = format!("blob {digest}");
        let pieces: Vec<bytes::Bytes> = (0..data.len())
            .step_by(CHUNK)
            .map(|start| data.slice(start..(start + CHUNK).min(data.len())))
            .collect();
        let progress = bar.clone();
        let stream = futures_util::stream::iter(pieces.into_iter().map(move |piece| {
            progress.inc(piece.len() as u64);
            Ok(piece)
        }));
        let size = Some(data.len() as u64);
        match self
            .client
            .push_blob_stream(&self.reference, stream, digest, size)
            .await
        {
            Ok(_) => Ok(()),
            Err(OciDistributionError::SpecViolationError(violation)) => {
                tracing::debug!(%violation, "chunked upload refused; uploading in one request");
                self.client
                    .push_blob(&self.reference, data.clone(), digest)
                    .await
                    .map(|_| bar.set_position(bar.position().max(data.len() as u64)))
                    .map_err(|e| self.map_err(e, &what))
            }
            Err(e) => Err(self.map_err(e, &what)),
        }
    }

    async fn blob(&self, layer: &Descriptor, bar: &ProgressBar) -> Result<Vec<u8>, OciError> {
        let what = format!("blob {}", layer.digest);
        let oci_layer = oci_client::manifest::OciDescriptor {
            media_type: layer.media_type.clone(),
            digest: layer.digest.clone(),
            size: i64::try_from(layer.size).unwrap_or(i64::MAX),
            ..Default::default()
        };
        self.retry(&what, || async {
            bar.set_position(0);
            let mut sink = LimitedSink {
                buf: Vec::with_capacity(
                    usize::try_from(layer.size.min(MAX_WASM_SIZE)).unwrap_or(0),
                ),
                limit: MAX_WASM_SIZE,
                bar,
                exceeded: false,
                exceeded_at: 0,
            };
            let res = self
                .client
                .pull_blob(&self.reference, &oci_layer, &mut sink)
                .await;
            if sink.exceeded {
                return Err(OciError::TooLarge {
                    what: format!("{} layer {}", self.name(), layer.digest),
                    size: sink.exceeded_at,
                    limit: MAX_WASM_SIZE,
                });
            }
            res.map_err(|e| self.map_err(e, &what))?;
            Ok(sink.buf)
        })
        .await
    }
}

struct Resolved {
    manifest: Manifest,
    digest: String,
    index_digest: Option<String>,
}

/// Collects a blob in memory, failing once it passes `limit` bytes, and drives a progress bar.
struct LimitedSink<'a> {
    buf: Vec<u8>,
    limit: u64,
    bar: &'a ProgressBar,
    exceeded: bool,
    /// How many bytes the blob had reached when it passed the limit.
    exceeded_at: u64,
}

impl AsyncWrite for LimitedSink<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if (self.buf.len() + data.len()) as u64 > self.limit {
            self.exceeded = true;
            self.exceeded_at = (self.buf.len() + data.len()) as u64;
            return Poll::Ready(Err(io::Error::other("blob is over the size limit")));
        }
        self.buf.extend_from_slice(data);
        self.bar.inc(data.len() as u64);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn check_pin(
    expected: Option<&str>,
    resolved: &Resolved,
    session: &Session,
) -> Result<(), OciError> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let expected = image::normalize_digest(expected)?;
    let actual = resolved.digest.trim_start_matches("sha256:");
    let index = resolved
        .index_digest
        .as_deref()
        .map(|d| d.trim_start_matches("sha256:"));
    if actual == expected || index == Some(expected.as_str()) {
        return Ok(());
    }
    Err(OciError::DigestMismatch {
        registry: session.registry.clone(),
        reference: session.name(),
        expected,
        actual: actual.to_string(),
    })
}

/// Pulls the wasm module from `reference` (`registry/repo:tag` or `registry/repo@sha256:...`)
/// in any layout Envoy Gateway reads, and verifies it: pinned manifest digest, blob digests,
/// size (≤ 256 MiB) and the `\0asm` magic.
pub async fn pull_wasm(reference: &str, opts: &PullOptions) -> Result<PulledWasm, OciError> {
    let conn = Conn {
        auth: &opts.auth,
        insecure: opts.insecure,
        ca_file: opts.ca_file.as_ref(),
        timeout: opts.timeout,
        retry: opts.retry,
    };
    if let Some(d) = &opts.expected_digest {
        image::normalize_digest(d)?;
    }
    let session = Session::new(reference, &conn)?;
    session
        .bounded(async {
            let resolved = session.resolve().await?;
            check_pin(opts.expected_digest.as_deref(), &resolved, &session)?;
            let name = session.name();
            let loc = image::locate_wasm(&resolved.manifest, &name)?;
            if loc.layer.size > MAX_WASM_SIZE {
                return Err(OciError::TooLarge {
                    what: name,
                    size: loc.layer.size,
                    limit: MAX_WASM_SIZE,
                });
            }
            let bar = progress::bar(opts.progress, loc.layer.size, &format!("pull {name}"));
            let blob = session.blob(&loc.layer, &bar).await;
            bar.finish_and_clear();
            let wasm = image::extract_wasm(loc.format, blob?, &name)?;
            tracing::info!(reference = %name, digest = %resolved.digest, format = %loc.format, bytes = wasm.len(), "pulled wasm");
            Ok(PulledWasm {
                wasm_sha256: hex::encode(Sha256::digest(&wasm)),
                wasm,
                manifest_digest: resolved.digest,
                format: loc.format,
            })
        })
        .await
}

/// Packages `wasm` reproducibly (see [`crate::build_image`]) and pushes it to `reference`
/// (`registry/repo:tag`; no tag means `latest`). Blobs already in the registry are skipped.
pub async fn push_wasm(
    wasm: &[u8],
    reference: &str,
    opts: &PushOptions,
) -> Result<PushedImage, OciError> {
    let built = image::build_image(wasm, opts.format)?;
    let conn = Conn {
        auth: &opts.auth,
        insecure: opts.insecure,
        ca_file: opts.ca_file.as_ref(),
        timeout: opts.timeout,
        retry: opts.retry,
    };
    let session = Session::new(reference, &conn)?;
    if session.reference.digest().is_some() {
        return Err(OciError::InvalidReference {
            reference: reference.to_string(),
            reason: "push needs a tag, not a digest".into(),
        });
    }
    let name = session.name();
    session
        .bounded(async {
            let total: u64 = built.blobs.iter().map(|b| b.data.len() as u64).sum();
            let bar = progress::bar(opts.progress, total, &format!("push {name}"));
            for blob in &built.blobs {
                let digest = &blob.descriptor.digest;
                let what = format!("blob {digest}");
                let exists = session
                    .retry(&what, || async {
                        session
                            .client
                            .blob_exists(&session.reference, digest)
                            .await
                            .map_err(|e| session.map_err(e, &what))
                    })
                    .await;
                // A registry that refuses HEAD for anonymous users still gets the upload.
                if matches!(exists, Ok(true)) {
                    tracing::debug!(%digest, "blob already present");
                    bar.inc(blob.data.len() as u64);
                    continue;
                }
                if let Err(e @ (OciError::Unreachable { .. } | OciError::Timeout { .. })) = exists {
                    return Err(e);
                }
                let data = bytes::Bytes::from(blob.data.clone());
                let done_before = bar.position();
                session
                    .retry(&what, || async {
                        bar.set_position(done_before);
                        session.push_blob(data.clone(), digest, &bar).await
                    })
                    .await?;
            }
            bar.finish_and_clear();
            let content_type = http::HeaderValue::from_static(image::OCI_MANIFEST);
            let manifest = bytes::Bytes::from(built.manifest.clone());
            let what = format!("manifest {name}");
            session
                .retry(&what, || async {
                    session
                        .client
                        .push_manifest_raw(&session.reference, manifest.clone(), content_type.clone())
                        .await
                        .map_err(|e| session.map_err(e, &what))
                })
                .await?;
            tracing::info!(reference = %name, digest = %built.manifest_digest, format = %built.format, "pushed wasm image");
            Ok(PushedImage {
                reference: name.clone(),
                manifest_digest: built.manifest_digest.clone(),
                wasm_sha256: built.wasm_sha256.clone(),
                format: built.format,
            })
        })
        .await
}

/// Reads the manifest (and, for an index, the chosen image's) without downloading layers.
/// `opts.expected_digest`, if set, is checked as in [`pull_wasm`].
pub async fn inspect(reference: &str, opts: &PullOptions) -> Result<ImageInfo, OciError> {
    let conn = Conn {
        auth: &opts.auth,
        insecure: opts.insecure,
        ca_file: opts.ca_file.as_ref(),
        timeout: opts.timeout,
        retry: opts.retry,
    };
    let session = Session::new(reference, &conn)?;
    session
        .bounded(async {
            let resolved = session.resolve().await?;
            check_pin(opts.expected_digest.as_deref(), &resolved, &session)?;
            let name = session.name();
            let (format, wasm_layer, format_error) =
                match image::locate_wasm(&resolved.manifest, &name) {
                    Ok(loc) => (Some(loc.format), Some(loc.layer), None),
                    Err(e) => (None, None, Some(e.to_string())),
                };
            let m = resolved.manifest;
            Ok(ImageInfo {
                reference: name,
                registry: session.registry.clone(),
                manifest_digest: resolved.digest,
                index_digest: resolved.index_digest,
                manifest_media_type: m
                    .media_type
                    .clone()
                    .unwrap_or_else(|| image::OCI_MANIFEST.to_string()),
                format,
                format_error,
                config: m.config,
                layers: m.layers,
                wasm_layer,
            })
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_detection() {
        for r in [
            "127.0.0.1:5000",
            "localhost:5000",
            "localhost",
            "[::1]:5000",
            "127.0.0.2",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in [
            "ghcr.io",
            "10.0.0.1:5000",
            "localhost.example.com",
            "index.docker.io",
        ] {
            assert!(!is_loopback(r), "{r}");
        }
    }

    #[test]
    fn registry_host_resolves_docker_hub_and_oci_scheme() {
        assert_eq!(
            registry_host("oci://127.0.0.1:5000/a/b:1").unwrap(),
            "127.0.0.1:5000"
        );
        assert!(registry_host("ghcr.io/org/f@sha256:").is_err());
        assert_eq!(registry_host("org/filter:1").unwrap(), "index.docker.io");
        assert_eq!(registry_host("ghcr.io/org/filter").unwrap(), "ghcr.io");
    }

    #[test]
    fn bad_reference_is_reported() {
        let err = parse_reference("UPPER/Case:tag").unwrap_err();
        assert!(matches!(err, OciError::InvalidReference { .. }), "{err}");
    }
}
