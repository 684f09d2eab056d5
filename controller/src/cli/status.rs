//! `portcullis status`: read `/status` from a running controller and print it as tables.

use anyhow::Context;
use serde_json::Value;
use std::fmt::Write as _;
use std::net::SocketAddr;

#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Admin endpoint of the running controller.
    #[arg(long, default_value = "127.0.0.1:19100")]
    pub admin_addr: SocketAddr,
    /// Print the raw JSON instead of tables.
    #[arg(short = 'o', long, value_parser = ["table", "json"], default_value = "table")]
    pub output: String,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let url = format!("http://{}/status", args.admin_addr);
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()?;
    let resp = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("cannot reach the controller at {url}"))?;
    let status = resp.status();
    anyhow::ensure!(status.is_success(), "{url} answered HTTP {status}");
    let doc: Value = resp
        .json()
        .await
        .with_context(|| format!("{url} did not return JSON"))?;
    if args.output == "json" {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", render(&doc));
    }
    Ok(())
}

/// Every condition found anywhere under `v`, as `Type=Status(Reason)`, with its owner's label
/// (listener name, parentRef name, ancestor name) when nested.
fn conditions(v: &Value, ctx: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Array(cs)) = m.get("conditions") {
                for c in cs {
                    let t = c["type"].as_str().unwrap_or("?");
                    let s = c["status"].as_str().unwrap_or("?");
                    let r = c["reason"].as_str().unwrap_or("");
                    let prefix = if ctx.is_empty() {
                        String::new()
                    } else {
                        format!("{ctx}:")
                    };
                    out.push(format!("{prefix}{t}={s}({r})"));
                }
            }
            for (k, child) in m {
                if k == "conditions" {
                    continue;
                }
                conditions(child, ctx, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                let label = item
                    .get("name")
                    .or_else(|| item.get("parentRef").and_then(|p| p.get("name")))
                    .or_else(|| item.get("ancestorRef").and_then(|p| p.get("name")))
                    .and_then(Value::as_str)
                    .unwrap_or(ctx);
                conditions(item, label, out);
            }
        }
        _ => {}
    }
}

/// Condition types where True is the bad state (Gateway API "negative polarity").
const NEGATIVE: [&str; 3] = ["Conflicted", "Detached", "OverlappingTLSConfig"];

/// Messages of conditions in their bad state: the reasons a user needs to see.
fn problems(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            let ty = m.get("type").and_then(Value::as_str).unwrap_or_default();
            let bad = if NEGATIVE.contains(&ty) {
                "True"
            } else {
                "False"
            };
            if m.get("status").and_then(Value::as_str) == Some(bad) {
                if let Some(msg) = m
                    .get("message")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                {
                    out.push(msg.to_string());
                }
            }
            m.values().for_each(|c| problems(c, out));
        }
        Value::Array(a) => a.iter().for_each(|c| problems(c, out)),
        _ => {}
    }
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut s = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                if i + 1 == r.len() {
                    cell.clone()
                } else {
                    format!("{cell:<w$}", w = widths[i])
                }
            })
            .collect();
        let _ = writeln!(s, "{}", line.join("  ").trim_end());
    }
    s
}

