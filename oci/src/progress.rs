//! Byte-count progress bars on stderr, shown only when asked for and stderr is a terminal.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar for `total` bytes, or a hidden one (all calls become no-ops).
pub(crate) fn bar(enabled: bool, total: u64, label: &str) -> ProgressBar {
    // Small modules finish before a bar is useful.
    if !enabled || total < 512 * 1024 {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(label.to_string());
    pb
}
