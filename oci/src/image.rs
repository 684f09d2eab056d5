//! Pure image layout: building reproducible images from a .wasm, and reading the wasm back out
//! of every layout Envoy Gateway (and Istio) accept. No I/O here.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{ImageFormat, OciError, MAX_WASM_SIZE};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const WASM_CONFIG: &str = "application/vnd.module.wasm.config.v1+json";
pub const WASM_CONTENT_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";

/// The manifest media types we ask registries for.
pub const ACCEPTED_MANIFESTS: &[&str] = &[
    OCI_MANIFEST,
    DOCKER_MANIFEST_V2,
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
];

/// The file name inside tar layers, per the "compat" wasm image spec.
pub const PLUGIN_WASM: &str = "plugin.wasm";
const WASM_MAGIC: &[u8; 4] = b"\0asm";
const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Normalises a user-supplied digest (`sha256:HEX` or `HEX`) to lowercase hex.
pub fn normalize_digest(digest: &str) -> Result<String, OciError> {
    let d = digest.trim();
    let hex_part = d.strip_prefix("sha256:").unwrap_or(d);
    if hex_part.len() == 64 && hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex_part.to_ascii_lowercase())
    } else {
        Err(OciError::InvalidDigest(digest.to_string()))
    }
}

/// Checks size and `\0asm` magic; `what` names the module in errors.
pub fn check_wasm(wasm: &[u8], what: &str) -> Result<(), OciError> {
    if wasm.len() as u64 > MAX_WASM_SIZE {
        return Err(OciError::TooLarge {
            what: what.to_string(),
            size: wasm.len() as u64,
            limit: MAX_WASM_SIZE,
        });
    }
    if !wasm.starts_with(WASM_MAGIC) {
        return Err(OciError::NotWasm {
            what: what.to_string(),
        });
    }
    Ok(())
}

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image manifest (OCI or Docker schema 2: same shape).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image index / Docker manifest list (only what we need to pick an entry).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    #[serde(default)]
    pub manifests: Vec<IndexEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexEntry {
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
}

/// What a manifest body turned out to be.
#[derive(Debug, Clone)]
pub enum ParsedManifest {
    Image(Manifest),
    Index(Index),
}

/// Parses a manifest body of any accepted kind.
pub fn parse_manifest(body: &[u8], reference: &str) -> Result<ParsedManifest, OciError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| OciError::UnsupportedImage {
            reference: reference.to_string(),
            reason: format!("manifest is not JSON: {e}"),
        })?;
    let media_type = value
        .get("mediaType")
        .and_then(|m| m.as_str())
        .unwrap_or("");
    let is_index = media_type == OCI_INDEX
        || media_type == DOCKER_MANIFEST_LIST
        || (media_type.is_empty() && value.get("manifests").is_some());
    let bad = |e: serde_json::Error| OciError::UnsupportedImage {
        reference: reference.to_string(),
        reason: format!("malformed manifest: {e}"),
    };
    if is_index {
        return Ok(ParsedManifest::Index(
            serde_json::from_value(value).map_err(bad)?,
        ));
    }
    let manifest: Manifest = serde_json::from_value(value).map_err(bad)?;
    if manifest.schema_version != 2 {
        return Err(OciError::UnsupportedImage {
            reference: reference.to_string(),
            reason: format!(
                "schemaVersion {} (only 2 is supported)",
                manifest.schema_version
            ),
        });
    }
    Ok(ParsedManifest::Image(manifest))
}

/// Picks the image from an index the way go-containerregistry does for Envoy Gateway: the
/// `linux/amd64` entry, else the only image entry that is not an attestation (`unknown/unknown`).
pub fn pick_from_index(index: &Index, reference: &str) -> Result<String, OciError> {
    let images: Vec<&IndexEntry> = index
        .manifests
        .iter()
        .filter(|m| m.media_type == OCI_MANIFEST || m.media_type == DOCKER_MANIFEST_V2)
        .collect();
    let is = |m: &&IndexEntry, os: &str, arch: &str| {
        m.platform
            .as_ref()
            .is_some_and(|p| p.os == os && p.architecture == arch)
    };
    if let Some(m) = images.iter().find(|m| is(m, "linux", "amd64")) {
        return Ok(m.digest.clone());
    }
    let real: Vec<&&IndexEntry> = images
        .iter()
        .filter(|m| !is(m, "unknown", "unknown"))
        .collect();
    match real.as_slice() {
        [only] => Ok(only.digest.clone()),
        _ => Err(OciError::UnsupportedImage {
            reference: reference.to_string(),
            reason: format!(
                "image index with {} image entries and none for linux/amd64; reference one image by digest",
                real.len()
            ),
        }),
    }
}

