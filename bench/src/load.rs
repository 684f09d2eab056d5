//! The load generator: `wrk` (Debian), pinned with taskset, results through a Lua `done` hook.

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

/// wrk's `done()` writes one line `WRKJSON {...}` with these fields.
const REPORT_LUA: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"errors_connect":%d,"errors_read":%d,' ..
    '"errors_write":%d,"errors_status":%d,"errors_timeout":%d,"p50_us":%d,"p90_us":%d,' ..
    '"p99_us":%d,"p999_us":%d,"mean_us":%.2f,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max))
end
"#;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WrkResult {
    pub requests: u64,
    pub duration_us: u64,
    pub errors_connect: u64,
    pub errors_read: u64,
    pub errors_write: u64,
    /// Responses that were not 2xx/3xx (wrk counts these as errors).
    pub errors_status: u64,
    pub errors_timeout: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub mean_us: f64,
    pub max_us: u64,
}

impl WrkResult {
    pub fn rps(&self) -> f64 {
        if self.duration_us == 0 {
            return 0.0;
        }
        self.requests as f64 / (self.duration_us as f64 / 1e6)
    }
}

pub struct Wrk {
    script: PathBuf,
    pub cpus: String,
    pub connections: u32,
    pub threads: u32,
}

impl Wrk {
    pub fn new(dir: &Path, cpus: &str, connections: u32, threads: u32) -> Result<Self> {
        let script = dir.join("report.lua");
        std::fs::write(&script, REPORT_LUA).context("writing wrk script")?;
        Ok(Self {
            script,
            cpus: cpus.to_string(),
            connections,
            threads,
        })
    }

    /// The command line, for the report.
    pub fn describe(&self, seconds: f64) -> String {
        format!(
            "taskset -c {} wrk -t{} -c{} -d{}s --latency -s report.lua -H <variant headers> http://127.0.0.1:<port>/bench",
            self.cpus, self.threads, self.connections, seconds
        )
    }

    pub fn run(&self, url: &str, headers: &[(String, String)], seconds: f64) -> Result<WrkResult> {
        let mut cmd = Command::new("taskset");
        cmd.arg("-c")
            .arg(&self.cpus)
            .arg("wrk")
            .arg(format!("-t{}", self.threads))
            .arg(format!("-c{}", self.connections))
            .arg(format!("-d{}s", seconds.max(1.0).round() as u64))
            .arg("--timeout")
            .arg("5s")
            .arg("-s")
            .arg(&self.script);
        for (k, v) in headers {
            cmd.arg("-H").arg(format!("{k}: {v}"));
        }
        cmd.arg(url);
        let out = cmd.output().context("running wrk (apt-get install wrk)")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "wrk failed ({}): {}{}",
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("WRKJSON "))
            .ok_or_else(|| anyhow!("no WRKJSON line in wrk output: {stdout}"))?;
        serde_json::from_str(line).with_context(|| format!("parsing wrk report {line}"))
    }
}
