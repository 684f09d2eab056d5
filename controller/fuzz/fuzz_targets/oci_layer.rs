//! Wasm extraction from a layer blob, as a pull does it: the first byte picks the image
//! format (compat / docker: `plugin.wasm` from a tar.gz; artifact: the blob itself; or compat
//! with the rest gzipped here, so mutations reach the tar reader), the rest is the blob. No
//! panic, and what comes out is a size-checked module with the wasm magic.
#![no_main]

use portcullis_oci::image::{extract_wasm, gzip};
use portcullis_oci::{ImageFormat, MAX_WASM_SIZE};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&first, blob)) = data.split_first() else {
        return;
    };
    let (format, blob) = match first % 4 {
        0 => (ImageFormat::Compat, blob.to_vec()),
        1 => (ImageFormat::Docker, blob.to_vec()),
        2 => (ImageFormat::Artifact, blob.to_vec()),
        _ => match gzip(blob) {
            Ok(gz) => (ImageFormat::Compat, gz),
            Err(_) => return,
        },
    };
    if let Ok(wasm) = extract_wasm(format, blob, "fuzz layer") {
        assert!(wasm.starts_with(b"\0asm"));
        assert!(wasm.len() as u64 <= MAX_WASM_SIZE);
    }
});
