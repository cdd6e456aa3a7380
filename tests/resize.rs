//! Growing a volume, on this host without a VM: NBD clients see a volume
//! grown while served at their next handshake, and `zeroblk volume resize`
//! asks the daemon of a volume attached here (a stand-in for it answers
//! on the control socket) or, when none has it, grows it itself. Growth of
//! the devices (ublk, the kernel's NBD client) and btrfs is tested in the
//! VM (tests/vm/resize.sh).

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::{TestStore, create_and_open, nbd_python, run_ok, zeroblk, zeroblk_fails};
use tokio::sync::watch;
use zeroblk::attach::registry::{self, Access, AttachRecord};
use zeroblk::control::{self, Request};
use zeroblk::nbd::server::Listener;
use zeroblk::nbd::{Export, Exports, ListenAddr, NbdServer};

const MIB: u64 = 1 << 20;

/// The size an NBD client is told at its handshake with `uri`.
async fn size_seen_at(uri: String) -> u64 {
    let python = nbd_python();
    let size = tokio::task::spawn_blocking(move || {
        run_ok(Command::new(python).args([
            "-c",
            "import nbd, sys; h = nbd.NBD(); h.connect_uri(sys.argv[1]); print(h.get_size())",
            &uri,
        ]))
    })
    .await
    .unwrap();
    size.trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbd_clients_see_a_volume_grown_while_served_when_they_connect_again() {
    let store = TestStore::new(common::Backend::File);
    let (volume, _cache) = create_and_open(&store.store, "vol", 256 * MIB, MIB).await;
    let volume = Arc::new(volume);
    let port = common::free_port();
    let address: ListenAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let listener = Listener::bind(&address).await.unwrap();
    let mut exports = Exports::default();
    exports.add_shared(Arc::new(Export::new("vol", Arc::clone(&volume))));
    let server = NbdServer::new(exports);
    let (stop, stopped) = watch::channel(false);
    let serving = tokio::spawn(async move { server.run(vec![listener], stopped).await });
    let uri = format!("nbd://127.0.0.1:{port}/vol");

    assert_eq!(size_seen_at(uri.clone()).await, 256 * MIB);
    volume.resize(512 * MIB).await.unwrap();
    assert_eq!(size_seen_at(uri.clone()).await, 512 * MIB);
    assert!(
        volume.resize(128 * MIB).await.is_err(),
        "a shrink was accepted"
    );
    assert_eq!(size_seen_at(uri).await, 512 * MIB);

    let _ = stop.send(true);
    serving.await.unwrap();
    volume.close().await.unwrap();
}

/// A stand-in for the daemon that attached `name` on this host: its
/// registry record in `runtime_dir`, pointing to a control socket it
/// serves. Answers one request with `answer`, and returns the request.
async fn answer_one_request(
    runtime_dir: &Path,
    store_url: &str,
    name: &str,
    answer: Result<String, String>,
) -> tokio::task::JoinHandle<Request> {
    let socket = runtime_dir.join(format!("{name}.sock"));
    let control = control::bind(&socket).unwrap();
    let record = AttachRecord {
        name: name.into(),
        access: Access::default(),
        device: "/dev/ublkb9".into(),
        size: 256 * MIB,
        store: store_url.into(),
        pid: std::process::id(),
        pid_started: zeroblk::process::ProcessId::current().started(),
        transport: "ublk".into(),
        state: "attached".into(),
        control_socket: socket,
        nbd_listen: Vec::new(),
        mount_point: None,
        nfs: None,
    };
    registry::write(runtime_dir, &record).unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = control.accept().await.unwrap();
        let request = control::read_request(&mut stream).await.unwrap();
        control::answer(&mut stream, answer).await;
        request
    })
}

/// Runs `zeroblk ARGS` with this test's runtime directory, off the runtime.
async fn zeroblk_in(
    runtime_dir: &Path,
    store_url: &str,
    cache: &Path,
    args: &'static [&'static str],
    expect_success: bool,
) -> String {
    let env = vec![("ZEROBLK_RUNTIME_DIR", runtime_dir.display().to_string())];
    let (store_url, cache) = (store_url.to_string(), cache.to_path_buf());
    tokio::task::spawn_blocking(move || match expect_success {
        true => zeroblk(&store_url, &cache, &env, args),
        false => zeroblk_fails(&store_url, &cache, &env, args),
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_resize_asks_the_daemon_of_a_volume_attached_here_and_grows_others_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime_dir, cache) = (dir.path().join("run"), dir.path().join("cache"));
    let store_url = format!("file://{}/store", dir.path().display());
    zeroblk(
        &store_url,
        &cache,
        &[],
        &["volume", "create", "vol", "--size", "256M"],
    );
    let url = zeroblk::store::Store::open(&store_url, &Default::default())
        .unwrap()
        .url()
        .to_string();
    registry::ensure_private_dir(&runtime_dir).unwrap();

    let grew = "volume vol and /dev/ublkb9 grew from 256M to 512M";
    let daemon = answer_one_request(&runtime_dir, &url, "vol", Ok(grew.into())).await;
    let args = &["volume", "resize", "vol", "--size", "512M"];
    let said = zeroblk_in(&runtime_dir, &store_url, &cache, args, true).await;
    assert_eq!(said.trim(), grew);
    assert_eq!(daemon.await.unwrap(), Request::Resize(512 * MIB));

    let refused = "volume `vol` is 536870912 bytes and can only grow: shrinking would cut off data";
    let daemon = answer_one_request(&runtime_dir, &url, "vol", Err(refused.into())).await;
    let args = &["volume", "resize", "vol", "--size", "128M"];
    let said = zeroblk_in(&runtime_dir, &store_url, &cache, args, false).await;
    assert!(
        said.contains(&format!("volume vol's daemon: {refused}")),
        "{said}"
    );
    assert_eq!(daemon.await.unwrap(), Request::Resize(128 * MIB));

    // Detached: the record is gone, and the command opens the volume.
    registry::remove(&runtime_dir, "vol");
    let args = &["volume", "resize", "vol", "--size", "512M"];
    let said = zeroblk_in(&runtime_dir, &store_url, &cache, args, true).await;
    assert!(said.contains("volume vol: 256M -> 512M"), "{said}");
    let args = &["volume", "resize", "vol", "--size", "128M"];
    let said = zeroblk_in(&runtime_dir, &store_url, &cache, args, false).await;
    assert!(said.contains("can only grow"), "{said}");
}
