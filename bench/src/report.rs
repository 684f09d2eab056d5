//! Markdown tables from the results (pasted into BENCHMARKS.md).

use crate::controller::ControllerReport;
use crate::filters::FiltersReport;
use std::fmt::Write as _;

fn ratio(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}×")
    } else {
        "–".into()
    }
}

pub fn filters_markdown(r: &FiltersReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Run {} · commit {} · {} · {} cores · kernel {} · {}\n",
        r.date_utc, r.git, r.machine.cpu_model, r.machine.cores, r.machine.kernel, r.envoy_version
    );
    let _ = writeln!(
        s,
        "{} rounds × {} s per variant (interleaved), {} s warm-up, {} connections. {}.\n",
        r.rounds, r.duration_s, r.warmup_s, r.connections, r.pinning
    );
    let _ = writeln!(
        s,
        "| variant | req/s | ×none | p50 µs | ×none | p99 µs | ×none | Envoy CPU µs/req | ×none | Envoy RSS MiB | ×none |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut group = String::new();
    for v in &r.variants {
        if v.variant.group != group {
            group = v.variant.group.clone();
        }
        match (&v.median, &v.ratio_to_none) {
            (Some(m), Some(x)) => {
                let _ = writeln!(
                    s,
                    "| `{}` {} | {:.0} | {} | {:.0} | {} | {:.0} | {} | {:.1} | {} | {:.1} | {} |",
                    v.variant.id,
                    v.variant.label,
                    m.rps,
                    ratio(x.rps),
                    m.p50_us,
                    ratio(x.p50_us),
                    m.p99_us,
                    ratio(x.p99_us),
                    m.cpu_us_per_request,
                    ratio(x.cpu_us_per_request),
                    m.rss_mib,
                    ratio(x.rss_mib)
                );
            }
            _ => {
                let _ = writeln!(
                    s,
                    "| `{}` {} | not measured: {} |||||||||| ",
                    v.variant.id,
                    v.variant.label,
                    v.skipped_reason
                        .as_deref()
                        .unwrap_or("no result")
                        .replace('|', "/")
                        .replace('\n', " ")
                );
            }
        }
    }
    let _ = writeln!(s, "\nVariants:\n");
    for v in &r.variants {
        let _ = writeln!(
            s,
            "- `{}` ({}): {}; expects {}{}.",
            v.variant.id,
            v.variant.group,
            v.variant.description,
            v.variant.expect.status,
            if v.variant.upstream {
                ", real upstream"
            } else {
                ", direct_response"
            }
        );
    }
    let _ = writeln!(s, "\nPer-round req/s (to judge the spread):\n");
    let _ = writeln!(s, "| variant | rounds (req/s) | non-2xx | socket errors |");
    let _ = writeln!(s, "|---|---|---:|---:|");
    for v in &r.variants {
        if v.rounds.is_empty() {
            continue;
        }
        let rounds: Vec<String> = v.rounds.iter().map(|x| format!("{:.0}", x.rps)).collect();
        let non2xx: u64 = v.rounds.iter().map(|x| x.non_2xx_3xx).sum();
        let sock: u64 = v.rounds.iter().map(|x| x.socket_errors).sum();
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} |",
            v.variant.id,
            rounds.join(" · "),
            non2xx,
            sock
        );
    }
    s
}

pub fn controller_markdown(r: &ControllerReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Run {} · commit {} · {} · {} cores · kernel {} · {}\n",
        r.date_utc, r.git, r.machine.cpu_model, r.machine.cores, r.machine.kernel, r.envoy_version
    );
    let _ = writeln!(s, "**Translate** (`portcullis translate -f DIR -o json > FILE`, median of {} runs; peak RSS from wait4 rusage):\n", r.translate_runs);
    let _ = writeln!(
        s,
        "| HTTPRoutes | Gateways | EEPs | manifest KiB | translate ms (median) | min | max | peak RSS MiB | output KiB |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for t in &r.translate {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.0} |",
            t.routes,
            t.gateways,
            t.policies,
            t.manifest_kib,
            t.median_ms,
            t.min_ms,
            t.max_ms,
            t.peak_rss_mib,
            t.output_kib
        );
    }
    let _ = writeln!(s, "\n**Convergence** (`portcullis run`, edit of every route's header value → every Envoy ACKed the new generation, seen on `/status`; median of {} edits):\n", r.edits);
    let _ = writeln!(
        s,
        "| HTTPRoutes | Gateways (Envoys) | start → settled ms | change → ACK ms (median) | min | max | controller translate ms | controller peak RSS MiB (VmHWM) | controller RSS after MiB | each Envoy's RSS MiB |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for c in &r.convergence {
        match &c.error {
            None => {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.1} | {:.1} | {} |",
                    c.routes,
                    c.gateways,
                    c.initial_sync_ms,
                    c.median_ms,
                    c.min_ms,
                    c.max_ms,
                    c.last_translate_ms,
                    c.controller_peak_rss_mib,
                    c.controller_rss_mib,
                    c.envoy_rss_mib
                        .iter()
                        .map(|x| format!("{x:.0}"))
                        .collect::<Vec<_>>()
                        .join(" / ")
                );
            }
            Some(e) => {
                let _ = writeln!(
                    s,
                    "| {} | {} | not measured: {} ||||||||",
                    c.routes,
                    c.gateways,
                    e.replace('|', "/").replace('\n', " ")
                );
            }
        }
    }
    s
}

/// Replaces the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in `file` (when both
/// markers exist), so a run refreshes BENCHMARKS.md's tables in place. Returns whether it did.
pub fn splice(file: &std::path::Path, name: &str, text: &str) -> anyhow::Result<bool> {
    let Ok(doc) = std::fs::read_to_string(file) else {
        return Ok(false);
    };
    let begin = format!("<!-- {name}:begin -->");
    let end = format!("<!-- {name}:end -->");
    let (Some(b), Some(e)) = (doc.find(&begin), doc.find(&end)) else {
        return Ok(false);
    };
    if e < b {
        return Ok(false);
    }
    let out = format!("{}{begin}\n{}\n{}", &doc[..b], text.trim_end(), &doc[e..]);
    std::fs::write(file, out)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    #[test]
    fn splice_replaces_between_markers() {
        let dir = std::env::temp_dir().join(format!("splice-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("B.md");
        std::fs::write(&f, "a\n<!-- t:begin -->\nold\n<!-- t:end -->\nz\n").unwrap();
        assert!(super::splice(&f, "t", "new\n").unwrap());
        assert_eq!(
            std::fs::read_to_string(&f).unwrap(),
            "a\n<!-- t:begin -->\nnew\n<!-- t:end -->\nz\n"
        );
        assert!(!super::splice(&f, "missing", "x").unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
