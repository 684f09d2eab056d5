//! Process-wide shared data with compare-and-swap: the dynamic-module twin of proxy-wasm's
//! shared data. Every worker sees one map, because they share one address space.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

use portcullis_core::{SharedDataError, SharedValue};

/// Key → (value, version); the version is the compare-and-swap token.
type Map = Mutex<HashMap<String, (Vec<u8>, u32)>>;

fn map() -> &'static Map {
    static MAP: OnceLock<Map> = OnceLock::new();
    MAP.get_or_init(Default::default)
}

pub fn get(key: &str) -> Option<SharedValue> {
    let m = map().lock().unwrap_or_else(PoisonError::into_inner);
    m.get(key).map(|(data, cas)| SharedValue {
        data: data.clone(),
        cas: *cas,
    })
}

pub fn set(key: &str, data: &[u8], cas: Option<u32>) -> Result<(), SharedDataError> {
    let mut m = map().lock().unwrap_or_else(PoisonError::into_inner);
    let version = match (m.get(key), cas) {
        (Some((_, current)), Some(expected)) if *current != expected => {
            return Err(SharedDataError::CasMismatch)
        }
        (Some((_, current)), _) => current.wrapping_add(1).max(1),
        (None, Some(_)) => return Err(SharedDataError::CasMismatch),
        (None, None) => 1,
    };
    m.insert(key.to_string(), (data.to_vec(), version));
    Ok(())
}
