//! `--read-only`, `--follow` and `NAME@SNAP`, as `serve` and `attach`
//! take them: whether a volume is opened to write (its lease) or to read
//! (no lease; a snapshot, or the volume pinned or following its writer).

use std::time::Duration;

use crate::attach::registry::Access;
use crate::engine::{self, EngineOptions, Follow, Volume, VolumeRef};
use crate::store::Store;

#[derive(Debug, Default, clap::Args)]
pub struct ReadOnlyArgs {
    /// Take no writer's lease: serve what the store holds and refuse
    /// writes, trims and zeroes (EROFS), beside the volume's writer on any
    /// host (NAME@SNAP is always read-only)
    #[arg(long)]
    read_only: bool,
    /// With --read-only: follow the writer's commits as they land, so this
    /// host reads a live volume (each request reads one whole commit)
    #[arg(long)]
    follow: bool,
    /// How often --follow looks for new commits [default: 1s]
    #[arg(long, value_name = "DURATION")]
    follow_interval: Option<humantime::Duration>,
}

/// How a volume is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// To write: its lease, its log.
    Write,
    /// To read only, following its writer as this says.
    Read(Follow),
}

impl ReadOnlyArgs {
    /// How `what` is to be opened; bad combinations are refused in one
    /// line that says what to write instead.
    pub fn mode(&self, what: &VolumeRef) -> anyhow::Result<Mode> {
        let interval = self.follow_interval.map(Duration::from);
        anyhow::ensure!(
            interval.is_none() || self.follow,
            "--follow-interval is how often --follow looks for new commits: add --follow, or leave it out"
        );
        anyhow::ensure!(
            interval.is_none_or(|every| !every.is_zero()),
            "--follow-interval must be longer than zero, e.g. 1s"
        );
        anyhow::ensure!(
            !self.follow || self.read_only || what.snapshot().is_some(),
            "--follow reads a volume beside its writer, without its lease: add --read-only (`--read-only --follow {what}`)"
        );
        if self.follow && what.snapshot().is_some() {
            anyhow::bail!(
                "`{what}` is a snapshot, which never changes: --follow follows a volume's writer; leave out --follow, or follow `{}`",
                what.name()
            );
        }
        Ok(
            match (self.read_only || what.snapshot().is_some(), self.follow) {
                (false, _) => Mode::Write,
                (true, false) => Mode::Read(Follow::Pinned),
                (true, true) => {
                    Mode::Read(Follow::Every(interval.unwrap_or(Follow::DEFAULT_INTERVAL)))
                }
            },
        )
    }

    /// Whether --read-only was given.
    pub fn read_only(&self) -> bool {
        self.read_only
    }
}

impl Mode {
    pub fn is_read_only(self) -> bool {
        matches!(self, Mode::Read(_))
    }

    /// How the attach registry shows it.
    pub fn access(self) -> Access {
        match self {
            Mode::Write => Access::ReadWrite,
            Mode::Read(Follow::Pinned) => Access::ReadOnly,
            Mode::Read(Follow::Every(_)) => Access::Following,
        }
    }
}

/// Opens `what` as `mode` says.
pub async fn open(
    store: &Store,
    what: &VolumeRef,
    mode: Mode,
    options: EngineOptions,
) -> Result<Volume, engine::EngineError> {
    match mode {
        Mode::Write => Volume::open(store, what.writable()?, options).await,
        Mode::Read(follow) => Volume::open_read_only(store, what, follow, options).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(read_only: bool, follow: bool, interval: Option<&str>) -> ReadOnlyArgs {
        ReadOnlyArgs {
            read_only,
            follow,
            follow_interval: interval.map(|i| i.parse().unwrap()),
        }
    }

    #[test]
    fn flags_and_names_make_a_mode_or_a_one_line_refusal() {
        let volume: VolumeRef = "data".parse().unwrap();
        let snapshot: VolumeRef = "data@s1".parse().unwrap();
        let every = |secs| Mode::Read(Follow::Every(Duration::from_secs(secs)));
        for (args, what, mode) in [
            (args(false, false, None), &volume, Mode::Write),
            (args(true, false, None), &volume, Mode::Read(Follow::Pinned)),
            (
                args(false, false, None),
                &snapshot,
                Mode::Read(Follow::Pinned),
            ),
            (
                args(true, false, None),
                &snapshot,
                Mode::Read(Follow::Pinned),
            ),
            (args(true, true, None), &volume, every(1)),
            (args(true, true, Some("5s")), &volume, every(5)),
        ] {
            assert_eq!(args.mode(what).unwrap(), mode, "{args:?} {what}");
        }
        for (args, what, says) in [
            (args(false, true, None), &volume, "add --read-only"),
            (args(true, true, None), &snapshot, "follow `data`"),
            (args(false, true, None), &snapshot, "follow `data`"),
            (args(true, false, Some("1s")), &volume, "add --follow"),
            (args(true, true, Some("0s")), &volume, "longer than zero"),
        ] {
            let refused = args.mode(what).unwrap_err().to_string();
            assert!(refused.contains(says), "{args:?} {what}: {refused}");
            assert!(!refused.contains('\n'), "{refused}");
        }
    }
}
