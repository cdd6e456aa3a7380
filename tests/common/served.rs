//! One store and one cache dir for tests that run `zeroblk` commands and
//! `zeroblk serve` processes against it, as processes on one host would.

use std::path::PathBuf;

use zeroblk::store::{Store, StoreOptions};

use super::{ZeroblkServer, moto, zeroblk, zeroblk_fails};

/// A store (a local directory, or a bucket on the shared moto) and the
/// folder that holds it, the cache dir and the test's files.
pub struct Served {
    pub dir: tempfile::TempDir,
    pub store_url: String,
    pub env: Vec<(&'static str, String)>,
    pub store_options: StoreOptions,
}

impl Served {
    /// A `file://` store in a fresh folder.
    pub fn file() -> Served {
        let dir = tempfile::tempdir().unwrap();
        let store_url = format!("file://{}/store", dir.path().display());
        Served {
            dir,
            store_url,
            env: Vec::new(),
            store_options: StoreOptions::default(),
        }
    }

    /// A fresh bucket on moto, under `prefix`.
    pub fn s3(prefix: &str) -> Served {
        let server = moto();
        Served {
            dir: tempfile::tempdir().unwrap(),
            store_url: format!("s3://{}/{prefix}", server.new_bucket()),
            env: server.env(),
            store_options: server.store_options(),
        }
    }

    pub fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// A file of the test's, beside the store.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs a command that must succeed; its stdout.
    pub fn zeroblk(&self, args: &[&str]) -> String {
        zeroblk(&self.store_url, &self.cache(), &self.env, args)
    }

    /// Runs a command that must fail; its stderr.
    pub fn zeroblk_fails(&self, args: &[&str]) -> String {
        zeroblk_fails(&self.store_url, &self.cache(), &self.env, args)
    }

    pub fn serve(&self, extra: &[&str]) -> ZeroblkServer {
        ZeroblkServer::start(&self.store_url, &self.cache(), &self.env, extra)
    }

    /// Pins the newest commit of `volume` as snapshot `name` (the library
    /// call `volume snapshot create` makes).
    pub async fn snapshot(&self, volume: &str, name: &str) {
        let store = Store::open(&self.store_url, &self.store_options).unwrap();
        zeroblk::engine::create_snapshot(&store, volume, Some(name), None)
            .await
            .unwrap();
    }
}
