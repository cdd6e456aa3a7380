//! `zeroblk volume import` and `volume export` as a user runs them: a
//! sparse image in and back out byte for byte, moving only its data; an
//! import over a volume that holds data; the refusals; and the progress
//! bars of import, export, verify and gc, drawn in a terminal (a
//! pseudo-terminal here) and nowhere else.

mod common;

use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{random_bytes, run_ok, walk};

const MIB: u64 = 1 << 20;

/// A file store, a cache dir and a folder for images.
struct Setup {
    store: tempfile::TempDir,
    cache: tempfile::TempDir,
    files: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            store: tempfile::tempdir().unwrap(),
            cache: tempfile::tempdir().unwrap(),
            files: tempfile::tempdir().unwrap(),
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.files.path().join(name)
    }

    /// `zeroblk ARGS`, with this store and cache dir.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_zeroblk"));
        command
            .arg("--store")
            .arg(format!("file://{}", self.store.path().display()))
            .arg("--cache-dir")
            .arg(self.cache.path())
            .args(args)
            .env_remove("ZEROBLK_CONFIG")
            .env_remove("ZEROBLK_STORE")
            .env_remove("ZEROBLK_PASSWORD");
        command
    }

    fn ok(&self, args: &[&str]) -> String {
        run_ok(&mut self.command(args))
    }

    /// Runs a command that must fail; returns its stderr.
    fn fails(&self, args: &[&str], expected: &str) -> String {
        let output = common::command::output(&mut self.command(args));
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(!output.status.success(), "zeroblk {args:?} succeeded");
        assert!(stderr.contains(expected), "zeroblk {args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        stderr
    }

    /// Runs a shell command line with `$ZEROBLK` set to this zeroblk and
    /// its store (for pipes and redirections).
    fn shell(&self, line: &str) -> Output {
        let zeroblk = format!(
            "{} --store file://{} --cache-dir {}",
            env!("CARGO_BIN_EXE_zeroblk"),
            self.store.path().display(),
            self.cache.path().display()
        );
        common::command::output(
            Command::new("sh")
                .args(["-c", line])
                .env("ZEROBLK", zeroblk)
                .env_remove("ZEROBLK_CONFIG"),
        )
    }

    /// Bytes the store holds, in all its files.
    fn store_bytes(&self) -> u64 {
        walk(self.store.path())
            .iter()
            .map(|file| std::fs::metadata(file).unwrap().len())
            .sum()
    }
}

/// A sparse file of `size` bytes holding `regions` (offset, bytes).
fn sparse_image(path: &Path, size: u64, regions: &[(u64, Vec<u8>)]) {
    let file = std::fs::File::create(path).unwrap();
    file.set_len(size).unwrap();
    for (offset, bytes) in regions {
        file.write_all_at(bytes, *offset).unwrap();
    }
    file.sync_all().unwrap();
}

