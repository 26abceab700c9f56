//! Fetching a feed over HTTP(S): ureq over rustls with Mozilla's roots (or the CA bundle
//! a feed names), proxies from the environment (`HTTPS_PROXY`, `NO_PROXY`, …),
//! conditional requests (`If-None-Match`, `If-Modified-Since`), and bounds on time and
//! size, so that no provider can stall the daemon or fill its memory.

use std::{fs, io::Read, path::Path, time::Duration};

use serde::{Deserialize, Serialize};
use ureq::tls::{RootCerts, TlsConfig};

use super::config::FetchSource;

/// Largest body taken (AWS's ip-ranges.json, the largest provider list, is ~2 MiB).
pub const MAX_BODY_BYTES: u64 = 16 << 20;
/// Connecting (DNS, TCP, TLS) may take this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole request, body included, may take this long.
pub const TIMEOUT: Duration = Duration::from_secs(60);
/// Largest API key file read.
pub const MAX_API_KEY_BYTES: u64 = 4096;
/// Largest CA bundle read.
pub const MAX_CA_FILE_BYTES: u64 = 1 << 20;
/// Longest validator (ETag, Last-Modified) kept for the next request.
const MAX_VALIDATOR_BYTES: usize = 1024;
/// Redirects followed when no API key is sent (none when one is, so the key never goes
/// anywhere but the configured URL).
const MAX_REDIRECTS: u32 = 5;

/// What makes the next request conditional: the last good body's `ETag` and
/// `Last-Modified`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validators {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
}

/// A successful fetch.
#[derive(Debug)]
pub enum Fetched {
    /// 304: the last good body is still current.
    NotModified,
    Body {
        body: Vec<u8>,
        validators: Validators,
    },
    /// A DNS name's answer (`[[allow]] host`).
    Resolved(super::dns::Resolved),
}

/// Why a fetch failed. The feed keeps its last good list. Never carries the API key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("reading the API key file {path}: {cause}")]
    ApiKey { path: String, cause: String },
    #[error("reading the CA bundle {path}: {cause}")]
    CaFile { path: String, cause: String },
    #[error("{url}: {cause}")]
    Transport { url: String, cause: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: the body is larger than {MAX_BODY_BYTES} bytes; refused")]
    TooLarge { url: String },
    #[error(transparent)]
    Dns(#[from] super::dns::ResolveError),
}

/// Fetches `source`, conditionally on `validators`.
pub fn fetch(source: &FetchSource, validators: &Validators) -> Result<Fetched, FetchError> {
    let url = source.url.clone();
    let api_key = source
        .api_key_file
        .as_deref()
        .map(read_api_key)
        .transpose()?;
    let mut config = ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(Some(TIMEOUT))
        .http_status_as_error(false)
        .max_redirects(if api_key.is_some() { 0 } else { MAX_REDIRECTS })
        .user_agent(concat!("allowlistd/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &source.ca_file {
        config = config.tls_config(TlsConfig::builder().root_certs(read_ca_file(path)?).build());
    }
    let agent: ureq::Agent = config.build().into();
    let mut request = agent.get(&url);
    if let Some(key) = &api_key {
        request = request.header("X-API-KEY", key);
    }
    if let Some(etag) = &validators.etag {
        request = request.header("If-None-Match", etag);
    }
    if let Some(at) = &validators.last_modified {
        request = request.header("If-Modified-Since", at);
    }
    let transport = |cause: String| FetchError::Transport {
        url: url.clone(),
        cause,
    };
    let response = request
        .call()
        .map_err(|error| transport(error.to_string()))?;
    let status = response.status().as_u16();
    if status == 304 {
        return Ok(Fetched::NotModified);
    }
    if !(200..300).contains(&status) {
        return Err(FetchError::Status { url, status });
    }
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .filter(|value| value.len() <= MAX_VALIDATOR_BYTES)
            .map(str::to_owned)
    };
    let validators = Validators {
        etag: header("etag"),
        last_modified: header("last-modified"),
    };
    let body = response
        .into_body()
        .with_config()
        .limit(MAX_BODY_BYTES)
        .read_to_vec()
        .map_err(|error| match error {
            ureq::Error::BodyExceedsLimit(_) => FetchError::TooLarge { url: url.clone() },
            other => transport(other.to_string()),
        })?;
    Ok(Fetched::Body { body, validators })
}

/// Reads at most `max` bytes of `path`, refusing a longer file.
pub(crate) fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let file = fs::File::open(path).map_err(|error| error.to_string())?;
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|error| error.to_string())?;
    if bytes.len() as u64 > max {
        return Err(format!("longer than {max} bytes"));
    }
    Ok(bytes)
}

/// The API key: the file's first line, trimmed. Read at every fetch, so a rotated key is
/// used without a reload.
fn read_api_key(path: &Path) -> Result<String, FetchError> {
    let error = |cause: String| FetchError::ApiKey {
        path: path.display().to_string(),
        cause,
    };
    let bytes = read_bounded(path, MAX_API_KEY_BYTES).map_err(error)?;
    let text = String::from_utf8(bytes).map_err(|_| error("not UTF-8".into()))?;
    let key = text.lines().next().unwrap_or_default().trim();
    if key.is_empty() {
        return Err(error("empty".into()));
    }
    if key.bytes().any(|byte| byte.is_ascii_control()) {
        return Err(error("holds control characters".into()));
    }
    Ok(key.to_owned())
}

pub(crate) fn read_ca_file(path: &Path) -> Result<RootCerts, FetchError> {
    let error = |cause: String| FetchError::CaFile {
        path: path.display().to_string(),
        cause,
    };
    let pem = read_bounded(path, MAX_CA_FILE_BYTES).map_err(error)?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item.map_err(|e| error(e.to_string()))? {
            ureq::tls::PemItem::Certificate(cert) => certs.push(cert.to_owned()),
            _ => continue,
        }
    }
    if certs.is_empty() {
        return Err(error("no PEM certificate in it".into()));
    }
    Ok(RootCerts::new_with_certs(&certs))
}
