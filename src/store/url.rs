//! Store URLs: `file:///path`, `s3://bucket/prefix`, `gs://bucket/prefix`,
//! `az://container/prefix`, `memory://`; and the backend each names.
//!
//! The cloud backends take their credentials from the environment, as
//! their own tools do (`AWS_*`, `GOOGLE_*`, `AZURE_*`), and try each
//! request once: retries and deadlines are the Store's (`retrying.rs`).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use super::StoreError;
use super::kind::StoreKind;

/// A parsed store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `file:///path`: a local directory.
    File(PathBuf),
    /// `s3://bucket/prefix`: S3 or a compatible server.
    S3 { bucket: String, prefix: String },
    /// `gs://bucket/prefix`: Google Cloud Storage.
    Gcs { bucket: String, prefix: String },
    /// `az://container/prefix`: Azure Blob Storage (the account is
    /// `AZURE_STORAGE_ACCOUNT_NAME`'s).
    Azure { container: String, prefix: String },
    /// `memory://`: in memory, for tests.
    Memory,
}

/// Settings that come from flags rather than the URL.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// `--s3-endpoint`: overrides `AWS_ENDPOINT_URL`.
    pub s3_endpoint: Option<String>,
    /// `--store-timeout`: the longest one request may take before it is
    /// abandoned and tried again (default 30s).
    pub request_timeout: Option<Duration>,
    /// More S3 settings, by the names `AWS_*` variables use in lower case
    /// (`aws_access_key_id`, ...); they override the environment.
    pub s3_settings: Vec<(String, String)>,
}

/// A store URL names where the store is, never how to get in: one with
/// credentials (`s3://KEY:SECRET@bucket`) or a query would have them sent
/// as part of the bucket's name or prefix, and printed wherever the URL
/// is.
fn refuse_secrets(url: &str) -> Result<(), &'static str> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(());
    };
    if scheme == "file" {
        return Ok(());
    }
    if rest
        .split('/')
        .next()
        .is_some_and(|authority| authority.contains('@'))
    {
        return Err(
            "a store URL carries no credentials: give them in the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; GOOGLE_APPLICATION_CREDENTIALS; AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY) and name the store as s3://BUCKET/PREFIX",
        );
    }
    if rest.contains('?') {
        return Err(
            "a store URL takes no query (?...): settings go in the environment or in flags such as --s3-endpoint",
        );
    }
    Ok(())
}

/// `url` as an error may show it: no credentials, no query.
fn shown_without_secrets(url: &str) -> String {
    let without_query = url.split('?').next().unwrap_or(url);
    super::redact_credentials(without_query)
}

