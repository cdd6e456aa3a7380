//! What kind of backend a store is, and what its errors tell a user to
//! check. S3, Google Cloud Storage and Azure take their credentials,
//! endpoints and buckets from different places: an error that names AWS
//! variables to someone on GCS sends them the wrong way. Each advice says
//! what to set or run for the kind of store the URL names.

/// The backend a store URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Local,
    S3,
    Gcs,
    Azure,
    Memory,
}

impl StoreKind {
    /// What to set when the store found no credentials.
    pub(super) fn credentials_advice(self) -> &'static str {
        match self {
            StoreKind::S3 | StoreKind::Local | StoreKind::Memory => {
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL or --s3-endpoint for a server other than AWS)"
            }
            StoreKind::Gcs => {
                "set GOOGLE_APPLICATION_CREDENTIALS (or GOOGLE_SERVICE_ACCOUNT) to the path of a service account's JSON key file, or GOOGLE_SERVICE_ACCOUNT_KEY to the key itself"
            }
            StoreKind::Azure => {
                "set AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or AZURE_STORAGE_SAS_KEY; or AZURE_CLIENT_ID, AZURE_CLIENT_SECRET and AZURE_TENANT_ID for a service principal)"
            }
        }
    }

    /// What to check when the store refused a request.
    pub(super) fn denied_advice(self) -> &'static str {
        match self {
            StoreKind::S3 | StoreKind::Memory => {
                "Check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY and the bucket's permissions"
            }
            StoreKind::Local => "Check the store directory's owner and permissions",
            StoreKind::Gcs => {
                "Check the service account's key (GOOGLE_APPLICATION_CREDENTIALS or GOOGLE_SERVICE_ACCOUNT) and its roles on the bucket (Storage Object Admin)"
            }
            StoreKind::Azure => {
                "Check AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or the SAS token's permissions and expiry) and the container's access"
            }
        }
    }

    /// What to check when the store cannot be reached.
    pub(super) fn unreachable_advice(self) -> &'static str {
        match self {
            StoreKind::S3 | StoreKind::Local | StoreKind::Memory => {
                "Check the endpoint (--s3-endpoint or AWS_ENDPOINT_URL) and that the server is up"
            }
            StoreKind::Gcs => {
                "Check that this host reaches storage.googleapis.com (its network, DNS and proxy)"
            }
            StoreKind::Azure => {
                "Check that this host reaches the account's endpoint, ACCOUNT.blob.core.windows.net or AZURE_STORAGE_ENDPOINT (its network, DNS and proxy)"
            }
        }
    }

    /// How to make the bucket that is not there.
    pub(super) fn no_bucket_advice(self) -> &'static str {
        match self {
            StoreKind::S3 | StoreKind::Local | StoreKind::Memory => {
                "create it first (for example `aws s3 mb`)"
            }
            StoreKind::Gcs => "create it first (for example `gcloud storage buckets create`)",
            StoreKind::Azure => {
                "create the container first (for example `az storage container create`)"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::StoreError;
    use super::*;

    /// Every error a kind of store gives that advises something.
    fn advised(kind: StoreKind, store: &str) -> [StoreError; 4] {
        let store = store.to_string();
        let detail = "what the server said".to_string();
        [
            StoreError::NoCredentials {
                store: store.clone(),
                kind,
            },
            StoreError::Denied {
                store: store.clone(),
                detail: detail.clone(),
                kind,
            },
            StoreError::Unreachable {
                store: store.clone(),
                detail,
                kind,
            },
            StoreError::NoBucket { store, kind },
        ]
    }

    #[test]
    fn s3_errors_say_what_they_said() {
        let said = advised(StoreKind::S3, "s3://b/p").map(|error| error.to_string());
        assert_eq!(
            said,
            [
                "no credentials for the object store s3://b/p: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL or --s3-endpoint for a server other than AWS)",
                "the object store s3://b/p refused the request: what the server said. Check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY and the bucket's permissions",
                "cannot reach the object store s3://b/p: what the server said. Check the endpoint (--s3-endpoint or AWS_ENDPOINT_URL) and that the server is up",
                "the bucket of s3://b/p does not exist: create it first (for example `aws s3 mb`)",
            ]
        );
    }

    #[test]
    fn gcs_and_azure_errors_name_their_own_variables() {
        let cases = [
            (
                StoreKind::Gcs,
                "gs://b",
                "GOOGLE_APPLICATION_CREDENTIALS",
                "gcloud",
            ),
            (
                StoreKind::Azure,
                "az://c",
                "AZURE_STORAGE_ACCOUNT_KEY",
                "az storage",
            ),
        ];
        for (kind, store, variable, tool) in cases {
            let [no_credentials, denied, unreachable, no_bucket] =
                advised(kind, store).map(|error| error.to_string());
            for said in [&no_credentials, &denied] {
                assert!(said.contains(store) && said.contains(variable), "{said}");
            }
            for said in [&no_credentials, &denied, &unreachable, &no_bucket] {
                assert!(!said.contains("AWS_") && !said.contains("s3"), "{said}");
            }
            assert!(no_bucket.contains(tool), "{no_bucket}");
        }
    }
}
