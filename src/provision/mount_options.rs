//! `--mount-options`: the btrfs mount options a provisioned attach takes,
//! and the `nosuid` and `nodev` a host may lift.
//!
//! btrfs options (`ssd,commit=120,space_cache=v2`) are checked against a
//! list of those that keep zeroblk's layout and durability, each with its
//! value, and are remembered with the volume, so they are checked again
//! when read back: whoever can write the bucket writes them. Options that
//! would mount something else than the top of the filesystem (`subvol=`),
//! drop the flushes the write-back log relies on (`nobarrier`), or let a
//! damaged volume take the host down (`fatal_errors=`) are refused with
//! the reason; anything not on the list is refused with the list.
//!
//! `suid` and `dev` lift this host's `nosuid` and `nodev`, and are never
//! remembered: a volume's files come from a bucket, and whoever can write
//! the bucket could plant a setuid binary or a device node in them.
//! `compress=CODEC` is `--compress CODEC`, and `defaults` asks for no
//! btrfs option beyond zeroblk's own.

use std::fmt;
use std::str::FromStr;

use nix::mount::MsFlags;

use super::BtrfsCompression;
use crate::size::ByteSize;

/// Which of the mount's `nosuid` and `nodev` this host lifts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lifted {
    suid: bool,
    dev: bool,
}

impl Lifted {
    /// The `nosuid` and `nodev` that stay.
    pub fn flags(self) -> MsFlags {
        let mut flags = MsFlags::empty();
        flags.set(MsFlags::MS_NOSUID, !self.suid);
        flags.set(MsFlags::MS_NODEV, !self.dev);
        flags
    }

    /// Reads `suid` or `dev`; false for any other word.
    fn lift(&mut self, word: &str) -> bool {
        match word {
            "suid" => self.suid = true,
            "dev" => self.dev = true,
            _ => return false,
        }
        true
    }
}

impl fmt::Display for Lifted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lifted = [("suid", self.suid), ("dev", self.dev)];
        let names: Vec<&str> = lifted
            .iter()
            .filter(|(_, on)| *on)
            .map(|(n, _)| *n)
            .collect();
        f.write_str(&names.join(","))
    }
}

impl FromStr for Lifted {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut lifted = Lifted::default();
        for word in words(s) {
            if !lifted.lift(word) {
                return Err(format!(
                    "`{word}` is not a mount option zeroblk lifts: it lifts suid, dev or suid,dev"
                ));
            }
        }
        Ok(lifted)
    }
}

/// The comma-separated words of an option list, blanks dropped.
fn words(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|w| !w.is_empty())
}

/// How an option reaches the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// In btrfs's mount data string.
    Data,
    /// A flag of the mount itself (the access-time options), in place of
    /// zeroblk's `noatime` when it sets the access time.
    Flag(MsFlags),
}

