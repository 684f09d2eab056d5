//! `libportcullis.so` against the real Envoy 1.40: the ABI contract (symbols, version, what it
//! links), config rejection, the panic guard, and exact local limits across workers.
//! Behaviour tests of each filter run on both runtimes in the `filters_*`, `ratelimit_*` and
//! `oidc_*` suites.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use portcullis_integration::envoy::{validate, EnvoyBuilder};
use portcullis_integration::http::client;
use portcullis_integration::process::envoy_bin;
use portcullis_integration::runtime::Runtime;
use portcullis_integration::wasm::{dynamic_library, dynamic_test_library};
use serde_json::json;

/// Hooks Envoy 1.40 requires of an HTTP-filter module (measured by hiding one at a time; see
/// shared/dynamic-modules.md §2), plus program_init.
const REQUIRED_HOOKS: &[&str] = &[
    "envoy_dynamic_module_on_program_init",
    "envoy_dynamic_module_on_http_filter_config_new",
    "envoy_dynamic_module_on_http_filter_config_destroy",
    "envoy_dynamic_module_on_http_filter_new",
    "envoy_dynamic_module_on_http_filter_destroy",
    "envoy_dynamic_module_on_http_filter_request_headers",
    "envoy_dynamic_module_on_http_filter_request_body",
    "envoy_dynamic_module_on_http_filter_request_trailers",
    "envoy_dynamic_module_on_http_filter_response_headers",
    "envoy_dynamic_module_on_http_filter_response_body",
    "envoy_dynamic_module_on_http_filter_response_trailers",
    "envoy_dynamic_module_on_http_filter_stream_complete",
    "envoy_dynamic_module_on_http_filter_scheduled",
    "envoy_dynamic_module_on_http_filter_http_callout_done",
    "envoy_dynamic_module_on_http_filter_http_stream_headers",
    "envoy_dynamic_module_on_http_filter_http_stream_data",
    "envoy_dynamic_module_on_http_filter_http_stream_trailers",
    "envoy_dynamic_module_on_http_filter_http_stream_complete",
    "envoy_dynamic_module_on_http_filter_http_stream_reset",
    "envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark",
    "envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark",
    // Optional for Envoy, used by oidc's main-thread fetches.
    "envoy_dynamic_module_on_http_filter_config_scheduled",
    "envoy_dynamic_module_on_http_filter_config_http_callout_done",
];

/// `nm -D` symbol names of `path`, defined or undefined.
fn dynamic_symbols(path: &Path, defined: bool) -> BTreeSet<String> {
    let flag = if defined {
        "--defined-only"
    } else {
        "--undefined-only"
    };
    let out = Command::new("nm")
        .args(["-D", flag])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("run nm on {}: {e}", path.display()));
    assert!(
        out.status.success(),
        "nm {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(|s| s.split('@').next().unwrap_or(s).to_string())
        .collect()
}

#[test]
fn every_imported_callback_is_exported_by_envoy_and_every_required_hook_is_defined() {
    let lib = dynamic_library().unwrap();
    let envoy = envoy_bin().unwrap();
    let exported = dynamic_symbols(&envoy, true);
    let imported: Vec<String> = dynamic_symbols(&lib, false)
        .into_iter()
        .filter(|s| s.starts_with("envoy_dynamic_module_callback_"))
        .collect();
    assert!(
        imported.len() >= 10,
        "too few callbacks imported, nm output changed? {imported:?}"
    );
    let missing: Vec<&String> = imported.iter().filter(|s| !exported.contains(*s)).collect();
    assert!(
        missing.is_empty(),
        "libportcullis.so imports callbacks {} does not export: {missing:?}",
        envoy.display()
    );
    let defined = dynamic_symbols(&lib, true);
    let absent: Vec<&&str> = REQUIRED_HOOKS
        .iter()
        .filter(|h| !defined.contains(**h))
        .collect();
    assert!(
        absent.is_empty(),
        "hooks missing from libportcullis.so: {absent:?}"
    );
}

#[test]
fn links_only_against_the_c_runtime_with_a_glibc_floor_of_2_34() {
    let lib = dynamic_library().unwrap();
    let out = Command::new("readelf")
        .arg("-dW")
        .arg(&lib)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let needed: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1)?.split(']').next())
        .collect();
    let allowed = [
        "libc.so.6",
        "libm.so.6",
        "libgcc_s.so.1",
        "ld-linux-x86-64.so.2",
    ];
    assert!(!needed.is_empty(), "{text}");
    for n in &needed {
        assert!(
            allowed.contains(n),
            "libportcullis.so needs {n}: {needed:?}"
        );
    }
    // The newest glibc symbol version it needs is the documented floor (docs/filters.md).
    let out = Command::new("objdump")
        .arg("-T")
        .arg(&lib)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let newest = text
        .split("GLIBC_")
        .skip(1)
        .filter_map(|v| {
            let v: String = v
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
            Some((parts.next()?, parts.next().unwrap_or(0)))
        })
        .max()
        .unwrap();
    assert!(newest <= (2, 34), "needs glibc {}.{}", newest.0, newest.1);
}

