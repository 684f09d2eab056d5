//! examples/lua/ua-block.lua (what users attach through EnvoyExtensionPolicy `lua` today) and
//! the ua-block filter with examples/lua/ua-block.wasm.json, on both runtimes (the proxy-wasm
//! module and the dynamic module, same config), block exactly the same requests, through real
//! Envoy.

use std::path::PathBuf;

use portcullis_integration::envoy::{Envoy, EnvoyBuilder};
use portcullis_integration::http::client;
use portcullis_integration::on_both_runtimes;
use portcullis_integration::process::workspace_root;
use portcullis_integration::runtime::Runtime;
use serde_json::Value;

on_both_runtimes!(filter_blocks_exactly_the_table);

fn lua_path() -> PathBuf {
    workspace_root().join("examples/lua/ua-block.lua")
}

fn wasm_config() -> Value {
    let path = workspace_root().join("examples/lua/ua-block.wasm.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The quoted strings of `local NAME = { ... }` in the Lua script.
fn lua_list(lua: &str, name: &str) -> Vec<String> {
    let start = lua
        .find(&format!("local {name} = {{"))
        .unwrap_or_else(|| panic!("no `local {name} = {{` in the Lua script"));
    let block = &lua[start..];
    let block = &block[..block.find('}').expect("unterminated table")];
    block
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The right-hand side of `local NAME = value` (comment stripped).
fn lua_scalar<'a>(lua: &'a str, name: &str) -> &'a str {
    let prefix = format!("local {name} = ");
    let line = lua
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no `local {name} =` in the Lua script"));
    line.split("--").next().unwrap_or("").trim()
}

#[test]
fn lua_script_and_wasm_config_describe_the_same_policy() {
    let lua = std::fs::read_to_string(lua_path()).unwrap();
    let cfg = wasm_config();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("expected a list, got {v}"))
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(lua_list(&lua, "DENY"), strings(&cfg["deny"]["contains"]));
    assert_eq!(lua_list(&lua, "ALLOW"), strings(&cfg["allow"]["contains"]));
    // The Lua script only knows `contains`: the wasm config must not use more.
    assert_eq!(cfg["deny"].as_object().unwrap().len(), 1, "{cfg}");
    assert_eq!(cfg["allow"].as_object().unwrap().len(), 1, "{cfg}");
    assert_eq!(
        lua_scalar(&lua, "MISSING_USER_AGENT"),
        format!("\"{}\"", cfg["missing_user_agent"].as_str().unwrap())
    );
    assert_eq!(
        lua_scalar(&lua, "CASE_SENSITIVE"),
        cfg["case_sensitive"].as_bool().unwrap().to_string()
    );
    assert_eq!(lua_scalar(&lua, "STATUS"), cfg["status"].to_string());
    assert_eq!(lua_scalar(&lua, "BODY"), cfg["body"].to_string());
}

/// User-Agent header values of one request (empty: no header) and whether the policy blocks it.
const CASES: &[(&[&str], bool)] = &[
    (&["Mozilla/5.0 (compatible; GPTBot/1.2; +https://openai.com/gptbot)"], true),
    (&["gptbot"], true),
    (&["GPTBOT/1.0"], true),
    (&["ClaudeBot/1.0; +claudebot@anthropic.com"], true),
    (&["CCBot/2.0 (https://commoncrawl.org/faq/)"], true),
    (&["Mozilla/5.0 (Linux; Android 5.0) AppleWebKit/537.36 (KHTML, like Gecko) Mobile Safari/537.36 (compatible; Bytespider; spider-feedback@bytedance.com)"], true),
    (&["Mozilla/5.0 PerplexityBot/1.0"], true),
    (&["python-requests/2.32.3"], true),
    (&["PYTHON-REQUESTS/1.0"], true),
    (&["Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"], false),
    (&["curl/8.5.0"], false),
    (&["Bytespide"], false),
    (&["GPT Bot"], false),
    (&["Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html) GPTBot"], false),
    (&["portcullis-monitor/1.0 ClaudeBot"], false),
    (&["Mozilla/5.0 (compatible; Bingbot/2.0)"], false),
    (&["Ünïcödé-Agent/1.0"], false),
    (&[], true),
    (&[""], true),
    (&["   "], true),
    (&["Mozilla/5.0", "GPTBot/1.0"], true),
    (&["GPTBot/1.0", "Googlebot/2.1"], false),
    (&["Mozilla/5.0", "Safari/1.0"], false),
];

fn send(envoy: &Envoy, uas: &[&str]) -> (u16, String) {
    let mut req = client().get(envoy.url("/"));
    for ua in uas {
        req = req.header("user-agent", *ua);
    }
    let resp = req
        .send()
        .unwrap_or_else(|e| panic!("request with UA {uas:?}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.text().unwrap_or_default())
}

/// Sends every case through `envoy`; returns the cases where the outcome differs from the table.
fn mismatches(envoy: &Envoy) -> Vec<String> {
    let mut out = Vec::new();
    for (uas, blocked) in CASES {
        let expected = if *blocked {
            (403, "Forbidden\n".to_string())
        } else {
            (200, "upstream\n".to_string())
        };
        let got = send(envoy, uas);
        if got != expected {
            out.push(format!("UA {uas:?}: expected {expected:?}, got {got:?}"));
        }
    }
    out
}

// Every test checks the same table, so together they show that Lua, the wasm filter and the
// dynamic module block exactly the same set of requests (and each failure names the side that
// is off).

#[test]
fn lua_script_blocks_exactly_the_table() {
    let lua = std::fs::read_to_string(lua_path()).unwrap();
    let envoy = EnvoyBuilder::new()
        .direct_response(200, "upstream\n")
        .lua(lua)
        .start()
        .unwrap();
    let off = mismatches(&envoy);
    assert!(off.is_empty(), "Lua script:\n{}", off.join("\n"));
}

fn filter_blocks_exactly_the_table(rt: Runtime) {
    let envoy = EnvoyBuilder::new()
        .direct_response(200, "upstream\n")
        .filter(rt, "ua_block", wasm_config())
        .start()
        .unwrap();
    let off = mismatches(&envoy);
    assert!(off.is_empty(), "{} filter:\n{}", rt.name(), off.join("\n"));
    let blocked = CASES.iter().filter(|(_, b)| *b).count() as u64;
    assert_eq!(
        envoy.counter("portcullis_ua_block_denied_total").unwrap(),
        Some(blocked)
    );
}
