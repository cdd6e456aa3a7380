//! A progress bar of bytes on stderr, drawn only when stderr is a
//! terminal and the command's output is not JSON.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of bytes done (of a total, when one is known).
pub struct ByteBar {
    bar: Option<ProgressBar>,
}

impl ByteBar {
    /// A bar, drawn if `wanted` and stderr is a terminal.
    pub fn new(wanted: bool) -> ByteBar {
        let bar = (wanted && std::io::stderr().is_terminal()).then(|| {
            let style = ProgressStyle::with_template(
                "{wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(style);
            bar
        });
        ByteBar { bar }
    }

    pub fn is_drawn(&self) -> bool {
        self.bar.is_some()
    }

    pub fn set_total(&self, bytes: Option<u64>) {
        if let Some(bar) = &self.bar {
            match bytes {
                Some(bytes) => bar.set_length(bytes),
                None => bar.unset_length(),
            }
        }
    }

    pub fn set_message(&self, message: String) {
        if let Some(bar) = &self.bar {
            bar.set_message(message);
        }
    }

    pub fn inc(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    pub fn clear(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl crate::backup::Progress for ByteBar {
    fn wants_total(&self) -> bool {
        self.is_drawn()
    }

    fn start(&self, total: Option<u64>) {
        self.set_total(total);
    }

    fn advance(&self, bytes: u64) {
        self.inc(bytes);
    }
}