fn str_of(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn render(doc: &Value) -> String {
    let mut out = String::new();
    let mut rows = vec![vec![
        "KIND".to_string(),
        "NAMESPACE/NAME".into(),
        "CONDITIONS".into(),
    ]];
    let mut notes = Vec::new();
    for r in doc["resources"].as_array().into_iter().flatten() {
        let ns = r["metadata"]["namespace"].as_str();
        let name = r["metadata"]["name"].as_str().unwrap_or("?");
        let id = ns
            .map(|n| format!("{n}/{name}"))
            .unwrap_or_else(|| name.to_string());
        let mut cs = Vec::new();
        conditions(&r["status"], "", &mut cs);
        let mut probs = Vec::new();
        problems(&r["status"], &mut probs);
        probs.dedup();
        for p in probs {
            notes.push(format!("{} {id}: {p}", r["kind"].as_str().unwrap_or("?")));
        }
        rows.push(vec![
            r["kind"].as_str().unwrap_or("?").to_string(),
            id,
            if cs.is_empty() {
                "-".into()
            } else {
                cs.join(" ")
            },
        ]);
    }
    out.push_str(&table(&rows));
    if !notes.is_empty() {
        out.push_str("\nPROBLEMS\n");
        for n in notes {
            let _ = writeln!(out, "  {n}");
        }
    }
    if let Some(errs) = doc["loadErrors"].as_array().filter(|a| !a.is_empty()) {
        out.push_str("\nLOAD ERRORS\n");
        for e in errs {
            let doc_ix = e["document"]
                .as_u64()
                .map(|d| format!(" (document {d})"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {}{doc_ix}: {}",
                str_of(&e["source"]),
                str_of(&e["reason"])
            );
        }
    }
    let mut x = vec![vec![
        "NODE".to_string(),
        "STREAMS".into(),
        "TYPE".into(),
        "SENT".into(),
        "ACKED".into(),
        "NACK".into(),
    ]];
    if let Some(nodes) = doc["xds"]["nodes"].as_object() {
        for (node, n) in nodes {
            for (t, ts) in n["types"].as_object().into_iter().flatten() {
                let nack = match &ts["nack"] {
                    Value::Null => "-".to_string(),
                    v => format!("{}: {}", str_of(&v["version"]), str_of(&v["error"])),
                };
                x.push(vec![
                    node.clone(),
                    str_of(&n["connectedStreams"]),
                    t.clone(),
                    str_of(&ts["sentVersion"]),
                    str_of(&ts["ackedVersion"]),
                    nack,
                ]);
            }
        }
    }
    let _ = write!(
        out,
        "\nXDS (generation {})\n",
        str_of(&doc["xds"]["generation"])
    );
    out.push_str(&table(&x));
    if let Some(mods) = doc["wasm"].as_array().filter(|a| !a.is_empty()) {
        let mut w = vec![vec![
            "WASM URL".to_string(),
            "STATE".into(),
            "SHA256 / REASON".into(),
        ]];
        for m in mods {
            let detail = if m["state"] == "ready" {
                str_of(&m["sha256"])
            } else {
                str_of(&m["reason"])
            };
            w.push(vec![
                str_of(&m["source"]["url"]),
                str_of(&m["state"]),
                detail,
            ]);
        }
        out.push('\n');
        out.push_str(&table(&w));
    }
    if let Some(envoys) = doc["envoys"].as_array().filter(|a| !a.is_empty()) {
        let mut e = vec![vec![
            "ENVOY NODE".to_string(),
            "STATE".into(),
            "PID".into(),
            "ADMIN".into(),
            "STARTS".into(),
            "LAST EXIT".into(),
        ]];
        for v in envoys {
            e.push(vec![
                str_of(&v["nodeId"]),
                str_of(&v["state"]),
                str_of(&v["pid"]),
                str_of(&v["adminAddr"]),
                str_of(&v["starts"]),
                str_of(&v["lastExit"]),
            ]);
        }
        out.push('\n');
        out.push_str(&table(&e));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_conditions_nacks_and_load_errors() {
        let doc = serde_json::json!({
            "resources": [{"kind": "HTTPRoute", "metadata": {"namespace": "default", "name": "r"},
                "status": {"parents": [{"parentRef": {"name": "gw"}, "conditions": [
                    {"type": "Accepted", "status": "True", "reason": "Accepted"},
                    {"type": "ResolvedRefs", "status": "False", "reason": "BackendNotFound", "message": "service default/x not found"}]}]}},
                {"kind": "Gateway", "metadata": {"namespace": "default", "name": "gw"},
                "status": {"listeners": [{"name": "http", "conditions": [
                    {"type": "Conflicted", "status": "False", "reason": "NoConflicts", "message": "No conflicts."}]}]}}],
            "loadErrors": [{"source": "bad.yaml", "document": 1, "reason": "invalid YAML"}],
            "xds": {"generation": 3, "nodes": {"default/gw": {"connectedStreams": 1, "types": {"Listener": {"sentVersion": "b", "ackedVersion": "a", "nack": {"version": "b", "error": "bad listener"}}}}}},
            "wasm": [], "envoys": []
        });
        let s = render(&doc);
        assert!(s.contains("default/r"), "{s}");
        assert!(s.contains("gw:ResolvedRefs=False(BackendNotFound)"), "{s}");
        assert!(s.contains("service default/x not found"), "{s}");
        assert!(s.contains("bad.yaml (document 1): invalid YAML"), "{s}");
        assert!(s.contains("b: bad listener"), "{s}");
        assert!(s.contains("generation 3"), "{s}");
        assert!(s.contains("http:Conflicted=False(NoConflicts)"), "{s}");
        assert!(
            !s.contains("No conflicts."),
            "a good negative-polarity condition is no problem: {s}"
        );
    }
}