/// Where the wasm is in an image and how to get it out of that layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmLocation {
    pub format: ImageFormat,
    pub layer: Descriptor,
}

/// Applies Envoy Gateway's rules (internal/wasm/imagefetcher.go) in its order:
/// - Docker schema 2 manifest: the last layer must be `...rootfs.diff.tar.gzip` with `plugin.wasm`;
/// - OCI "compat": the last layer is `application/vnd.oci.image.layer.v1.tar+gzip` with `plugin.wasm`;
/// - OCI "artifact": exactly two layers, one of them `application/vnd.module.wasm.content.layer.v1+wasm`.
pub fn locate_wasm(manifest: &Manifest, reference: &str) -> Result<WasmLocation, OciError> {
    let unsupported = |reason: String| OciError::UnsupportedImage {
        reference: reference.to_string(),
        reason,
    };
    let Some(last) = manifest.layers.last() else {
        return Err(unsupported("the manifest has no layers".into()));
    };
    if manifest.media_type.as_deref() == Some(DOCKER_MANIFEST_V2) {
        if last.media_type != DOCKER_LAYER_TAR_GZIP {
            return Err(unsupported(format!(
                "Docker manifest whose last layer is {} (expected {DOCKER_LAYER_TAR_GZIP})",
                last.media_type
            )));
        }
        return Ok(WasmLocation {
            format: ImageFormat::Docker,
            layer: last.clone(),
        });
    }
    if last.media_type == OCI_LAYER_TAR_GZIP {
        return Ok(WasmLocation {
            format: ImageFormat::Compat,
            layer: last.clone(),
        });
    }
    if manifest.layers.len() != 2 {
        return Err(unsupported(format!(
            "last layer is {} (compat needs {OCI_LAYER_TAR_GZIP}), and the artifact format needs exactly 2 layers, not {}",
            last.media_type,
            manifest.layers.len()
        )));
    }
    match manifest.layers.iter().find(|l| l.media_type == WASM_CONTENT_LAYER) {
        Some(layer) => Ok(WasmLocation {
            format: ImageFormat::Artifact,
            layer: layer.clone(),
        }),
        None => Err(unsupported(format!(
            "last layer is {} (compat needs {OCI_LAYER_TAR_GZIP}), and no layer is {WASM_CONTENT_LAYER} (artifact)",
            last.media_type
        ))),
    }
}

/// Gets the wasm bytes out of a downloaded layer blob.
pub fn extract_wasm(format: ImageFormat, blob: Vec<u8>, what: &str) -> Result<Vec<u8>, OciError> {
    let wasm = match format {
        ImageFormat::Artifact => blob,
        ImageFormat::Compat | ImageFormat::Docker => extract_plugin_from_tar_gz(&blob, what)?,
    };
    check_wasm(&wasm, what)?;
    Ok(wasm)
}

/// Finds `plugin.wasm` (any directory) in a tar.gz layer, reading at most
/// [`MAX_WASM_SIZE`] + 1 MiB of decompressed data so a gzip bomb cannot exhaust memory.
pub fn extract_plugin_from_tar_gz(targz: &[u8], what: &str) -> Result<Vec<u8>, OciError> {
    const SLACK: u64 = 1 << 20;
    let bad = |e: std::io::Error| OciError::UnsupportedImage {
        reference: what.to_string(),
        reason: format!("layer is not a valid tar.gz: {e}"),
    };
    let decoder = flate2::read::GzDecoder::new(targz).take(MAX_WASM_SIZE + SLACK);
    let mut archive = tar::Archive::new(decoder);
    for entry in archive.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?;
        if path.file_name().and_then(|n| n.to_str()) != Some(PLUGIN_WASM) {
            continue;
        }
        let size = entry.header().size().map_err(bad)?;
        if size > MAX_WASM_SIZE {
            return Err(OciError::TooLarge {
                what: what.to_string(),
                size,
                limit: MAX_WASM_SIZE,
            });
        }
        let mut wasm = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        entry
            .take(MAX_WASM_SIZE + 1)
            .read_to_end(&mut wasm)
            .map_err(bad)?;
        if (wasm.len() as u64) < size {
            // The decompression cap cut the file short: the stream was over the limit.
            return Err(OciError::TooLarge {
                what: what.to_string(),
                size,
                limit: MAX_WASM_SIZE,
            });
        }
        return Ok(wasm);
    }
    Err(OciError::UnsupportedImage {
        reference: what.to_string(),
        reason: format!("no {PLUGIN_WASM} in the tar.gz layer"),
    })
}

