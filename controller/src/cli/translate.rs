//! `portcullis translate`: manifests -> xDS resources and statuses, offline and deterministic.

use std::path::{Path, PathBuf};

use anyhow::Context;
use portcullis_translator::wasm::source::OfflineResolver;
use portcullis_translator::xds::render::write_output;
use portcullis_translator::{parse_documents, OutputFormat, Resources, TranslateOptions};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Yaml,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct TranslateArgs {
    /// Manifest files or directories (YAML, multi-document; directories are read recursively).
    #[arg(short = 'f', long = "file", required = true)]
    pub files: Vec<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "yaml")]
    pub output: Format,
    /// GatewayClass controllerName this controller owns.
    #[arg(long, default_value = portcullis_translator::DEFAULT_CONTROLLER_NAME)]
    pub controller_name: String,
    /// Directory with the built-in modules `oidc.wasm` and `ratelimit.wasm`, read only when the
    /// manifests hold a SecurityPolicy or BackendTrafficPolicy. Default as for `portcullis run`:
    /// `dist/wasm` under the current directory, else `../wasm` beside the executable. The output
    /// pins each module by the sha256 of its file, served at `<wasm-base-url>/wasm/<sha256>.wasm`.
    #[arg(long, value_name = "DIR")]
    pub builtin_wasm_dir: Option<PathBuf>,
    /// Directory with the dynamic module `libportcullis.so`, as `portcullis run
    /// --dynamic-module-dir` (same default). Read only when the manifests hold a SecurityPolicy
    /// or BackendTrafficPolicy; the output pins it by sha256, served at
    /// `<wasm-base-url>/dynamic/<sha256>.so`.
    #[arg(long, value_name = "DIR")]
    pub dynamic_module_dir: Option<PathBuf>,
    /// Runtime of the built-in filters, as `portcullis run --builtin-runtime` (default:
    /// `dynamic` when the library is found, else `wasm`).
    #[arg(long, value_name = "wasm|dynamic")]
    pub builtin_runtime: Option<portcullis_translator::BuiltinRuntime>,
    /// Base URL the built-in modules are shown served from (a controller's `--wasm-addr`).
    #[arg(long, default_value = "http://127.0.0.1:18002")]
    pub wasm_base_url: String,
    /// `HOST:PORT` of the rate-limit gRPC service, as `portcullis run --ratelimit-service`.
    #[arg(long, value_name = "HOST:PORT", value_parser = crate::builtin::parse_host_port)]
    pub ratelimit_service: Option<String>,
    /// As `portcullis run`: Backend on by default, loopback and metadata targets refused.
    #[command(flatten)]
    pub egress: super::egress::EgressArgs,
}

/// `*.yaml` / `*.yml` files under `path` (or `path` itself), sorted for deterministic output.
fn collect(path: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_dir() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("listing {}", path.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("listing {}", path.display()))?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect(&p, out)?;
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
    Ok(())
}

pub async fn run(args: TranslateArgs) -> anyhow::Result<()> {
    let mut files = Vec::new();
    for f in &args.files {
        collect(f, &mut files)?;
    }
    let mut parsed = Vec::new();
    let mut load_errors = 0usize;
    for f in &files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let (res, errs) = parse_documents(&f.display().to_string(), &text);
        for e in &errs {
            tracing::warn!("{e}");
            eprintln!("warning: {e}");
        }
        load_errors += errs.len();
        parsed.extend(res);
    }
    let resources = Resources::from_parsed(parsed);
    for (api_version, kind, name, source) in &resources.others {
        tracing::debug!("ignoring {api_version} {kind} {name} from {source}");
    }
    // Only policies that run a built-in module need the files: skip reading and hashing them
    // otherwise.
    let needs_builtin =
        !resources.security_policies.is_empty() || !resources.backend_traffic_policies.is_empty();
    let builtin_modules = match (&args.builtin_wasm_dir, needs_builtin) {
        (_, false) => Default::default(),
        (Some(dir), true) => crate::builtin::read_builtin_dir(dir)?,
        (None, true) => match crate::builtin::default_builtin_dir() {
            Some(dir) => crate::builtin::read_builtin_dir(&dir)?,
            None => Vec::new(),
        },
    };
    let dynamic_module = match (needs_builtin, &args.dynamic_module_dir) {
        (false, _) => None,
        (true, Some(dir)) => crate::builtin::read_dynamic_module(dir)?,
        (true, None) => match crate::builtin::default_dynamic_module_dir() {
            Some(dir) => crate::builtin::read_dynamic_module(&dir)?,
            None => None,
        },
    };
    let builtin_runtime = if needs_builtin {
        crate::builtin::choose_runtime(args.builtin_runtime, dynamic_module.is_some())?
    } else {
        args.builtin_runtime.unwrap_or_default()
    };
    let opts = TranslateOptions {
        controller_name: args.controller_name.clone(),
        builtin_modules: crate::builtin::offline_sources(&builtin_modules, &args.wasm_base_url),
        builtin_runtime,
        builtin_dynamic_module: dynamic_module
            .as_ref()
            .map(|m| crate::builtin::offline_dynamic_source(m, &args.wasm_base_url)),
        ratelimit_service: args.ratelimit_service.clone(),
        egress: args.egress.policy(true),
        ..Default::default()
    };
    let out = portcullis_translator::translate(&resources, &opts, &OfflineResolver);
    let format = match args.output {
        Format::Yaml => OutputFormat::Yaml,
        Format::Json => OutputFormat::Json,
    };
    // Streamed, resource by resource: the whole document never sits in memory.
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    write_output(&out, format, &mut w).context("rendering output")?;
    std::io::Write::flush(&mut w).context("writing output")?;
    if load_errors > 0 {
        anyhow::bail!("{load_errors} document(s) could not be loaded (see warnings above)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::collect;

    #[test]
    fn directories_are_walked_in_order_and_only_yaml_is_read() {
        let dir = std::env::temp_dir().join(format!("portcullis-translate-{}", std::process::id()));
        let sub = dir.join("b-sub");
        std::fs::create_dir_all(&sub).expect("mkdir");
        for f in ["z.yaml", "a.yml", "notes.txt"] {
            std::fs::write(dir.join(f), "").expect("write");
        }
        std::fs::write(sub.join("c.yaml"), "").expect("write");
        let mut out = Vec::new();
        collect(&dir, &mut out).expect("collect");
        let names: Vec<_> = out
            .iter()
            .map(|p| {
                p.strip_prefix(&dir)
                    .expect("under dir")
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(names, vec!["a.yml", "b-sub/c.yaml", "z.yaml"]);
        // A file named explicitly is read whatever its extension.
        let mut one = Vec::new();
        collect(&dir.join("notes.txt"), &mut one).expect("collect");
        assert_eq!(one.len(), 1);
        assert!(collect(&dir.join("missing"), &mut one).is_err());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