/// A btrfs mount option zeroblk accepts.
struct Known {
    name: &'static str,
    /// What the option sets: two options that set the same thing
    /// contradict each other or repeat, and an option that sets what one
    /// of zeroblk's own sets takes its place.
    sets: &'static str,
    kind: Kind,
    /// What the value must be (shown in the list) and its check; `None`
    /// for an option without a value.
    value: Option<(&'static str, ValueCheck)>,
}

/// Checks an option's value; the error says what the option takes.
type ValueCheck = fn(&str) -> Result<(), String>;

const fn word(name: &'static str, sets: &'static str) -> Known {
    Known {
        name,
        sets,
        kind: Kind::Data,
        value: None,
    }
}

const fn valued(name: &'static str, shown: &'static str, check: ValueCheck) -> Known {
    Known {
        name,
        sets: name,
        kind: Kind::Data,
        value: Some((shown, check)),
    }
}

const fn atime(name: &'static str, sets: &'static str, flag: MsFlags) -> Known {
    Known {
        name,
        sets,
        kind: Kind::Flag(flag),
        value: None,
    }
}

/// What zeroblk's own `noatime` sets.
const ATIME: &str = "atime";
/// What zeroblk's own `discard=async` sets.
const DISCARD: &str = "discard";
/// What zeroblk's own `compress=` (from `--compress`) sets.
const COMPRESSION: &str = "compress";

/// The btrfs options `--mount-options` accepts (Linux 6.x's names).
static KNOWN: &[Known] = &[
    word("ssd", "ssd"),
    word("nossd", "ssd"),
    word("ssd_spread", "ssd_spread"),
    word("nossd_spread", "ssd_spread"),
    valued("commit", "SECONDS", commit_seconds),
    valued("space_cache", "v2", space_cache),
    word(DISCARD, DISCARD),
    valued(DISCARD, "async|sync", discard_mode),
    word("nodiscard", DISCARD),
    word("autodefrag", "autodefrag"),
    word("noautodefrag", "autodefrag"),
    Known {
        sets: COMPRESSION,
        ..valued("compress-force", "CODEC", compression)
    },
    word("datacow", "datacow"),
    word("nodatacow", "datacow"),
    word("datasum", "datasum"),
    word("nodatasum", "datasum"),
    word("flushoncommit", "flushoncommit"),
    word("noflushoncommit", "flushoncommit"),
    word("treelog", "treelog"),
    word("notreelog", "treelog"),
    word("acl", "acl"),
    word("noacl", "acl"),
    word("barrier", "barrier"),
    valued("max_inline", "BYTES", max_inline),
    valued("thread_pool", "N", thread_pool),
    atime("noatime", ATIME, MsFlags::MS_NOATIME),
    atime("relatime", ATIME, MsFlags::MS_RELATIME),
    atime("strictatime", ATIME, MsFlags::MS_STRICTATIME),
    atime("nodiratime", "nodiratime", MsFlags::MS_NODIRATIME),
    atime("lazytime", "lazytime", MsFlags::MS_LAZYTIME),
];

/// Options btrfs knows that zeroblk refuses, and why.
static REFUSED: &[(&str, &str)] = &[
    (
        "subvol",
        "zeroblk mounts the top of the filesystem, where @, @home and @snapshots live: leave it out, and bind-mount a subvolume where you want it alone",
    ),
    (
        "subvolid",
        "zeroblk mounts the top of the filesystem, where @, @home and @snapshots live: leave it out, and bind-mount a subvolume where you want it alone",
    ),
    (
        "device",
        "a volume's btrfs lives on its own device alone: leave it out",
    ),
    (
        "ro",
        "zeroblk makes subvolumes and snapshots on the mount; attach NAME@SNAP or --read-only for a read-only device, and mount it yourself",
    ),
    (
        "nobarrier",
        "btrfs would stop sending the flushes that make writes durable in the volume's write-back log: leave it out",
    ),
    (
        "fatal_errors",
        "a damaged volume (and whoever can write the bucket can damage one) could panic the host: leave it out",
    ),
    (
        "degraded",
        "it is for mounting a damaged filesystem once, by hand: mount the device yourself",
    ),
    (
        "rescue",
        "it is for mounting a damaged filesystem once, by hand: mount the device yourself",
    ),
    (
        "usebackuproot",
        "it is for mounting a damaged filesystem once, by hand: mount the device yourself",
    ),
    (
        "nologreplay",
        "it is for mounting a damaged filesystem once, by hand: mount the device yourself",
    ),
    (
        "clear_cache",
        "it rebuilds the free space cache once, and would run at every attach: mount the device yourself for that",
    ),
    (
        "compress",
        "a volume keeps its compression apart from its other mount options: give --compress CODEC (or compress=CODEC in --mount-options)",
    ),
];

fn commit_seconds(value: &str) -> Result<(), String> {
    match value.parse::<u32>() {
        Ok(1..=300) => Ok(()),
        _ => Err("seconds between transaction commits, 1 to 300".into()),
    }
}

fn space_cache(value: &str) -> Result<(), String> {
    match value {
        "v2" => Ok(()),
        _ => Err("v2 (the free space tree; v1 is deprecated)".into()),
    }
}

fn discard_mode(value: &str) -> Result<(), String> {
    match value {
        "async" | "sync" => Ok(()),
        _ => Err("async or sync".into()),
    }
}

fn compression(value: &str) -> Result<(), String> {
    value.parse::<BtrfsCompression>().map(|_| ())
}

fn max_inline(value: &str) -> Result<(), String> {
    match value.parse::<ByteSize>() {
        Ok(size) if size.bytes() <= 4096 => Ok(()),
        _ => Err("a size in bytes, 0 to 4096 (4K)".into()),
    }
}

fn thread_pool(value: &str) -> Result<(), String> {
    match value.parse::<u32>() {
        Ok(1..=1024) => Ok(()),
        _ => Err("a number of threads, 1 to 1024".into()),
    }
}

/// Every option `--mount-options` takes, for the line that refuses one.
fn accepted() -> String {
    let btrfs: Vec<String> = KNOWN
        .iter()
        .map(|known| match known.value {
            Some((shown, _)) => format!("{}={shown}", known.name),
            None => known.name.to_string(),
        })
        .collect();
    format!(
        "--mount-options takes suid, dev, compress=CODEC, defaults, and the btrfs options {}",
        btrfs.join(", ")
    )
}

/// One accepted btrfs option, as written (`ssd`, `commit=120`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct BtrfsOption {
    text: String,
    known: &'static Known,
}