/// Fails unless the two files are byte for byte the same (cmp says).
fn assert_same(a: &Path, b: &Path) {
    let output = common::command::output(Command::new("cmp").arg(a).arg(b));
    assert!(
        output.status.success(),
        "{} and {} differ: {}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&output.stdout)
    );
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn a_sparse_image_moves_only_its_data_and_comes_back_byte_for_byte() {
    let setup = Setup::new();
    let size = 1 << 30;
    let image = setup.file("disk.img");
    let regions = [
        (0, random_bytes(MIB as usize, 1)),
        (300 * MIB + 1234, random_bytes(3 * MIB as usize, 2)),
        // Written, so allocated in the file, but zeroes: nothing to store.
        (600 * MIB, vec![0; 2 * MIB as usize]),
        (size - 512 * 1024 - 77, random_bytes(512 * 1024, 3)),
    ];
    sparse_image(&image, size, &regions);
    let data = (MIB + 3 * MIB + 512 * 1024) as f64;

    let said = setup.ok(&[
        "volume",
        "import",
        image.to_str().unwrap(),
        "data",
        "--json",
    ]);
    let report = json(&said);
    assert_eq!(report["created"], true, "{said}");
    assert_eq!(report["image_bytes"], size, "{said}");
    let written = report["written_bytes"].as_u64().unwrap() as f64;
    assert!(
        written >= data && written < data + 8.0 * 4096.0,
        "only the data blocks are written: {said}"
    );
    let stored = setup.store_bytes() as f64;
    assert!(
        stored > data && stored < 1.5 * data + 2.0 * MIB as f64,
        "the store holds about the image's data ({data} bytes), not its size: {stored} bytes"
    );
    let info = json(&setup.ok(&["volume", "info", "data", "--json"]));
    assert_eq!(info["size"], size, "made with the image's size: {info}");

    let exported = setup.file("out.img");
    let said = setup.ok(&["volume", "export", "data", exported.to_str().unwrap()]);
    assert!(said.contains("exported data"), "{said}");
    assert_same(&image, &exported);
    let meta = std::fs::metadata(&exported).unwrap();
    assert_eq!(meta.len(), size);
    assert!(
        meta.blocks() * 512 < size / 16,
        "the export is sparse: {} bytes allocated of {size}",
        meta.blocks() * 512
    );
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "private");
    let leftovers: Vec<_> = walk(setup.files.path())
        .into_iter()
        .filter(|f| f.to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn an_import_over_a_volume_leaves_it_reading_as_the_image_and_a_snapshot_as_it_was() {
    let setup = Setup::new();
    let size = 64 * MIB;
    let first = setup.file("first.img");
    sparse_image(
        &first,
        size,
        &[
            (0, random_bytes(4 * MIB as usize, 4)),
            (20 * MIB, random_bytes(8 * MIB as usize, 5)),
            (size - MIB, random_bytes(MIB as usize, 6)),
        ],
    );
    // Where the first image had data, the second has holes and zeroes.
    let second = setup.file("second.img");
    sparse_image(
        &second,
        size,
        &[
            (MIB, vec![0; MIB as usize]),
            (2 * MIB + 4096, random_bytes(100_000, 7)),
            (40 * MIB, random_bytes(2 * MIB as usize, 8)),
        ],
    );
    setup.ok(&[
        "volume",
        "create",
        "data",
        "--size",
        "96M",
        "--chunk-size",
        "256K",
    ]);
    setup.ok(&["volume", "import", first.to_str().unwrap(), "data"]);
    setup.ok(&["volume", "snapshot", "create", "data", "--name", "first"]);
    let said = setup.ok(&[
        "volume",
        "import",
        second.to_str().unwrap(),
        "data",
        "--json",
    ]);
    let report = json(&said);
    assert_eq!(report["created"], false, "{said}");
    assert!(
        report["zeroed_bytes"].as_u64().unwrap() >= 12 * MIB,
        "the first image's data is zeroed: {said}"
    );

    let exported = setup.file("second-out.img");
    setup.ok(&["volume", "export", "data", exported.to_str().unwrap()]);
    let out = std::fs::read(&exported).unwrap();
    assert_eq!(out.len() as u64, 96 * MIB, "the volume's size");
    assert!(
        out[..size as usize] == std::fs::read(&second).unwrap()[..],
        "the volume reads as the second image"
    );
    assert!(
        out[size as usize..].iter().all(|b| *b == 0),
        "past the image, the volume is as it was"
    );

    let snapshot = setup.file("first-out.img");
    setup.ok(&["volume", "export", "data@first", snapshot.to_str().unwrap()]);
    let out = std::fs::read(&snapshot).unwrap();
    assert!(
        out[..size as usize] == std::fs::read(&first).unwrap()[..],
        "the snapshot reads as the first image"
    );
}

#[test]
fn standard_input_and_output_carry_an_image_too() {
    let setup = Setup::new();
    let image = setup.file("stream.img");
    let mut bytes = random_bytes(3 * MIB as usize + 1000, 9);
    bytes[MIB as usize..2 * MIB as usize].fill(0);
    std::fs::write(&image, &bytes).unwrap();
    let refused = setup.shell(&format!(
        "$ZEROBLK volume import - piped < {}",
        image.display()
    ));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("--size"),
        "{stderr}"
    );

    let imported = setup.shell(&format!(
        "$ZEROBLK volume import - piped --size 8M --json < {}",
        image.display()
    ));
    assert!(imported.status.success(), "{imported:?}");
    let report = json(&String::from_utf8_lossy(&imported.stdout));
    assert_eq!(
        report["written_bytes"],
        2 * MIB + 1000,
        "the zero MiB is skipped: {report}"
    );
    assert_eq!(report["image_bytes"], bytes.len(), "{report}");

    let out = setup.file("stream-out.img");
    let exported = setup.shell(&format!(
        "$ZEROBLK volume export piped - > {}",
        out.display()
    ));
    assert!(exported.status.success(), "{exported:?}");
    let stderr = String::from_utf8_lossy(&exported.stderr);
    assert!(
        stderr.contains("exported piped"),
        "the summary goes to stderr: {stderr}"
    );
    let out = std::fs::read(&out).unwrap();
    assert_eq!(out.len() as u64, 8 * MIB);
    assert!(out[..bytes.len()] == bytes[..], "the stream came back");
    assert!(out[bytes.len()..].iter().all(|b| *b == 0));
}

#[test]
fn what_cannot_be_done_is_refused_with_one_clear_line() {
    let setup = Setup::new();
    let image = setup.file("big.img");
    sparse_image(&image, 32 * MIB, &[(0, random_bytes(4096, 10))]);
    let path = image.to_str().unwrap();
    setup.ok(&["volume", "create", "small", "--size", "16M"]);
    let said = setup.fails(
        &["volume", "import", path, "small"],
        "larger than volume `small`",
    );
    assert!(
        said.contains("volume resize small"),
        "names the fix: {said}"
    );
    setup.fails(
        &["volume", "import", path, "new", "--size", "8M"],
        "larger than the --size",
    );
    setup.fails(&["volume", "import", path, "small@snap"], "read-only");
    setup.fails(
        &["volume", "import", path, "small", "--size", "64M"],
        "only sizes a volume the import makes",
    );
    // The layout flags only shape a volume the import makes: given for
    // one that exists, each must be what it has.
    let fits_small = setup.file("fits-small.img");
    sparse_image(&fits_small, 4 * MIB, &[(0, random_bytes(4096, 11))]);
    let fits_small = fits_small.to_str().unwrap();
    let password = setup.file("password");
    std::fs::write(&password, "correct horse battery staple").unwrap();
    std::fs::set_permissions(
        &password,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let password = password.to_str().unwrap().to_string();
    for (flag, has) in [
        (&["--chunk-size", "4M"][..], "1M chunks"),
        (&["--compression", "none"], "compression zstd:3"),
        (
            &["--encrypt", "--password-file", &password],
            "no encryption",
        ),
    ] {
        let args = [&["volume", "import", fits_small, "small"][..], flag].concat();
        let said = setup.fails(&args, "only shapes a volume the import makes");
        assert!(said.contains(has), "{flag:?}: {said}");
    }
    setup.ok(&[
        "volume",
        "import",
        fits_small,
        "small",
        "--chunk-size",
        "1M",
        "--compression",
        "zstd:3",
    ]);
    setup.fails(
        &["volume", "import", "/nonexistent/x.img", "small"],
        "cannot open",
    );
    let empty = setup.file("empty.img");
    std::fs::write(&empty, b"").unwrap();
    setup.fails(
        &["volume", "import", empty.to_str().unwrap(), "e"],
        "is empty",
    );

    // Served (another process holds its lease): no second writer.
    let fits = setup.file("fits.img");
    sparse_image(&fits, 8 * MIB, &[(0, random_bytes(4096, 12))]);
    let store = format!("file://{}", setup.store.path().display());
    let serving = tempfile::tempdir().unwrap();
    let server = common::ZeroblkServer::start(&store, serving.path(), &[], &["small"]);
    let fits = fits.to_str().unwrap();
    setup.fails(
        &["volume", "import", fits, "small"],
        "stop that writer first",
    );
    server.stop();
    setup.ok(&["volume", "import", fits, "small"]);

    let existing = setup.file("existing.img");
    std::fs::write(&existing, b"keep me").unwrap();
    let target = existing.to_str().unwrap();
    let said = setup.fails(&["volume", "export", "small", target], "exists");
    assert!(said.contains("--force"), "names the fix: {said}");
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me", "untouched");
    setup.fails(
        &[
            "volume",
            "export",
            "nothere",
            setup.file("n.img").to_str().unwrap(),
        ],
        "does not exist",
    );
    assert!(!setup.file("n.img").exists(), "no file for a failed export");
    setup.ok(&["volume", "export", "small", target, "--force"]);
    assert_eq!(
        std::fs::metadata(&existing).unwrap().len(),
        16 * MIB,
        "replaced"
    );
    let folder = setup.files.path().to_str().unwrap();
    setup.fails(
        &["volume", "export", "small", folder, "--force"],
        "not a regular file",
    );
}

/// The bar's marks: its byte counts ("1.00 MiB/64.00 MiB") or the name
/// of a stage. (Not colours: log lines have them on a terminal too.)
fn has_bar(stderr: &str) -> bool {
    ["iB/", "importing", "exporting", "map pages", "reading maps"]
        .iter()
        .any(|mark| stderr.contains(mark))
}

/// Runs `command` with its stderr on a pseudo-terminal (stdout to
/// /dev/null); returns everything the terminal showed.
fn in_terminal(command: &Command) -> String {
    const PTY: &str = r#"
import fcntl, os, pty, struct, subprocess, sys, termios
master, slave = pty.openpty()
fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
env = dict(os.environ, TERM="xterm")
child = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=slave, env=env)
os.close(slave)
shown = b""
while True:
    try:
        chunk = os.read(master, 65536)
    except OSError:
        break
    if not chunk:
        break
    shown += chunk
status = child.wait()
sys.stdout.buffer.write(shown)
sys.exit(0 if status == 0 else 1)
"#;
    let python = common::which("python3").expect("python3, for a pseudo-terminal");
    let mut shell = Command::new(python);
    shell
        .arg("-c")
        .arg(PTY)
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => shell.env(key, value),
            None => shell.env_remove(key),
        };
    }
    run_ok(&mut shell)
}

