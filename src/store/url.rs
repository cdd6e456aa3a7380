//! Store URLs: `file:///path`, `s3://bucket/prefix`, `memory://`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use super::StoreError;

/// A parsed store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    File(PathBuf),
    S3 { bucket: String, prefix: String },
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

impl StoreUrl {
    pub fn parse(url: &str) -> Result<StoreUrl, StoreError> {
        let bad = |reason: &str| StoreError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad(
                    "a file URL needs an absolute path, as in file:///var/lib/zeroblk/store",
                ));
            }
            return Ok(StoreUrl::File(PathBuf::from(path)));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("the bucket is missing, as in s3://my-bucket/zeroblk"));
            }
            return Ok(StoreUrl::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        if url == "memory://" || url == "memory:" {
            return Ok(StoreUrl::Memory);
        }
        Err(bad("use file:///PATH, s3://BUCKET/PREFIX or memory://"))
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
                if prefix.is_empty() {
                    Ok(Arc::new(s3))
                } else {
                    Ok(Arc::new(PrefixStore::new(s3, prefix.as_str())))
                }
            }
        }
    }
}

fn s3_builder(bucket: &str, options: &StoreOptions) -> AmazonS3Builder {
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        // Retries and deadlines are the Store's RetryingStore's
        // (store/retrying.rs), for every backend alike, and so that it
        // knows when a conditional write was retried: the client itself
        // tries each request once.
        .with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 0,
            retry_timeout: Duration::ZERO,
        })
        .with_client_options(
            ClientOptions::new()
                .with_connect_timeout(Duration::from_secs(5))
                .with_pool_max_idle_per_host(64),
        );
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
    fn parses_the_three_schemes() {
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
        assert_eq!(StoreUrl::parse("memory://").unwrap(), StoreUrl::Memory);
    }

    #[test]
    fn bad_urls_say_what_to_write() {
        for bad in ["file://relative", "s3://", "http://x", "/var/lib"] {
            let error = StoreUrl::parse(bad).unwrap_err().to_string();
            assert!(
                error.contains("file://") || error.contains("s3://"),
                "{error}"
            );
        }
    }
}
