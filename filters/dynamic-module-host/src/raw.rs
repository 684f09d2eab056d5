//! Views of memory Envoy lends for the length of one hook. Everything is copied out before the
//! hook returns; nothing here outlives it.

use crate::abi::{EnvoyBuffer, EnvoyHttpHeader};

/// The bytes of `(ptr, len)`; `(null, _)` and `(_, 0)` are empty.
///
/// # Safety
/// A non-null `ptr` must point to `len` readable bytes that stay valid for `'a`.
pub unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: non-null and non-empty here; the caller vouches for the extent and lifetime.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

/// A list Envoy lends as `(ptr, count)`; null or zero is empty.
///
/// # Safety
/// A non-null `ptr` must point to `count` initialised values valid for `'a`.
pub unsafe fn slice<'a, T>(ptr: *const T, count: usize) -> &'a [T] {
    if ptr.is_null() || count == 0 {
        return &[];
    }
    // SAFETY: as above, for `count` elements of `T`.
    unsafe { std::slice::from_raw_parts(ptr, count) }
}

/// Header bytes as text. Header values may carry any byte (obs-text): keep them, lossily.
pub fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Copies Envoy-owned headers out.
///
/// # Safety
/// Every pointer in `headers` must satisfy [`bytes`]'s contract.
pub unsafe fn copy_headers(headers: &[EnvoyHttpHeader]) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|h| {
            // SAFETY: forwarded from the caller.
            let (k, v) = unsafe { (bytes(h.key_ptr, h.key_len), bytes(h.value_ptr, h.value_len)) };
            (lossy(k), v.to_vec())
        })
        .collect()
}

/// Concatenates body chunks Envoy lends.
///
/// # Safety
/// Every chunk must satisfy [`bytes`]'s contract.
pub unsafe fn concat(chunks: &[EnvoyBuffer]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunks.iter().map(|c| c.len).sum());
    for c in chunks {
        // SAFETY: forwarded from the caller.
        out.extend_from_slice(unsafe { bytes(c.ptr, c.len) });
    }
    out
}