#[test]
fn progress_bars_are_drawn_on_a_terminal_only_and_never_when_quiet_or_json() {
    let setup = Setup::new();
    let image = setup.file("bar.img");
    sparse_image(
        &image,
        64 * MIB,
        &[(8 * MIB, random_bytes(16 * MIB as usize, 11))],
    );
    let path = image.to_str().unwrap();
    let out = |name: &str| setup.file(name).to_str().unwrap().to_string();

    let shown = in_terminal(&setup.command(&["volume", "import", path, "data"]));
    assert!(
        shown.contains("importing") && shown.contains("iB/"),
        "{shown:?}"
    );
    let shown = in_terminal(&setup.command(&["volume", "export", "data", &out("a.img")]));
    assert!(
        shown.contains("exporting") && shown.contains("iB/"),
        "{shown:?}"
    );
    let shown = in_terminal(&setup.command(&["volume", "verify", "data"]));
    assert!(
        shown.contains("chunks") && shown.contains("iB/"),
        "{shown:?}"
    );
    let shown = in_terminal(&setup.command(&["gc"]));
    assert!(shown.contains("reading maps"), "{shown:?}");
    // Copies had a bar already; --quiet turns it off too.
    let other = tempfile::tempdir().unwrap();
    let other = format!("file://{}", other.path().display());
    let copied = ["volume", "copy", "data", "copied", "--to", &other];
    let shown = in_terminal(&setup.command(&copied));
    assert!(shown.contains("iB/"), "{shown:?}");
    let quiet = ["volume", "copy", "data", "quiet", "--to", &other, "--quiet"];
    let shown = in_terminal(&setup.command(&quiet));
    assert!(
        !has_bar(&shown),
        "volume copy --quiet drew a bar: {shown:?}"
    );

    let quiet: [Vec<String>; 8] = [
        vec![
            "volume".into(),
            "import".into(),
            path.into(),
            "data".into(),
            "--quiet".into(),
        ],
        vec![
            "volume".into(),
            "import".into(),
            path.into(),
            "data".into(),
            "--json".into(),
        ],
        vec![
            "volume".into(),
            "export".into(),
            "data".into(),
            out("b.img"),
            "-q".into(),
        ],
        vec![
            "volume".into(),
            "export".into(),
            "data".into(),
            out("c.img"),
            "--json".into(),
        ],
        vec![
            "volume".into(),
            "verify".into(),
            "data".into(),
            "--quiet".into(),
        ],
        vec![
            "volume".into(),
            "verify".into(),
            "data".into(),
            "--json".into(),
        ],
        vec!["gc".into(), "--quiet".into()],
        vec!["gc".into(), "--json".into()],
    ];
    for args in &quiet {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let shown = in_terminal(&setup.command(&args));
        assert!(!has_bar(&shown), "zeroblk {args:?} drew a bar: {shown:?}");
    }
    let piped = [
        vec![
            "volume".to_string(),
            "import".into(),
            path.into(),
            "data".into(),
        ],
        vec![
            "volume".into(),
            "export".into(),
            "data".into(),
            out("d.img"),
        ],
        vec!["volume".into(), "verify".into(), "data".into()],
        vec!["gc".into()],
    ];
    for args in &piped {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = common::command::output(&mut setup.command(&args));
        assert!(output.status.success(), "{args:?}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !has_bar(&stderr) && !stderr.contains("\x1b["),
            "zeroblk {args:?} drew a bar into a pipe: {stderr:?}"
        );
    }
}

/// An image whose size is no multiple of 4 KiB, over a volume holding
/// data: the volume's bytes past the image's end, in its last block, stay
/// as they were (as `dd` leaves a disk).
/// From a file and from standard input alike (a red team found the
/// stream's last block padded with zeroes over the volume's bytes).
#[test]
fn the_volume_past_an_unaligned_image_stays_as_it_was() {
    let setup = Setup::new();
    let old = setup.file("old.img");
    std::fs::write(&old, vec![b'o'; 3 * 4096]).unwrap();
    let short = setup.file("short.img");
    std::fs::write(&short, vec![b'n'; 5000]).unwrap();
    let back = setup.file("back.img");
    for (volume, from_stdin) in [("v", false), ("s", true)] {
        setup.ok(&["volume", "import", old.to_str().unwrap(), volume]);
        match from_stdin {
            false => drop(setup.ok(&["volume", "import", short.to_str().unwrap(), volume])),
            true => {
                let piped = setup.shell(&format!(
                    "$ZEROBLK volume import - {volume} < {}",
                    short.display()
                ));
                assert!(piped.status.success(), "{piped:?}");
            }
        }
        setup.ok(&[
            "volume",
            "export",
            volume,
            back.to_str().unwrap(),
            "--force",
        ]);
        let bytes = std::fs::read(&back).unwrap();
        assert!(bytes[..5000].iter().all(|&b| b == b'n'), "{volume}");
        assert!(
            bytes[5000..3 * 4096].iter().all(|&b| b == b'o'),
            "{volume}: the volume's bytes after the image were overwritten"
        );
    }
}

/// A file that changes while it is imported is reported, not taken for
/// the image: the meter's first word truncates it, as another writer
/// would.
#[test]
fn an_image_that_changes_during_the_import_is_an_error() {
    use zeroblk::engine::{Meter, Unit};
    use zeroblk::image::{ImageError, ImageSource, ImportRequest, NewShape, import};

    struct Truncates(PathBuf);
    impl Meter for Truncates {
        fn stage(&self, _: &str, _: Unit, _: Option<u64>) {}
        fn advance(&self, _: u64) {
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .open(&self.0)
                .and_then(|f| f.set_len(4096));
        }
    }
    let setup = Setup::new();
    let image = setup.file("moving.img");
    std::fs::write(&image, random_bytes(1 << 20, 7)).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = zeroblk::store::Store::open(
        &format!("file://{}", setup.store.path().display()),
        &zeroblk::store::StoreOptions::default(),
    )
    .unwrap();
    let request = ImportRequest {
        source: ImageSource::File(image.clone()),
        volume: "m".into(),
        new_volume: NewShape::default(),
        options: common::engine_options(setup.cache.path()),
    };
    let outcome = runtime.block_on(import(&store, &request, &Truncates(image)));
    assert!(
        matches!(outcome, Err(ImageError::ChangedMeanwhile { .. })),
        "{outcome:?}"
    );
}
