//! OCI / Docker manifest and index JSON: `parse_manifest`, then `pick_from_index` or
//! `locate_wasm`, as a pull reads them; image references through `registry_host`. No panic,
//! and a located layer is one of the manifest's layers.
#![no_main]

use portcullis_oci::image::{locate_wasm, parse_manifest, pick_from_index, ParsedManifest};
use portcullis_oci::ImageFormat;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let reference = "127.0.0.1:5000/portcullis/fuzz:1";
    match parse_manifest(data, reference) {
        Ok(ParsedManifest::Index(index)) => {
            if let Ok(digest) = pick_from_index(&index, reference) {
                assert!(index.manifests.iter().any(|m| m.digest == digest));
            }
        }
        Ok(ParsedManifest::Image(manifest)) => {
            if let Ok(loc) = locate_wasm(&manifest, reference) {
                assert!(manifest.layers.contains(&loc.layer));
                if loc.format == ImageFormat::Artifact {
                    assert_eq!(manifest.layers.len(), 2);
                }
            }
        }
        Err(_) => {}
    }
    if data.len() < 512 {
        let text = String::from_utf8_lossy(data);
        let _ = portcullis_oci::registry_host(&text);
        let _ = portcullis_oci::image::normalize_digest(&text);
    }
});