impl StoreUrl {
    pub fn parse(url: &str) -> Result<StoreUrl, StoreError> {
        let bad = |reason: &str| StoreError::BadUrl {
            url: shown_without_secrets(url),
            reason: reason.to_string(),
        };
        refuse_secrets(url).map_err(&bad)?;
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad(
                    "a file URL needs an absolute path, as in file:///var/lib/zeroblk/store",
                ));
            }
            return Ok(StoreUrl::File(PathBuf::from(path)));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = bucket_and_prefix(rest)
                .ok_or_else(|| bad("the bucket is missing, as in s3://my-bucket/zeroblk"))?;
            return Ok(StoreUrl::S3 { bucket, prefix });
        }
        if let Some(rest) = url.strip_prefix("gs://") {
            let (bucket, prefix) = bucket_and_prefix(rest)
                .ok_or_else(|| bad("the bucket is missing, as in gs://my-bucket/zeroblk"))?;
            return Ok(StoreUrl::Gcs { bucket, prefix });
        }
        if let Some(rest) = url.strip_prefix("az://") {
            let (container, prefix) = bucket_and_prefix(rest)
                .ok_or_else(|| bad("the container is missing, as in az://my-container/zeroblk"))?;
            return Ok(StoreUrl::Azure { container, prefix });
        }
        if url == "memory://" || url == "memory:" {
            return Ok(StoreUrl::Memory);
        }
        Err(bad(
            "use file:///PATH, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, az://CONTAINER/PREFIX or memory://",
        ))
    }

    /// The kind of backend this URL names: what its errors advise.
    pub fn kind(&self) -> StoreKind {
        match self {
            StoreUrl::File(_) => StoreKind::Local,
            StoreUrl::S3 { .. } => StoreKind::S3,
            StoreUrl::Gcs { .. } => StoreKind::Gcs,
            StoreUrl::Azure { .. } => StoreKind::Azure,
            StoreUrl::Memory => StoreKind::Memory,
        }
    }

    /// Builds the object store this URL names.
    pub(super) fn build(&self, options: &StoreOptions) -> Result<Arc<dyn ObjectStore>, StoreError> {
        match self {
            StoreUrl::File(path) => {
                // Private when zeroblk makes it: it holds volumes' data.
                let private = std::os::unix::fs::DirBuilderExt::mode(
                    std::fs::DirBuilder::new().recursive(true),
                    0o700,
                )
                .create(path);
                private.map_err(|source| StoreError::LocalDir {
                    path: path.clone(),
                    source,
                })?;
                let local = LocalFileSystem::new_with_prefix(path)
                    .map_err(|e| StoreError::from_object_store("open", path.display(), e))?
                    .with_fsync(true);
                Ok(Arc::new(local))
            }
            StoreUrl::Memory => Ok(Arc::new(InMemory::new())),
            StoreUrl::S3 { bucket, prefix } => {
                let s3 = s3_builder(bucket, options)
                    .build()
                    .map_err(|e| StoreError::from_object_store("configure", bucket, e))?;
                Ok(prefixed(s3, prefix))
            }
            StoreUrl::Gcs { bucket, prefix } => {
                let gcs = GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(client_retries())
                    .with_client_options(client_options())
                    .build()
                    .map_err(|e| StoreError::from_object_store("configure", bucket, e))?;
                Ok(prefixed(gcs, prefix))
            }
            StoreUrl::Azure { container, prefix } => {
                let builder = MicrosoftAzureBuilder::from_env()
                    .with_container_name(container)
                    .with_retry(client_retries())
                    .with_client_options(client_options());
                // Without an account there is nothing to sign in to; the
                // builder's own error ("Account must be specified") would
                // not say which variable to set.
                let no_account = builder
                    .get_config_value(&AzureConfigKey::AccountName)
                    .is_none();
                let azure = builder.build().map_err(|e| match no_account {
                    true => StoreError::NoCredentials {
                        store: self.to_string(),
                        kind: StoreKind::Azure,
                    },
                    false => StoreError::from_object_store("configure", container, e),
                })?;
                Ok(prefixed(azure, prefix))
            }
        }
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scheme, bucket, prefix) = match self {
            StoreUrl::File(path) => return write!(f, "file://{}", path.display()),
            StoreUrl::Memory => return f.write_str("memory://"),
            StoreUrl::S3 { bucket, prefix } => ("s3", bucket, prefix),
            StoreUrl::Gcs { bucket, prefix } => ("gs", bucket, prefix),
            StoreUrl::Azure { container, prefix } => ("az", container, prefix),
        };
        match prefix.is_empty() {
            true => write!(f, "{scheme}://{bucket}"),
            false => write!(f, "{scheme}://{bucket}/{prefix}"),
        }
    }
}

/// `BUCKET/PRE/FIX/` as the bucket and `PRE/FIX`; `None` without a bucket.
fn bucket_and_prefix(rest: &str) -> Option<(String, String)> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return None;
    }
    Some((bucket.to_string(), prefix.trim_matches('/').to_string()))
}

/// `store`, under `prefix` when there is one.
fn prefixed<T: ObjectStore>(store: T, prefix: &str) -> Arc<dyn ObjectStore> {
    if prefix.is_empty() {
        Arc::new(store)
    } else {
        Arc::new(PrefixStore::new(store, prefix))
    }
}

/// Retries and deadlines are the Store's RetryingStore's
/// (store/retrying.rs), for every backend alike, and so that it knows when
/// a conditional write was retried: the client itself tries each request
/// once.
fn client_retries() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: 0,
        retry_timeout: Duration::ZERO,
    }
}

fn client_options() -> ClientOptions {
    ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_pool_max_idle_per_host(64)
}