impl fmt::Debug for Known {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// One entry of [`KNOWN`]: a name, with or without a value.
impl PartialEq for Known {
    fn eq(&self, other: &Known) -> bool {
        self.name == other.name && self.value.is_some() == other.value.is_some()
    }
}

impl Eq for Known {}

impl FromStr for BtrfsOption {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (name, value) = match text.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (text, None),
        };
        if let Some((_, why)) = REFUSED.iter().find(|(refused, _)| *refused == name) {
            return Err(format!("`{text}` is refused: {why}"));
        }
        let mut same_name = KNOWN.iter().filter(|k| k.name == name).peekable();
        if same_name.peek().is_none() {
            return Err(format!(
                "`{text}` is not a mount option zeroblk accepts: {}",
                accepted()
            ));
        }
        let known = same_name
            .find(|k| k.value.is_some() == value.is_some())
            .ok_or_else(|| match value {
                Some(_) => format!("`{text}`: {name} takes no value"),
                None => format!("`{text}` needs a value: {}", shown(name)),
            })?;
        if let (Some(value), Some((_, check))) = (value, known.value) {
            check(value).map_err(|what| format!("`{text}`: {name} takes {what}"))?;
        }
        Ok(BtrfsOption {
            text: text.to_string(),
            known,
        })
    }
}

/// How option `name` is written with its value (`commit=SECONDS`).
fn shown(name: &str) -> String {
    KNOWN
        .iter()
        .filter(|k| k.name == name)
        .find_map(|k| k.value)
        .map_or_else(|| name.to_string(), |(value, _)| format!("{name}={value}"))
}

/// The btrfs options a volume is mounted with, beyond zeroblk's own;
/// remembered with the volume as one comma-separated string.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BtrfsOptions(Vec<BtrfsOption>);

impl BtrfsOptions {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether one of these options sets what `setting` names (see
    /// [`Known::sets`]).
    fn set(&self, setting: &str) -> bool {
        self.0.iter().any(|o| o.known.sets == setting)
    }

    /// Whether these options say how btrfs compresses (`compress-force=`),
    /// in place of `--compress`.
    pub fn set_compression(&self) -> bool {
        self.set(COMPRESSION)
    }

    /// The mount's flags: zeroblk's `noatime` unless these set the access
    /// time, and the flags these add.
    pub fn flags(&self) -> MsFlags {
        let mut flags = match self.set(ATIME) {
            true => MsFlags::empty(),
            false => MsFlags::MS_NOATIME,
        };
        for option in &self.0 {
            if let Kind::Flag(flag) = option.known.kind {
                flags |= flag;
            }
        }
        flags
    }

    /// The mount's data string: zeroblk's `compress=` and `discard=async`,
    /// each unless these set the same, then these options' own.
    pub fn data(&self, compress: &BtrfsCompression) -> String {
        let compress = compress.mount_option().filter(|_| !self.set(COMPRESSION));
        let discard = Some("discard=async".to_string()).filter(|_| !self.set(DISCARD));
        let own = self
            .0
            .iter()
            .filter(|o| o.known.kind == Kind::Data)
            .map(|o| o.text.clone());
        compress
            .into_iter()
            .chain(discard)
            .chain(own)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Adds `option`, refusing one that sets what an earlier one set.
    fn push(&mut self, option: BtrfsOption) -> Result<(), String> {
        if let Some(earlier) = self.0.iter().find(|o| o.known.sets == option.known.sets) {
            return Err(format!(
                "`{}` and `{}` both set {}: give one",
                earlier.text, option.text, option.known.sets
            ));
        }
        self.0.push(option);
        Ok(())
    }
}

impl FromStr for BtrfsOptions {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut options = BtrfsOptions::default();
        for word in words(s) {
            options.push(word.parse()?)?;
        }
        Ok(options)
    }
}

impl fmt::Display for BtrfsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let texts: Vec<&str> = self.0.iter().map(|o| o.text.as_str()).collect();
        f.write_str(&texts.join(","))
    }
}

