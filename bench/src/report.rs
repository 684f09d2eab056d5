//! Markdown tables from the results (pasted into BENCHMARKS.md).

use crate::controller::{ControllerArgs, ControllerReport};
use crate::filters::{FiltersArgs, FiltersReport, VariantResult};
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
        "{} rounds × {} s per variant (interleaved), {} s warm-up, {} connections. {}. `c4` group: {}.\n",
        r.rounds, r.duration_s, r.warmup_s, r.connections, r.pinning, r.multi
    );
    let _ = writeln!(
        s,
        "Dynamic module: `{}`. Load average (1/5/15 min): {} before the Envoys started; {} at the start of rounds 1…{}; {} after the last round.\n",
        r.dynamic_module,
        r.load_average.start,
        r.load_average
            .rounds
            .iter()
            .map(|l| l.split_whitespace().next().unwrap_or("?").to_string())
            .collect::<Vec<_>>()
            .join(" / "),
        r.rounds,
        r.load_average.end
    );
    let _ = writeln!(
        s,
        "Ratios (×none) are to `none` in this run, except the `c4` rows: to `none-c4`. ΔRSS is the Envoy's RSS after the run minus that baseline's.\n"
    );
    let _ = writeln!(
        s,
        "| variant | req/s | ×none | p50 µs | ×none | p99 µs | ×none | Envoy CPU µs/req | ×none | Envoy RSS MiB | ×none | ΔRSS MiB |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut group = String::new();
    for v in &r.variants {
        if v.variant.group != group {
            group = v.variant.group.clone();
        }
        // Without its baseline (e.g. `--only` without it), a row shows its medians and no ratios.
        let nan = crate::filters::Summary {
            rps: f64::NAN,
            p50_us: f64::NAN,
            p99_us: f64::NAN,
            cpu_us_per_request: f64::NAN,
            rss_mib: f64::NAN,
        };
        match (&v.median, v.ratio_to_none.as_ref().or(Some(&nan))) {
            (Some(m), Some(x)) => {
                let _ = writeln!(
                    s,
                    "| `{}` {} | {:.0} | {} | {:.0} | {} | {:.0} | {} | {:.1} | {} | {:.1} | {} | {} |",
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
                    ratio(x.rss_mib),
                    v.rss_delta_mib
                        .map(|d| format!("{d:+.1}"))
                        .unwrap_or_else(|| "–".into())
                );
            }
            _ => {
                let _ = writeln!(
                    s,
                    "| `{}` {} | not measured: {} ||||||||||| ",
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
    targets_markdown(&mut s, r);
    exactness_markdown(&mut s, r);
    let _ = writeln!(s, "\nVariants:\n");
    for v in &r.variants {
        let _ = writeln!(
            s,
            "- `{}` ({}): {}; expects {}{}{}.",
            v.variant.id,
            v.variant.group,
            v.variant.description,
            v.variant.expect.status,
            if v.variant.upstream {
                ", real upstream"
            } else {
                ", direct_response"
            },
            if v.variant.concurrency > 1 {
                format!(", Envoy --concurrency {}", v.variant.concurrency)
            } else {
                String::new()
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

fn find<'a>(r: &'a FiltersReport, id: &str) -> Option<&'a VariantResult> {
    r.variants.iter().find(|v| v.variant.id == id)
}

fn rps_ratio(r: &FiltersReport, id: &str) -> Option<f64> {
    find(r, id)?.ratio_to_none.as_ref().map(|x| x.rps)
}

/// Issue 12's targets for the dynamic module, checked against this run's medians.
fn targets_markdown(s: &mut String, r: &FiltersReport) {
    let _ = writeln!(
        s,
        "\n**Issue 12 targets** (dynamic module; throughput ratios to `none` in this run):\n"
    );
    let _ = writeln!(s, "| target | measured | wasm twin | native | met? |");
    let _ = writeln!(s, "|---|---:|---:|---:|---|");
    let show = |x: Option<f64>| x.map(ratio).unwrap_or_else(|| "–".into());
    // (label, dyn id, wasm id, native id, minimum ratio, must beat native)
    type Target<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, f64, bool);
    let rows: [Target; 7] = [
        (
            "`ua-dyn` pass ≥ 0.93×",
            "ua-dyn",
            "ua-wasm",
            Some("ua-rbac"),
            0.93,
            false,
        ),
        (
            "`ua-dyn-deny` deny ≥ 0.93×",
            "ua-dyn-deny",
            "ua-wasm-deny",
            Some("ua-rbac-deny"),
            0.93,
            false,
        ),
        (
            "`headers-dyn` ≥ 0.90× and above `header_mutation`",
            "headers-dyn",
            "headers-wasm",
            Some("headers-native"),
            0.90,
            true,
        ),
        (
            "`rl-dyn-pass` not hit ≥ 0.93×",
            "rl-dyn-pass",
            "rl-wasm-pass",
            Some("rl-native-pass"),
            0.93,
            false,
        ),
        (
            "`rl-dyn-limited` all limited ≥ 0.93×",
            "rl-dyn-limited",
            "rl-wasm-limited",
            Some("rl-native-limited"),
            0.93,
            false,
        ),
        (
            "`oidc-dyn` valid session ≥ 0.75× and above `oauth2`",
            "oidc-dyn",
            "oidc-wasm",
            Some("oauth2-native"),
            0.75,
            true,
        ),
        (
            "`chain-dyn` all four ≥ 0.60×",
            "chain-dyn",
            "chain-wasm",
            None,
            0.60,
            false,
        ),
    ];
    for (label, d, w, nat, min, beat) in rows {
        let m = rps_ratio(r, d);
        let n = nat.and_then(|n| rps_ratio(r, n));
        let verdict = match m {
            None => "not measured".to_string(),
            Some(x) => {
                let mut why = vec![];
                if x < min {
                    why.push(format!("{:.2} below {min:.2}", min - x));
                }
                if beat {
                    if let Some(n) = n {
                        if x <= n {
                            why.push(format!("{:.2} behind native", n - x));
                        }
                    }
                }
                if why.is_empty() {
                    "met".to_string()
                } else {
                    format!("missed ({})", why.join("; "))
                }
            }
        };
        let _ = writeln!(
            s,
            "| {label} | {} | {} | {} | {verdict} |",
            show(m),
            show(rps_ratio(r, w)),
            show(n)
        );
    }
    // RSS: the library loaded (one filter, and all four) against none.
    let delta = |id: &str| find(r, id).and_then(|v| v.rss_delta_mib);
    let worst = [
        "dyn-floor",
        "ua-dyn",
        "headers-dyn",
        "rl-dyn-pass",
        "oidc-dyn",
        "chain-dyn",
    ]
    .iter()
    .filter_map(|id| delta(id).map(|d| (*id, d)))
    .max_by(|a, b| a.1.total_cmp(&b.1));
    let mib = |x: Option<f64>| {
        x.map(|d| format!("{d:+.1} MiB"))
            .unwrap_or_else(|| "–".into())
    };
    let verdict = match worst {
        None => "not measured".to_string(),
        Some((id, d)) if d <= 5.0 => format!("met (largest: `{id}` {d:+.1} MiB)"),
        Some((id, d)) => format!("missed (`{id}` {d:+.1} MiB, {:.1} MiB over)", d - 5.0),
    };
    let _ = writeln!(
        s,
        "| Envoy RSS with the library loaded ≤ +5 MiB | `dyn-floor` {}, `chain-dyn` {} | `wasm-floor` {}, `chain-wasm` {} | `ua-rbac` {} | {verdict} |",
        mib(delta("dyn-floor")),
        mib(delta("chain-dyn")),
        mib(delta("wasm-floor")),
        mib(delta("chain-wasm")),
        mib(delta("ua-rbac"))
    );
    if let (Some(d), Some(n)) = (
        find(r, "rl-dyn-c4").and_then(|v| v.median.as_ref()),
        find(r, "rl-native-c4").and_then(|v| v.median.as_ref()),
    ) {
        let _ = writeln!(
            s,
            "\n`rl-dyn-c4` ÷ `rl-native-c4` (4 workers, not hit): {:.0} ÷ {:.0} req/s = {:.2}×; CPU {:.1} vs {:.1} µs/request.",
            d.rps,
            n.rps,
            d.rps / n.rps,
            d.cpu_us_per_request,
            n.cpu_us_per_request
        );
    }
}

fn exactness_markdown(s: &mut String, r: &FiltersReport) {
    if r.exactness.is_empty() {
        return;
    }
    let e0 = &r.exactness[0];
    let _ = writeln!(
        s,
        "\n**Exactness with {} workers**: a fresh Envoy per row, one local bucket of {} requests per day (burst {}), {} connections for {} s; passed and limited from Envoy's `/stats` (`downstream_rq_2xx`, `_4xx`):\n",
        e0.concurrency, e0.limit, e0.limit, e0.connections, e0.seconds
    );
    let _ = writeln!(
        s,
        "| filter | limit | requests | passed (2xx) | limited (4xx) | passed − limit |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    for e in &r.exactness {
        match (&e.error, e.passed) {
            (None, Some(p)) => {
                let _ = writeln!(
                    s,
                    "| `{}` {} | {} | {} | {} | {} | {:+} |",
                    e.id,
                    e.label,
                    e.limit,
                    e.requests,
                    p,
                    e.limited
                        .map(|x| x.to_string())
                        .unwrap_or_else(|| "–".into()),
                    p as i64 - e.limit as i64
                );
            }
            _ => {
                let _ = writeln!(
                    s,
                    "| `{}` {} | not measured: {} ||||| ",
                    e.id,
                    e.label,
                    e.error
                        .as_deref()
                        .unwrap_or("no result")
                        .replace('|', "/")
                        .replace('\n', " ")
                );
            }
        }
    }
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
    let measured: Vec<_> = r
        .convergence
        .iter()
        .filter(|c| c.error.is_none() && !c.single_edits_ms.is_empty())
        .collect();
    if !measured.is_empty() {
        let _ = writeln!(s, "\n**One-route edit** (the header value of one HTTPRoute on `gw0` → `gw0`'s Envoy ACKed the new generation; the other Envoys' LDS/CDS/RDS `update_attempt` counters compared before and after; controller CPU = utime + stime of `portcullis run`):\n");
        let _ = writeln!(
            s,
            "| HTTPRoutes | one-route edit → its Envoy ACK ms (median) | min | max | controller CPU s per one-route edit | controller CPU s per every-route edit | other Envoys received nothing |"
        );
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---|");
        for c in measured {
            let min = c
                .single_edits_ms
                .iter()
                .copied()
                .fold(f64::INFINITY, f64::min);
            let max = c.single_edits_ms.iter().copied().fold(0.0, f64::max);
            let _ = writeln!(
                s,
                "| {} | {:.1} | {:.1} | {:.1} | {:.3} | {:.3} | {} |",
                c.routes,
                c.single_median_ms,
                min,
                max,
                c.single_cpu_s,
                c.edit_cpu_s,
                match c.single_others_untouched {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "not measured",
                }
            );
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

/// `p` relative to the workspace root unless absolute.
fn under_root(root: &std::path::Path, p: &std::path::Path) -> std::path::PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        root.join(p)
    }
}

/// A controller run's views: the markdown (spliced into BENCHMARKS.md when asked) and charts.
pub fn publish_controller(report: &ControllerReport, args: &ControllerArgs) -> anyhow::Result<()> {
    let root = crate::filters::find_root()?;
    let md = controller_markdown(report);
    std::fs::write(under_root(&root, &args.markdown), &md)?;
    if args.update_benchmarks_md && splice(&root.join("BENCHMARKS.md"), "controller", &md)? {
        eprintln!("[bench] updated the controller tables in BENCHMARKS.md");
    }
    crate::chart::controller_charts(report, &under_root(&root, &args.charts))
}

/// A filters run's views: the markdown (spliced into BENCHMARKS.md when asked) and charts.
pub fn publish_filters(report: &FiltersReport, args: &FiltersArgs) -> anyhow::Result<()> {
    let root = crate::filters::find_root()?;
    let md = filters_markdown(report);
    let path = under_root(&root, &args.markdown);
    std::fs::write(&path, &md)?;
    if args.update_benchmarks_md && splice(&root.join("BENCHMARKS.md"), "filters", &md)? {
        eprintln!("[bench] updated the filters table in BENCHMARKS.md");
    }
    crate::chart::filters_charts(report, &under_root(&root, &args.charts))?;
    eprintln!("[bench] wrote {}", path.display());
    Ok(())
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