fn s3_builder(bucket: &str, options: &StoreOptions) -> AmazonS3Builder {
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_retry(client_retries())
        .with_client_options(client_options());
    let endpoint = options
        .s3_endpoint
        .clone()
        .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
    if let Some(endpoint) = endpoint {
        // Local S3 servers (moto, Garage, MinIO) speak plain HTTP and want
        // path-style requests; allow it whenever the endpoint says http.
        let plain_http = endpoint.starts_with("http://");
        builder = builder.with_endpoint(endpoint).with_allow_http(plain_http);
    }
    if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none()
    {
        builder = builder.with_region("us-east-1");
    }
    for (key, value) in &options.s3_settings {
        match key.parse() {
            Ok(key) => builder = builder.with_config(key, value),
            Err(_) => tracing::warn!(%key, "ignoring an unknown S3 setting"),
        }
    }
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_queries_are_refused_and_never_shown() {
        for url in [
            "s3://AKIAURLKEY:URLSECRETVALUE@bkt/pfx",
            "gs://user:pw@bucket/p",
            "s3://bkt/pfx?secret_access_key=URLSECRETVALUE",
        ] {
            let refused = StoreUrl::parse(url).unwrap_err().to_string();
            assert!(
                !refused.contains("URLSECRETVALUE") && !refused.contains(":pw@"),
                "{refused}"
            );
            assert!(
                refused.contains("credentials") || refused.contains("query"),
                "{refused}"
            );
        }
        assert!(StoreUrl::parse("file:///srv/a@b/store").is_ok());
        assert!(StoreUrl::parse("s3://bucket/prefix/with@sign").is_ok());
    }

    #[test]
    fn parses_every_scheme() {
        assert_eq!(
            StoreUrl::parse("file:///var/lib/x").unwrap(),
            StoreUrl::File("/var/lib/x".into())
        );
        assert_eq!(
            StoreUrl::parse("s3://bkt/a/b/").unwrap(),
            StoreUrl::S3 {
                bucket: "bkt".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            StoreUrl::parse("s3://bkt").unwrap(),
            StoreUrl::S3 {
                bucket: "bkt".into(),
                prefix: "".into()
            }
        );
        assert_eq!(
            StoreUrl::parse("gs://bkt/backups/host1/").unwrap(),
            StoreUrl::Gcs {
                bucket: "bkt".into(),
                prefix: "backups/host1".into()
            }
        );
        assert_eq!(
            StoreUrl::parse("gs://bkt/").unwrap(),
            StoreUrl::Gcs {
                bucket: "bkt".into(),
                prefix: "".into()
            }
        );
        assert_eq!(
            StoreUrl::parse("az://ctr//zeroblk").unwrap(),
            StoreUrl::Azure {
                container: "ctr".into(),
                prefix: "zeroblk".into()
            }
        );
        assert_eq!(
            StoreUrl::parse("az://ctr").unwrap(),
            StoreUrl::Azure {
                container: "ctr".into(),
                prefix: "".into()
            }
        );
        assert_eq!(StoreUrl::parse("memory://").unwrap(), StoreUrl::Memory);
    }

    #[test]
    fn a_parsed_url_prints_as_written_less_stray_slashes() {
        for (url, printed) in [
            ("file:///var/lib/x", "file:///var/lib/x"),
            ("s3://b/p/q/", "s3://b/p/q"),
            ("gs://b", "gs://b"),
            ("gs://b/p", "gs://b/p"),
            ("az://c/p/", "az://c/p"),
            ("memory:", "memory://"),
        ] {
            assert_eq!(StoreUrl::parse(url).unwrap().to_string(), printed);
        }
    }

    #[test]
    fn each_url_names_its_kind() {
        for (url, kind) in [
            ("file:///x", StoreKind::Local),
            ("s3://b", StoreKind::S3),
            ("gs://b", StoreKind::Gcs),
            ("az://c", StoreKind::Azure),
            ("memory://", StoreKind::Memory),
        ] {
            assert_eq!(StoreUrl::parse(url).unwrap().kind(), kind, "{url}");
        }
    }

    #[test]
    fn bad_urls_say_what_to_write() {
        let missing = [
            ("s3://", "s3://my-bucket/zeroblk"),
            ("s3:///prefix", "s3://my-bucket/zeroblk"),
            ("gs://", "gs://my-bucket/zeroblk"),
            ("gs:///prefix", "gs://my-bucket/zeroblk"),
            ("az://", "az://my-container/zeroblk"),
            ("az:///prefix", "az://my-container/zeroblk"),
            ("file://relative", "file:///var/lib/zeroblk/store"),
        ];
        for (bad, example) in missing {
            let error = StoreUrl::parse(bad).unwrap_err().to_string();
            assert!(error.contains(example), "{bad}: {error}");
        }
        for bad in ["http://x", "/var/lib", "gcs://b", "azure://c", "GS://b"] {
            let error = StoreUrl::parse(bad).unwrap_err().to_string();
            for scheme in [
                "file:///PATH",
                "s3://BUCKET",
                "gs://BUCKET",
                "az://CONTAINER",
            ] {
                assert!(error.contains(scheme), "{bad}: {error}");
            }
        }
    }
}
