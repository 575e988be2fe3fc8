//! Progress bars on stderr (drawn only when stderr is a terminal).

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar with a label; hidden when not attached to a terminal or when
/// `HANGAR_NO_PROGRESS` is set.
pub fn bar(len: u64, label: &str) -> ProgressBar {
    if std::env::var_os("HANGAR_NO_PROGRESS").is_some() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:40}] {pos}/{len} {msg} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(label.to_string());
    pb
}

pub use indicatif::ProgressBar as Bar;
