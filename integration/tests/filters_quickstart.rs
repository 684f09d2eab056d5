//! `make run` (scripts/run.sh) end to end: it starts the echo upstream and Envoy with both
//! filters from examples/local/envoy-static.yaml, prints the URLs, serves the documented
//! behaviour, and stops its children on Ctrl-C.

use std::time::Duration;

use portcullis_integration::echo::Echo;
use portcullis_integration::envoy::validate_in;
use portcullis_integration::http::{client, get_with_ua};
use portcullis_integration::process::{wait_until, workspace_root, ProcessBuilder};
use portcullis_integration::wasm;

#[test]
fn local_config_passes_envoy_validate() {
    wasm::module("ua_block").unwrap();
    wasm::module("headers").unwrap();
    let root = workspace_root();
    let (status, logs) =
        validate_in(&root.join("examples/local/envoy-static.yaml"), Some(&root)).unwrap();
    assert!(status.success(), "{logs}");
}

#[test]
fn make_run_serves_both_filters_and_cleans_up() {
    wasm::module("ua_block").unwrap();
    wasm::module("headers").unwrap();
    let root = workspace_root();
    let run_dir = tempfile::tempdir().unwrap();
    let mut run = ProcessBuilder::new("make-run", "bash")
        .arg(root.join("scripts/run.sh"))
        .current_dir(&root)
        // Port 0 everywhere: the script binds what the kernel gives and prints it.
        .env("PORTCULLIS_HTTP_PORT", "0")
        .env("PORTCULLIS_ADMIN_PORT", "0")
        .env("PORTCULLIS_ECHO_PORT", "0")
        .env("PORTCULLIS_RUN_DIR", run_dir.path())
        .env("ECHO_UPSTREAM_BIN", env!("CARGO_BIN_EXE_echo-upstream"))
        .spawn()
        .unwrap();
    let log_path = run.log_path().to_path_buf();
    run.wait_until(
        "run.sh to print its banner",
        Duration::from_secs(120),
        || {
            let out = std::fs::read_to_string(&log_path).unwrap_or_default();
            if out.contains("Portcullis is running") {
                Ok(())
            } else {
                Err("no banner yet")
            }
        },
    )
    .unwrap();
    let banner = run.logs();
    let (http, admin, echo) = (
        banner_port(&banner, "proxy"),
        banner_port(&banner, "admin"),
        banner_port(&banner, "upstream"),
    );
    for port in [http, admin, echo] {
        assert_ne!(port, 0, "the banner shows bound ports:\n{banner}");
    }
    let base = format!("http://127.0.0.1:{http}");
    assert!(
        banner.contains(&format!("curl -i {base}/ -A 'python-requests/2.32'")),
        "{banner}"
    );

    // The documented behaviour of examples/local/envoy-static.yaml.
    let c = client();
    let blocked = "Blocked by Portcullis ua-block\n";
    for ua in [
        Some("Mozilla/5.0 (compatible; GPTBot/1.2; +https://openai.com/gptbot)"),
        Some("python-requests/2.32"),
        Some("Wget/1.21"),
        None,
    ] {
        let resp = get_with_ua(&c, &format!("{base}/"), ua).unwrap();
        assert_eq!(resp.status().as_u16(), 403, "UA {ua:?}");
        // headers runs before ua-block, so blocked responses carry the preset too.
        assert_eq!(resp.headers()["x-frame-options"], "DENY");
        assert_eq!(resp.text().unwrap(), blocked);
    }
    let resp = c
        .get(format!("{base}/hello"))
        .header("user-agent", "Mozilla/5.0 Googlebot/2.1 GPTBot")
        .header("x-debug", "1")
        .header("x-internal-token", "s3cret")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["cache-control"], "no-store");
    assert!(
        h.get("server").is_none() && h.get("x-envoy-upstream-service-time").is_none(),
        "{h:?}"
    );
    let seen: Echo = resp.json().unwrap();
    assert_eq!(seen.path, "/hello");
    assert_eq!(seen.header_all("x-env"), ["local"]);
    assert_eq!(seen.header_all("x-trace"), ["1"]);
    assert!(
        seen.header_all("x-debug").is_empty() && seen.header_all("x-internal-token").is_empty()
    );
    let stats = c
        .get(format!(
            "http://127.0.0.1:{admin}/stats?filter=portcullis_ua_block_denied_total"
        ))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(stats.trim_end().ends_with(": 4"), "{stats}");

    // Ctrl-C on the script alone: it stops Envoy and the upstream itself, and exits 0.
    run.signal(libc::SIGINT);
    let status = run.wait_exit(Duration::from_secs(60)).unwrap();
    assert!(
        status.success(),
        "run.sh exited with {status}:\n{}",
        run.logs()
    );
    for port in [http, admin, echo] {
        wait_until(
            &format!("port {port} to close"),
            Duration::from_secs(30),
            || match std::net::TcpStream::connect(("127.0.0.1", port)) {
                Ok(_) => Err("still accepting"),
                Err(_) => Ok(()),
            },
        )
        .unwrap();
    }
}

/// The port of the banner line `  <label>   http://127.0.0.1:<port>/...`.
fn banner_port(banner: &str, label: &str) -> u16 {
    banner
        .lines()
        .find_map(|l| {
            let rest = l.trim_start().strip_prefix(label)?;
            let url = rest.trim_start().strip_prefix("http://127.0.0.1:")?;
            url.split('/').next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no {label} URL in the banner:\n{banner}"))
}
