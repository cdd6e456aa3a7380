//! `zeroblk volume import` and `volume export`: raw image files into
//! volumes and out of them, with a progress bar (see [`crate::image`]).

use super::progress::StageBar;
use super::settings::{EngineArgs, Settings};
use crate::engine::VolumeRef;
use crate::format::Compression;
use crate::image::{
    self, ExportReport, ExportRequest, ImageSource, ImageTarget, ImportReport, ImportRequest,
    NewShape,
};
use crate::size::{ByteSize, human};

/// Write a raw image into a volume, made for it if missing: only the
/// file's data is read (its holes are skipped), and blocks of zeroes are
/// not written; the volume must not be attached or served. Ends with a
/// commit: on success the store holds the image
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The raw image: a file, a block device, or - for standard input
    #[arg(value_name = "FILE")]
    file: String,
    /// The volume; made for the image if it does not exist, else written
    /// over (the image must fit; past its end the volume stays as it was)
    name: VolumeRef,
    /// The size of a volume made for the image (needed with - as FILE)
    /// [default: the image's, rounded up to 4K]
    #[arg(long, value_name = "SIZE")]
    size: Option<ByteSize>,
    #[command(flatten)]
    layout: NewLayoutArgs,
    /// Draw no progress bar
    #[arg(long, short)]
    quiet: bool,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

/// How a volume the import makes stores its chunks; given for a volume
/// that exists, each must be what it has.
#[derive(Debug, clap::Args)]
struct NewLayoutArgs {
    /// Chunk size of a volume the import makes, a power of two from 64K
    /// to 16M [default: 1M]
    #[arg(long, value_name = "SIZE")]
    chunk_size: Option<ByteSize>,
    /// How a volume the import makes compresses its chunks: zstd,
    /// zstd:LEVEL or none [default: zstd:3]
    #[arg(long, value_name = "CODEC")]
    compression: Option<Compression>,
    /// Encrypt a volume the import makes, with the password of
    /// --password-file, ZEROBLK_PASSWORD or [storage] encryption_password
    /// (given a password, it is encrypted even without this flag)
    #[arg(long)]
    encrypt: bool,
}

/// Write a volume (its newest commit) or a snapshot NAME@SNAP into a raw
/// image file: unallocated stretches and blocks of zeroes become holes
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The volume, or one of its snapshots
    #[arg(value_name = "NAME[@SNAP]")]
    name: VolumeRef,
    /// The image file to make (mode 600), or - for standard output (not
    /// sparse)
    #[arg(value_name = "FILE")]
    file: String,
    /// Replace FILE if it exists (once the new image is whole)
    #[arg(long)]
    force: bool,
    /// Draw no progress bar
    #[arg(long, short)]
    quiet: bool,
    #[arg(long)]
    json: bool,
}

pub async fn import(args: ImportArgs, settings: &Settings) -> anyhow::Result<()> {
    let store = settings.open_store()?;
    let request = ImportRequest {
        source: ImageSource::from_arg(&args.file),
        volume: args.name.writable()?.to_string(),
        new_volume: NewShape {
            size: args.size.map(ByteSize::bytes),
            chunk_size: args.layout.chunk_size.map(ByteSize::bytes),
            compression: args.layout.compression,
            encrypt: args.layout.encrypt,
            encrypt_with: settings.password_for_new_volume(args.layout.encrypt)?,
        },
        options: settings.engine_options(&args.engine)?,
    };
    let bar = StageBar::new(!args.quiet && !args.json);
    let imported = image::import(&store, &request, &bar).await;
    bar.clear();
    let report = imported?;
    match args.json {
        true => outln!("{}", serde_json::to_string_pretty(&report)?),
        false => outln!("{}", import_summary(&report)),
    }
    Ok(())
}

pub async fn export(args: ExportArgs, settings: &Settings) -> anyhow::Result<()> {
    let store = settings.open_store()?;
    if args.name.snapshot().is_none() {
        super::volume_snapshot::commit_or_warn(&store, args.name.name()).await?;
    }
    let target = ImageTarget::from_arg(&args.file, args.force);
    let to_stdout = target == ImageTarget::Stdout;
    let request = ExportRequest {
        source: args.name,
        target,
        options: settings.engine_options(&EngineArgs::default())?,
    };
    let bar = StageBar::new(!args.quiet && !args.json);
    let exported = image::export(&store, &request, &bar).await;
    bar.clear();
    let report = exported?;
    let said = match args.json {
        true => serde_json::to_string_pretty(&report)?,
        false => export_summary(&report),
    };
    // Standard output holds the image.
    match to_stdout {
        true => eprintln!("{said}"),
        false => outln!("{said}"),
    }
    Ok(())
}

fn import_summary(report: &ImportReport) -> String {
    let made = match report.created {
        true => format!(
            ", made for it: {}, {} chunks, {}",
            ByteSize(report.volume_size),
            ByteSize(report.chunk_size),
            report.compression
        ),
        false => String::new(),
    };
    let zeroed = match report.zeroed_bytes {
        0 => String::new(),
        bytes => format!(", {} zeroed where the volume held data", human(bytes)),
    };
    format!(
        "imported {} into volume {}{made}: {} of {} written{zeroed}, the rest skipped as holes and blocks of zeroes; committed as generation {}",
        report.source,
        report.volume,
        human(report.written_bytes),
        human(report.image_bytes),
        report.generation
    )
}

fn export_summary(report: &ExportReport) -> String {
    format!(
        "exported {} (generation {}) to {}: {}, of which {} written and the rest left as holes",
        report.source,
        report.generation,
        report.target,
        human(report.size),
        human(report.data_bytes)
    )
}