/// One blob to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub descriptor: Descriptor,
    pub data: Vec<u8>,
}

impl Blob {
    fn new(media_type: &str, data: Vec<u8>, title: Option<&str>) -> Self {
        Blob {
            descriptor: Descriptor {
                media_type: media_type.to_string(),
                digest: sha256_digest(&data),
                size: data.len() as u64,
                annotations: title
                    .map(|t| BTreeMap::from([(TITLE_ANNOTATION.to_string(), t.to_string())])),
            },
            data,
        }
    }
}

/// A fully built image, ready to push: unique blobs, then the manifest.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub format: ImageFormat,
    /// Distinct blobs (config and layers; the artifact format uses one blob as both).
    pub blobs: Vec<Blob>,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub wasm_sha256: String,
}

/// Builds a reproducible image: same wasm and format give byte-identical blobs and manifest.
pub fn build_image(wasm: &[u8], format: ImageFormat) -> Result<BuiltImage, OciError> {
    check_wasm(wasm, "input")?;
    let (config, layers, annotations) = match format {
        ImageFormat::Compat => {
            let tar = plugin_tar(wasm)?;
            let diff_id = sha256_digest(&tar);
            let layer = Blob::new(OCI_LAYER_TAR_GZIP, gzip(&tar)?, None);
            let config_json = serde_json::to_vec(&serde_json::json!({
                "architecture": "wasm",
                "os": "wasi",
                "config": {},
                "rootfs": { "type": "layers", "diff_ids": [diff_id] },
            }))
            .map_err(|e| OciError::Invalid(format!("cannot encode image config: {e}")))?;
            let config = Blob::new(OCI_CONFIG, config_json, None);
            // The compat spec asks for this annotation when the layer type is the OCI one.
            let ann = BTreeMap::from([(
                "module.wasm.image/variant".to_string(),
                "compat".to_string(),
            )]);
            (config, vec![layer], Some(ann))
        }
        ImageFormat::Artifact => {
            // Envoy Gateway takes this form only with exactly two layers: the runtime config
            // (also the manifest config, as `wasme` published it) and the module itself.
            let runtime = serde_json::to_vec(&serde_json::json!({ "type": "envoy_proxy" }))
                .map_err(|e| OciError::Invalid(format!("cannot encode runtime config: {e}")))?;
            let config = Blob::new(WASM_CONFIG, runtime, Some("runtime-config.json"));
            let content = Blob::new(WASM_CONTENT_LAYER, wasm.to_vec(), Some(PLUGIN_WASM));
            (config.clone(), vec![content, config], None)
        }
        ImageFormat::Docker => {
            return Err(OciError::Invalid(
                "pushing Docker schema 2 images is not supported; use compat or artifact".into(),
            ))
        }
    };
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.to_string()),
        config: Descriptor {
            annotations: None,
            ..config.descriptor.clone()
        },
        layers: layers.iter().map(|l| l.descriptor.clone()).collect(),
        annotations,
    };
    let manifest_bytes = serde_json::to_vec(&manifest)
        .map_err(|e| OciError::Invalid(format!("cannot encode manifest: {e}")))?;
    let mut blobs: Vec<Blob> = Vec::new();
    for b in std::iter::once(config).chain(layers) {
        if !blobs
            .iter()
            .any(|x| x.descriptor.digest == b.descriptor.digest)
        {
            blobs.push(b);
        }
    }
    Ok(BuiltImage {
        format,
        blobs,
        manifest_digest: sha256_digest(&manifest_bytes),
        manifest: manifest_bytes,
        wasm_sha256: hex::encode(Sha256::digest(wasm)),
    })
}

