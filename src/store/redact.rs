//! Credentials kept out of errors and logs: what the store says names
//! endpoints and requests, never a password or a signature.
//!
//! Two places in a URL hold secrets: the `user:password@` before its host,
//! and query parameters that sign a request (an Azure SAS token's `sig`,
//! which object_store puts in every request URL it sends; a presigned
//! URL's signature or session token). Both are replaced by `***`.

/// Query parameters whose values are secrets, in lower case.
const SECRET_PARAMETERS: [&str; 4] = [
    "sig",
    "x-goog-signature",
    "x-amz-signature",
    "x-amz-security-token",
];

/// `text` with the `user:password@` of every URL in it replaced by `***@`,
/// and the value of every signing query parameter by `***`.
pub fn redact_credentials(text: &str) -> String {
    redact_signatures(&redact_user_info(text))
}

fn redact_user_info(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(scheme_end) = rest.find("://") {
        let (before, after) = rest.split_at(scheme_end + 3);
        out.push_str(before);
        let authority_end = after
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(after.len());
        match after[..authority_end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                rest = &after[at..];
            }
            None => rest = after,
        }
    }
    out.push_str(rest);
    out
}

fn redact_signatures(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(['?', '&']) {
        let (before, after) = rest.split_at(at + 1);
        out.push_str(before);
        rest = after;
        let Some(name_len) = secret_parameter(after) else {
            continue;
        };
        let (name, value) = after.split_at(name_len + 1);
        let value_end = value
            .find(|c: char| "&#)\"'".contains(c) || c.is_whitespace())
            .unwrap_or(value.len());
        out.push_str(name);
        out.push_str("***");
        rest = &value[value_end..];
    }
    out.push_str(rest);
    out
}

/// The length of the secret parameter's name `query` starts with (an `=`
/// follows it), if it starts with one.
fn secret_parameter(query: &str) -> Option<usize> {
    let query = query.as_bytes();
    SECRET_PARAMETERS
        .iter()
        .find(|name| {
            query.get(name.len()) == Some(&b'=')
                && query[..name.len()].eq_ignore_ascii_case(name.as_bytes())
        })
        .map(|name| name.len())
}

#[cfg(test)]
mod tests {
    use super::super::StoreError;
    use super::*;

    #[test]
    fn credentials_in_urls_are_redacted() {
        let cases = [
            (
                "http://user:secret@minio:9000/bucket",
                "http://***@minio:9000/bucket",
            ),
            (
                "error sending request for url (https://k:p%40ss@s3.lan/b?x=1): refused",
                "error sending request for url (https://***@s3.lan/b?x=1): refused",
            ),
            (
                "s3://bucket/prefix and http://host/path",
                "s3://bucket/prefix and http://host/path",
            ),
            ("a@b.c http://h/x@y", "a@b.c http://h/x@y"),
            (
                "two: http://a:b@h1/ http://c:d@h2",
                "two: http://***@h1/ http://***@h2",
            ),
            ("ends with ://", "ends with ://"),
        ];
        for (text, redacted) in cases {
            assert_eq!(redact_credentials(text), redacted);
        }
        let bad = StoreError::BadUrl {
            url: "ftp://me:hunter2@host/x".into(),
            reason: "use s3://".into(),
        };
        assert!(!bad.to_string().contains("hunter2"), "{bad}");
    }

    #[test]
    fn request_signatures_are_redacted() {
        let cases = [
            (
                "error sending request for url (https://acct.blob.core.windows.net/c/k?sv=2022-11-02&ss=b&sig=AbC%2Bd%3D&se=2030): timed out",
                "error sending request for url (https://acct.blob.core.windows.net/c/k?sv=2022-11-02&ss=b&sig=***&se=2030): timed out",
            ),
            (
                "https://a.blob.core.windows.net/c?SIG=secret",
                "https://a.blob.core.windows.net/c?SIG=***",
            ),
            (
                "https://storage.googleapis.com/b/k?X-Goog-Signature=abc123 failed",
                "https://storage.googleapis.com/b/k?X-Goog-Signature=*** failed",
            ),
            (
                "https://s3.lan/b/k?X-Amz-Security-Token=tok&X-Amz-Signature=f00",
                "https://s3.lan/b/k?X-Amz-Security-Token=***&X-Amz-Signature=***",
            ),
            ("a?signal=1&sigma=2&sig", "a?signal=1&sigma=2&sig"),
            ("ünïcode?sig=x&ü", "ünïcode?sig=***&ü"),
        ];
        for (text, redacted) in cases {
            assert_eq!(redact_credentials(text), redacted);
        }
    }
}
