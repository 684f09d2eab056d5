//! File provider: reads the YAML manifests under the `-f` paths and watches them for changes.
//!
//! Directories are read recursively (`*.yaml`, `*.yml`, `*.json`; hidden files and editor
//! leftovers skipped). A single file is watched through its parent directory, because editors
//! replace files by rename and an inotify watch on the old inode would go quiet.

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("manifest path {path} does not exist")]
    Missing { path: PathBuf },
    #[error("cannot watch {path}: {source}")]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
}

/// One manifest file's contents, or why it could not be read.
#[derive(Debug, Clone)]
pub struct ManifestFile {
    /// Path as given/found, used as the source name in load errors.
    pub name: String,
    pub content: Result<String, String>,
}

#[derive(Debug, Clone)]
pub struct FileProvider {
    paths: Vec<PathBuf>,
}

impl FileProvider {
    pub fn new(paths: Vec<PathBuf>) -> Result<Self, ProviderError> {
        for p in &paths {
            if !p.exists() {
                return Err(ProviderError::Missing { path: p.clone() });
            }
        }
        Ok(FileProvider { paths })
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Every manifest file under the paths, sorted by path (deterministic input order).
    pub fn read_all(&self) -> Vec<ManifestFile> {
        let mut files = Vec::new();
        for p in &self.paths {
            if p.is_dir() {
                collect_dir(p, &mut files);
            } else {
                files.push(p.clone());
            }
        }
        files.sort();
        files.dedup();
        files
            .into_iter()
            .map(|f| ManifestFile {
                name: f.display().to_string(),
                content: std::fs::read_to_string(&f)
                    .map_err(|e| format!("cannot read {}: {e}", f.display())),
            })
            .collect()
    }

    /// Watch the paths; every relevant change sends one `()` (coalesced: the channel holds one).
    /// Keep the returned watcher alive for as long as events are wanted.
    pub fn watch(&self, tx: mpsc::Sender<()>) -> Result<RecommendedWatcher, ProviderError> {
        let roots: Vec<PathBuf> = self
            .paths
            .iter()
            .map(|p| p.canonicalize().unwrap_or_else(|_| p.clone()))
            .collect();
        let filter_roots = roots.clone();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(ev) => {
                    if ev.kind.is_access() {
                        return;
                    }
                    let relevant = ev.paths.iter().any(|p| {
                        filter_roots.iter().any(|r| p.starts_with(r)) && is_manifest_path(p)
                    }) || ev.paths.is_empty();
                    if relevant {
                        // Full channel means a reload is already pending: that one will see this change.
                        let _ = tx.try_send(());
                    }
                }
                Err(e) => tracing::warn!(error = %e, "file watch error"),
            })
            .map_err(|source| ProviderError::Watch {
                path: PathBuf::new(),
                source,
            })?;
        for r in &roots {
            let (target, mode) = if r.is_dir() {
                (r.clone(), RecursiveMode::Recursive)
            } else {
                (
                    r.parent()
                        .map(Path::to_path_buf)
                        .unwrap_or_else(|| PathBuf::from(".")),
                    RecursiveMode::NonRecursive,
                )
            };
            watcher
                .watch(&target, mode)
                .map_err(|source| ProviderError::Watch {
                    path: target.clone(),
                    source,
                })?;
        }
        Ok(watcher)
    }
}

fn is_hidden_or_backup(name: &str) -> bool {
    name.starts_with('.') || name.ends_with('~') || name.starts_with('#')
}

/// True for a manifest file, and for directories (a new directory may bring manifests).
fn is_manifest_path(p: &Path) -> bool {
    let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    if is_hidden_or_backup(name) {
        return false;
    }
    match p.extension().and_then(|e| e.to_str()) {
        Some("yaml" | "yml" | "json") => true,
        Some(_) => false,
        None => true,
    }
}

fn collect_dir(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read manifest directory");
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if is_hidden_or_backup(name) {
            continue;
        }
        if path.is_dir() {
            collect_dir(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_recursively_sorted_and_skips_hidden_and_other_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).expect("mkdir");
        std::fs::write(dir.path().join("b.yaml"), "b").expect("write");
        std::fs::write(sub.join("a.yml"), "a").expect("write");
        std::fs::write(dir.path().join(".hidden.yaml"), "h").expect("write");
        std::fs::write(dir.path().join("notes.txt"), "t").expect("write");
        let p = FileProvider::new(vec![dir.path().to_path_buf()]).expect("provider");
        let files = p.read_all();
        let names: Vec<_> = files
            .iter()
            .map(|f| {
                Path::new(&f.name)
                    .strip_prefix(dir.path())
                    .expect("prefix")
                    .to_path_buf()
            })
            .collect();
        assert_eq!(
            names,
            vec![PathBuf::from("b.yaml"), PathBuf::from("sub/a.yml")]
        );
        assert_eq!(files[1].content.as_deref(), Ok("a"));
    }

    #[test]
    fn missing_path_is_an_error() {
        assert!(matches!(
            FileProvider::new(vec![PathBuf::from("/nonexistent/portcullis")]),
            Err(ProviderError::Missing { .. })
        ));
    }

    #[tokio::test]
    async fn watch_reports_a_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.yaml"), "a").expect("write");
        let p = FileProvider::new(vec![dir.path().to_path_buf()]).expect("provider");
        let (tx, mut rx) = mpsc::channel(1);
        let _w = p.watch(tx).expect("watch");
        std::fs::write(dir.path().join("a.yaml"), "changed").expect("write");
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv()).await;
        assert_eq!(got.ok().flatten(), Some(()));
    }
}