/// A tar holding only `plugin.wasm`, as `FROM scratch` + `COPY plugin.wasm ./` lays it out,
/// with fixed metadata (mtime 0, root-owned, 0644).
pub fn plugin_tar(wasm: &[u8]) -> Result<Vec<u8>, OciError> {
    let io = |e: std::io::Error| OciError::Invalid(format!("cannot build tar layer: {e}"));
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(wasm.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    builder
        .append_data(&mut header, PLUGIN_WASM, wasm)
        .map_err(io)?;
    builder.into_inner().map_err(io)
}

/// gzip with no timestamp and no file name, so the output depends only on the input.
pub fn gzip(data: &[u8]) -> Result<Vec<u8>, OciError> {
    let io = |e: std::io::Error| OciError::Invalid(format!("cannot gzip layer: {e}"));
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::best());
    enc.write_all(data).map_err(io)?;
    enc.finish().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINI: &[u8] = b"\0asm\x01\0\0\0";

    fn manifest_of(img: &BuiltImage) -> Manifest {
        match parse_manifest(&img.manifest, "t").unwrap() {
            ParsedManifest::Image(m) => m,
            ParsedManifest::Index(_) => panic!("built an index"),
        }
    }

    #[test]
    fn compat_is_reproducible_and_round_trips() {
        let a = build_image(MINI, ImageFormat::Compat).unwrap();
        let b = build_image(MINI, ImageFormat::Compat).unwrap();
        assert_eq!(a.manifest, b.manifest);
        assert_eq!(a.manifest_digest, sha256_digest(&a.manifest));
        let m = manifest_of(&a);
        let loc = locate_wasm(&m, "t").unwrap();
        assert_eq!(loc.format, ImageFormat::Compat);
        let blob = a.blobs.iter().find(|x| x.descriptor == loc.layer).unwrap();
        assert_eq!(
            extract_wasm(loc.format, blob.data.clone(), "t").unwrap(),
            MINI
        );
        // diff_ids must be the digest of the uncompressed tar.
        let cfg: serde_json::Value = serde_json::from_slice(&a.blobs[0].data).unwrap();
        let tar = plugin_tar(MINI).unwrap();
        assert_eq!(cfg["rootfs"]["diff_ids"][0], sha256_digest(&tar));
        // A different module gives a different digest.
        let c = build_image(b"\0asm\x01\0\0\0\0", ImageFormat::Compat).unwrap();
        assert_ne!(a.manifest_digest, c.manifest_digest);
    }

    #[test]
    fn tar_entry_metadata_is_fixed() {
        let tar = plugin_tar(MINI).unwrap();
        let mut ar = tar::Archive::new(tar.as_slice());
        let entries: Vec<_> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().header().clone())
            .collect();
        assert_eq!(entries.len(), 1);
        let h = &entries[0];
        assert_eq!(h.path().unwrap().to_str(), Some(PLUGIN_WASM));
        assert_eq!(
            (
                h.mtime().unwrap(),
                h.uid().unwrap(),
                h.gid().unwrap(),
                h.mode().unwrap()
            ),
            (0, 0, 0, 0o644)
        );
    }

    #[test]
    fn artifact_has_exactly_two_layers_matching_envoy_gateway() {
        let a = build_image(MINI, ImageFormat::Artifact).unwrap();
        let m = manifest_of(&a);
        assert_eq!(m.config.media_type, WASM_CONFIG);
        assert_eq!(m.layers.len(), 2);
        let loc = locate_wasm(&m, "t").unwrap();
        assert_eq!(loc.format, ImageFormat::Artifact);
        assert_eq!(loc.layer.digest, sha256_digest(MINI));
        assert_eq!(
            a.blobs.len(),
            2,
            "config blob is shared with the config layer"
        );
    }

    #[test]
    fn docker_manifest_uses_last_layer() {
        let layer = |mt: &str, d: &str| Descriptor {
            media_type: mt.into(),
            digest: d.into(),
            size: 1,
            annotations: None,
        };
        let mut m = Manifest {
            schema_version: 2,
            media_type: Some(DOCKER_MANIFEST_V2.into()),
            config: layer(DOCKER_CONFIG, "sha256:c"),
            layers: vec![
                layer(DOCKER_LAYER_TAR_GZIP, "sha256:a"),
                layer(DOCKER_LAYER_TAR_GZIP, "sha256:b"),
            ],
            annotations: None,
        };
        let loc = locate_wasm(&m, "t").unwrap();
        assert_eq!(
            (loc.format, loc.layer.digest.as_str()),
            (ImageFormat::Docker, "sha256:b")
        );
        m.layers.push(layer(OCI_LAYER_TAR_GZIP, "sha256:x"));
        let err = locate_wasm(&m, "t").unwrap_err().to_string();
        assert!(err.contains("last layer"), "{err}");
        // Artifact with one layer only is rejected, as in Envoy Gateway.
        let one = Manifest {
            media_type: Some(OCI_MANIFEST.into()),
            layers: vec![layer(WASM_CONTENT_LAYER, "sha256:w")],
            ..m
        };
        let err = locate_wasm(&one, "t").unwrap_err().to_string();
        assert!(err.contains("exactly 2 layers"), "{err}");
    }

    #[test]
    fn plugin_found_in_subdirectory_and_missing_plugin_is_an_error() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(MINI.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "./plugin.wasm", MINI).unwrap();
        let gz = gzip(&b.into_inner().unwrap()).unwrap();
        assert_eq!(extract_plugin_from_tar_gz(&gz, "t").unwrap(), MINI);

        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(1);
        b.append_data(&mut h, "other.txt", &b"x"[..]).unwrap();
        let gz = gzip(&b.into_inner().unwrap()).unwrap();
        let err = extract_plugin_from_tar_gz(&gz, "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no plugin.wasm"), "{err}");
        let err = extract_plugin_from_tar_gz(b"not gzip", "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tar.gz"), "{err}");
    }

    #[test]
    fn magic_and_digest_checks() {
        assert!(matches!(
            check_wasm(b"\x7fELF", "m"),
            Err(OciError::NotWasm { .. })
        ));
        assert!(matches!(
            build_image(b"nope", ImageFormat::Compat),
            Err(OciError::NotWasm { .. })
        ));
        let hex = "A".repeat(64);
        assert_eq!(
            normalize_digest(&format!("sha256:{hex}")).unwrap(),
            "a".repeat(64)
        );
        assert_eq!(normalize_digest(&hex).unwrap(), "a".repeat(64));
        assert!(normalize_digest("sha256:abc").is_err());
        assert!(normalize_digest(&"g".repeat(64)).is_err());
    }

    #[test]
    fn index_picks_linux_amd64_or_single_non_attestation() {
        let idx: Index = serde_json::from_str(&format!(
            r#"{{"manifests":[
              {{"mediaType":"{OCI_MANIFEST}","digest":"sha256:att","platform":{{"os":"unknown","architecture":"unknown"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"sha256:img","platform":{{"os":"wasi","architecture":"wasm"}}}}]}}"#
        ))
        .unwrap();
        assert_eq!(pick_from_index(&idx, "t").unwrap(), "sha256:img");
    }
}

#[cfg(test)]
mod golden {
    use super::*;

    /// Published digests must not drift between Portcullis versions for the same module: a
    /// change here (tar layout, gzip settings or backend, config or manifest JSON) silently
    /// invalidates every `sha256:` pin users wrote. Change the values only on purpose.
    #[test]
    fn digests_of_a_fixed_module_are_stable() {
        let wasm = b"\0asm\x01\0\0\0";
        let compat = build_image(wasm, ImageFormat::Compat).unwrap();
        let artifact = build_image(wasm, ImageFormat::Artifact).unwrap();
        assert_eq!(
            compat.manifest_digest,
            "sha256:4aae0f01b33e68b6d27572b86ec987e0b705f240cc81e37977da448ba6091dfb"
        );
        assert_eq!(
            artifact.manifest_digest,
            "sha256:9475069d8b213b21539be8947834bf9aabb3bea5043e5961ce55237290ea3fc4"
        );
    }
}