impl TryFrom<String> for BtrfsOptions {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<BtrfsOptions> for String {
    fn from(value: BtrfsOptions) -> Self {
        value.to_string()
    }
}

/// `--mount-options` as given: what this host lifts, the compression it
/// names, and the btrfs options, `None` when it names none (nor
/// `defaults`), so the volume's remembered ones stay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountOptions {
    pub lifted: Lifted,
    pub compress: Option<BtrfsCompression>,
    pub btrfs: Option<BtrfsOptions>,
}

impl FromStr for MountOptions {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut options = MountOptions::default();
        for word in words(s) {
            if options.lifted.lift(word) {
                continue;
            }
            if word == "defaults" {
                options.btrfs.get_or_insert_default();
                continue;
            }
            if let Some(codec) = word.strip_prefix("compress=") {
                let codec: BtrfsCompression = codec.parse()?;
                if options.compress.replace(codec).is_some() {
                    return Err("compress= is given twice: give it once".into());
                }
                continue;
            }
            options.btrfs.get_or_insert_default().push(word.parse()?)?;
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zstd() -> BtrfsCompression {
        BtrfsCompression::default()
    }

    #[test]
    fn lifts_take_nosuid_and_nodev_off_only_when_asked() {
        let none = Lifted::default().flags();
        assert_eq!(none, MsFlags::MS_NOSUID | MsFlags::MS_NODEV);
        let suid: Lifted = "suid".parse().unwrap();
        assert_eq!(suid.flags(), MsFlags::MS_NODEV);
        let both: Lifted = "suid, dev".parse().unwrap();
        assert_eq!(both.flags(), MsFlags::empty());
        assert!("exec".parse::<Lifted>().is_err());
        for text in ["", "suid", "dev", "suid,dev"] {
            assert_eq!(text.parse::<Lifted>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn the_guides_options_go_in_the_data_string_after_zeroblks_own() {
        let options: BtrfsOptions = "ssd,commit=120,space_cache=v2".parse().unwrap();
        assert_eq!(
            options.data(&zstd()),
            "compress=zstd:3,discard=async,ssd,commit=120,space_cache=v2"
        );
        assert_eq!(options.flags(), MsFlags::MS_NOATIME);
        assert_eq!(options.to_string(), "ssd,commit=120,space_cache=v2");
        let none = BtrfsOptions::default();
        assert_eq!(none.data(&zstd()), "compress=zstd:3,discard=async");
        assert_eq!(none.data(&"none".parse().unwrap()), "discard=async");
    }

    #[test]
    fn an_option_that_sets_what_zeroblks_own_sets_takes_its_place() {
        let options: BtrfsOptions = "nodiscard,relatime,compress-force=zstd:1,lazytime"
            .parse()
            .unwrap();
        assert_eq!(options.data(&zstd()), "nodiscard,compress-force=zstd:1");
        assert_eq!(options.flags(), MsFlags::MS_RELATIME | MsFlags::MS_LAZYTIME);
        assert!(options.set_compression());
        let sync: BtrfsOptions = "discard=sync".parse().unwrap();
        assert_eq!(sync.data(&zstd()), "compress=zstd:3,discard=sync");
    }

    #[test]
    fn values_are_checked() {
        for ok in [
            "commit=1",
            "commit=300",
            "max_inline=0",
            "max_inline=2048",
            "max_inline=4K",
            "thread_pool=8",
            "compress-force=zlib:9",
            "discard=async",
            "discard",
        ] {
            assert!(ok.parse::<BtrfsOptions>().is_ok(), "{ok}");
        }
        for (bad, said) in [
            (
                "commit=0",
                "`commit=0`: commit takes seconds between transaction commits, 1 to 300",
            ),
            ("commit=301", "1 to 300"),
            ("commit=x", "1 to 300"),
            ("commit", "`commit` needs a value: commit=SECONDS"),
            ("ssd=1", "`ssd=1`: ssd takes no value"),
            ("space_cache=v1", "v1 is deprecated"),
            ("space_cache", "needs a value: space_cache=v2"),
            ("discard=later", "async or sync"),
            ("compress-force=gzip", "not a btrfs compression"),
            ("max_inline=1M", "0 to 4096"),
            ("thread_pool=0", "1 to 1024"),
        ] {
            let error = bad.parse::<BtrfsOptions>().unwrap_err();
            assert!(error.contains(said), "{bad}: {error}");
        }
    }

    #[test]
    fn options_that_break_the_layout_or_durability_are_refused_with_the_reason() {
        for (bad, said) in [
            ("subvol=@home", "zeroblk mounts the top of the filesystem"),
            ("subvolid=5", "zeroblk mounts the top of the filesystem"),
            ("device=/dev/sdb", "its own device alone"),
            ("nobarrier", "flushes"),
            ("fatal_errors=panic", "panic the host"),
            ("ro", "read-only"),
            ("rescue=all", "by hand"),
        ] {
            let error = bad.parse::<BtrfsOptions>().unwrap_err();
            assert!(
                error.starts_with(&format!("`{bad}` is refused: ")),
                "{error}"
            );
            assert!(error.contains(said), "{bad}: {error}");
        }
    }

    #[test]
    fn an_unknown_option_is_named_in_one_line_with_the_list() {
        let error = "ssd,turbo".parse::<BtrfsOptions>().unwrap_err();
        assert!(
            error.starts_with(
                "`turbo` is not a mount option zeroblk accepts: --mount-options takes suid, dev"
            ),
            "{error}"
        );
        for listed in [
            "ssd",
            "commit=SECONDS",
            "space_cache=v2",
            "noatime",
            "compress=CODEC",
        ] {
            assert!(error.contains(listed), "{listed} not in {error}");
        }
        assert_eq!(error.lines().count(), 1);
    }

    #[test]
    fn two_options_that_set_the_same_are_refused() {
        let error = "ssd,nossd".parse::<BtrfsOptions>().unwrap_err();
        assert_eq!(error, "`ssd` and `nossd` both set ssd: give one");
        assert!("commit=5,commit=10".parse::<BtrfsOptions>().is_err());
        assert!("noatime,relatime".parse::<BtrfsOptions>().is_err());
        assert!("ssd,ssd_spread".parse::<BtrfsOptions>().is_ok());
    }

    #[test]
    fn remembered_options_round_trip_as_a_string_and_are_checked_when_read() {
        let options: BtrfsOptions = "ssd,commit=120".parse().unwrap();
        let json = serde_json::to_string(&options).unwrap();
        assert_eq!(json, r#""ssd,commit=120""#);
        assert_eq!(
            serde_json::from_str::<BtrfsOptions>(&json).unwrap(),
            options
        );
        assert!(serde_json::from_str::<BtrfsOptions>(r#""subvol=@""#).is_err());
        assert!(serde_json::from_str::<BtrfsOptions>(r#""compress=lzo""#).is_err());
    }

    #[test]
    fn the_flag_splits_into_lifts_compression_and_btrfs_options() {
        let flag: MountOptions = "suid,ssd,compress=zstd:9,commit=120".parse().unwrap();
        assert_eq!(flag.lifted, "suid".parse().unwrap());
        assert_eq!(flag.compress, Some("zstd:9".parse().unwrap()));
        assert_eq!(flag.btrfs.unwrap().to_string(), "ssd,commit=120");
        let lifts_only: MountOptions = "suid,dev".parse().unwrap();
        assert_eq!(
            lifts_only.btrfs, None,
            "the volume's remembered options stay"
        );
        let defaults: MountOptions = "defaults".parse().unwrap();
        assert_eq!(
            defaults.btrfs,
            Some(BtrfsOptions::default()),
            "forgets them"
        );
        assert!("compress=gzip".parse::<MountOptions>().is_err());
        assert!(
            "compress=lzo,compress=zlib"
                .parse::<MountOptions>()
                .is_err()
        );
        assert!("exec".parse::<MountOptions>().is_err());
    }
}