/// `envoy --mode validate` loads the library, matches the ABI and runs config_new for each
/// filter with a valid config.
#[test]
fn validate_mode_loads_each_filter_and_matches_the_abi() {
    let dir = tempfile::tempdir().unwrap();
    let configs = [
        ("ua_block", json!({"deny": {"contains": ["GPTBot"]}})),
        ("headers", json!({"security_headers": "strict"})),
        (
            "ratelimit",
            json!({"rules": [{"name": "all", "key": [], "limit": {"requests": 5, "unit": "minute"}}]}),
        ),
    ];
    for (name, cfg) in configs {
        let bootstrap = EnvoyBuilder::new()
            .filter(Runtime::Dynamic, name, cfg)
            .log_level("info")
            .bootstrap(0, None, 0, None);
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(&path, bootstrap.to_string()).unwrap();
        let (status, logs) = validate(&path).unwrap();
        assert!(status.success(), "{name}: {logs}");
        assert!(
            logs.contains("Dynamic module ABI version v0.2.0 matched"),
            "{name}: {logs}"
        );
    }
}

#[test]
fn unknown_filter_name_is_refused_with_the_names_it_accepts() {
    let lib = dynamic_library().unwrap();
    let (status, logs) = EnvoyBuilder::new()
        .dynamic_raw("ua-block", &lib, "{}")
        .start_expect_exit()
        .unwrap();
    assert!(!status.success());
    assert!(
        logs.contains(Runtime::Dynamic.config_refused_marker()),
        "{logs}"
    );
    assert!(
        logs.lines().any(|l| l.contains("[dynamic_modules]")
            && l.contains("unknown filter_name \"ua-block\"")
            && l.contains("ua_block, headers, ratelimit, oidc")),
        "{logs}"
    );
}

/// A hook that panics: the client gets a 500, Envoy keeps serving, the counter rises, and the
/// panic is logged with where it happened.
#[test]
fn a_panic_in_a_hook_is_a_500_and_envoy_keeps_serving() {
    let lib = dynamic_test_library().unwrap();
    for hook in ["request_headers", "response_headers"] {
        let envoy = EnvoyBuilder::new()
            .dynamic_raw("panic", &lib, json!({ "in": hook }).to_string())
            .concurrency(2)
            .start()
            .unwrap();
        let c = client();
        for i in 1..=3u64 {
            let resp = c.get(envoy.url("/")).send().unwrap();
            assert_eq!(resp.status().as_u16(), 500, "{hook} request {i}");
            assert_eq!(
                envoy.counter("portcullis_panic_panics_total").unwrap(),
                Some(i)
            );
        }
        assert_eq!(envoy.admin_get("/ready").unwrap().trim(), "LIVE");
        let logs = envoy.logs();
        assert!(logs.contains(&format!("test panic in {hook}")), "{logs}");
        assert!(
            logs.contains(&format!("a panic in {hook} was answered with 500")),
            "{logs}"
        );
        assert!(!logs.contains("Caught Aborted"), "{logs}");
    }
}

/// Four workers, many connections, one bucket: exactly N pass, the rest get 429, because the
/// buckets are process-wide (Envoy's local_ratelimit keeps one bucket per worker).
#[test]
fn local_limit_is_exact_across_four_workers() {
    const LIMIT: usize = 150;
    const THREADS: usize = 16;
    const PER_THREAD: usize = 25;
    let envoy = EnvoyBuilder::new()
        .filter(
            Runtime::Dynamic,
            "ratelimit",
            json!({"rules": [{"name": "all", "key": [], "limit": {"requests": LIMIT, "unit": "hour"}}]}),
        )
        .concurrency(4)
        .start()
        .unwrap();
    let url = envoy.url("/");
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let url = url.clone();
                // One client per thread: its own connection, spread over the workers.
                s.spawn(move || {
                    let c = client();
                    (0..PER_THREAD)
                        .map(|_| c.get(&url).send().map(|r| r.status().as_u16()).unwrap_or(0))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(
        (ok, limited),
        (LIMIT, THREADS * PER_THREAD - LIMIT),
        "{statuses:?}"
    );
    assert_eq!(
        envoy.counter("portcullis_ratelimit_passed_total").unwrap(),
        Some(LIMIT as u64)
    );
    // Connections really went to more than one worker.
    let per_worker = envoy.stats("downstream_cx_total").unwrap();
    let busy = per_worker
        .iter()
        .filter(|(k, v)| k.contains(".worker_") && **v > 0)
        .count();
    assert!(
        busy >= 2,
        "connections were not spread over workers: {per_worker:?}"
    );
}
