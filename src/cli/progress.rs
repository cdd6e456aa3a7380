//! Progress bars on stderr, drawn only when stderr is a terminal and the
//! command's output is neither JSON nor `--quiet`: [`ByteBar`], of bytes,
//! and [`StageBar`], of the stages an engine [`Meter`] reports.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::engine::{Meter, Unit};

/// A bar on stderr if `wanted` and stderr is a terminal.
fn bar_on_stderr(wanted: bool, template: &str) -> Option<ProgressBar> {
    (wanted && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(style(template));
        bar
    })
}

/// The style of `template`, or indicatif's plain bar if it were wrong.
fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// A bar of bytes done (of a total, when one is known).
pub struct ByteBar {
    bar: Option<ProgressBar>,
}

impl ByteBar {
    /// A bar, drawn if `wanted` and stderr is a terminal.
    pub fn new(wanted: bool) -> ByteBar {
        let template = "{wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {eta} {msg}";
        ByteBar {
            bar: bar_on_stderr(wanted, template),
        }
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

/// A bar of the stage an engine operation is in (`volume verify`, `gc`,
/// an import or export): its name, and the bytes or objects done of it.
pub struct StageBar {
    bar: Option<ProgressBar>,
}

impl StageBar {
    /// Bytes of a stage in bytes; objects (with their rate) otherwise.
    const BYTES: &str = "{msg} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {eta}";
    const OBJECTS: &str = "{msg} {wide_bar} {human_pos}/{human_len} {per_sec} {eta}";
    const OBJECTS_UNCOUNTED: &str = "{spinner} {msg} {human_pos} {per_sec}";

    /// A bar, drawn if `wanted` and stderr is a terminal.
    pub fn new(wanted: bool) -> StageBar {
        StageBar {
            bar: bar_on_stderr(wanted, StageBar::OBJECTS_UNCOUNTED),
        }
    }

    pub fn clear(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Meter for StageBar {
    fn stage(&self, what: &str, unit: Unit, total: Option<u64>) {
        let Some(bar) = &self.bar else { return };
        let template = match (unit, total) {
            (Unit::Bytes, _) => StageBar::BYTES,
            (Unit::Objects, Some(_)) => StageBar::OBJECTS,
            (Unit::Objects, None) => StageBar::OBJECTS_UNCOUNTED,
        };
        // The style draws nothing; the message and then the counts are
        // each drawn at once.
        bar.set_style(style(template));
        bar.set_message(what.to_string());
        bar.reset();
        match total {
            Some(total) => bar.set_length(total),
            None => bar.unset_length(),
        }
    }

    fn advance(&self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(done);
        }
    }
}
