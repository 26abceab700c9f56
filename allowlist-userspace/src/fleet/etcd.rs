//! A small etcd v3 client over its JSON gateway (`/v3/kv/range`, `/v3/kv/txn`,
//! `/v3/watch`, `/v3/lease/*`, `/v3/auth/authenticate`): ureq over rustls like the
//! feeds, serde_json and base64, so nothing needs protoc or a gRPC stack. Keys and values
//! travel base64-encoded; 64-bit numbers come back as JSON strings.

use std::{
    io::{BufRead, BufReader, Read},
    sync::Mutex,
    time::Duration,
};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use serde_json::{json, Value};
use ureq::tls::{Certificate, ClientCert, PrivateKey, TlsConfig};

use tracing::warn;

use super::FleetConfig;

/// Connecting to an endpoint may take this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A request other than a watch may take this long (a 100k-entry push included).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest answer read, and largest full read of a prefix over all its pages (100k
/// entries with descriptions fit).
pub const MAX_ANSWER_BYTES: u64 = 256 << 20;
/// Keys asked for per page of a full read: a page of the largest values stays a few
/// tens of MiB, and 100k keys take a few dozen round trips.
const RANGE_PAGE_KEYS: usize = 5_000;
/// A watch that reads nothing for this long is taken as dead: its reader ends (and the
/// follower opens another). Watches ask for etcd's progress notifications, sent to an
/// idle watch every 10 minutes by default (`--experimental-watch-progress-notify-interval`),
/// so a live watch hears from etcd well within it.
pub const WATCH_READ_TIMEOUT: Duration = Duration::from_secs(25 * 60);
/// Largest password file read.
const MAX_PASSWORD_BYTES: u64 = 4096;
/// Largest client certificate or key file read.
const MAX_PEM_BYTES: u64 = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd {endpoint}: {cause}")]
    Transport { endpoint: String, cause: String },
    #[error("etcd {endpoint} answered HTTP {status}: {message}")]
    Status {
        endpoint: String,
        status: u16,
        message: String,
    },
    /// etcd refused to log in the configured user.
    #[error("etcd {endpoint} refused to log in user {user:?} with the password in {file}: {message}; put that user's etcd password in the file (its first line) or fix username in [fleet]")]
    Login {
        endpoint: String,
        user: String,
        file: String,
        message: String,
    },
    /// The watch delivers nothing though etcd has changes for it.
    #[error("the watch of etcd went silent: {0}")]
    Stalled(String),
    #[error("etcd answered something that is not its API: {0}")]
    Protocol(String),
    #[error("{0}")]
    Setup(String),
}

/// One key-value as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// One write of a transaction.
#[derive(Clone, Debug)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<i64>,
    },
    /// Every key starting with `prefix`.
    DeletePrefix(String),
    Delete(String),
}

/// What a conditional transaction needs unwritten since a revision. A deleted key is
/// not in a range any more, so only a key every writer touches (a marker) also vouches
/// for deletions.
#[derive(Clone, Copy, Debug)]
pub enum Unchanged<'k> {
    /// No key starting with this prefix.
    Prefix(&'k str, i64),
    /// This key (a key that does not exist counts as never written).
    Key(&'k str, i64),
}

/// One message of a watch stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchMessage {
    Created,
    /// The events of one answer (a transaction's are never split), and the revision
    /// the store was at.
    Events {
        revision: i64,
        events: Vec<Event>,
    },
    /// The revision asked for was compacted away: read everything again.
    Compacted {
        compact_revision: i64,
    },
    Canceled(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Put(Kv),
    Delete { key: String, mod_revision: i64 },
}

impl Event {
    /// The revision that made this change.
    pub fn mod_revision(&self) -> i64 {
        match self {
            Event::Put(kv) => kv.mod_revision,
            Event::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

pub struct Etcd {
    agent: ureq::Agent,
    /// Agent without a total timeout, for watches.
    watch_agent: ureq::Agent,
    endpoints: Vec<String>,
    username: Option<String>,
    password_file: Option<std::path::PathBuf>,
    token: Mutex<Option<String>>,
}

pub fn encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn decode(value: &Value) -> Result<Vec<u8>, EtcdError> {
    match value.as_str() {
        None => Ok(Vec::new()),
        Some(text) => STANDARD
            .decode(text)
            .map_err(|error| EtcdError::Protocol(format!("bad base64: {error}"))),
    }
}

fn decode_key(value: &Value) -> Result<String, EtcdError> {
    String::from_utf8(decode(value)?)
        .map_err(|_| EtcdError::Protocol("a key that is not UTF-8".into()))
}

/// A 64-bit field: the gateway writes them as strings, and leaves zeros out.
fn int(value: &Value) -> i64 {
    match value {
        Value::String(text) => text.parse().unwrap_or(0),
        Value::Number(number) => number.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// The end of the range of keys starting with `prefix` (etcd's `--prefix`).
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A key-value of an answer, or `None` (logged) when it does not decode: one bad key
/// (not base64, not UTF-8: no key allowlistctl writes) fails no other.
fn decodable_kv(value: &Value) -> Option<Kv> {
    kv(value)
        .map_err(|error| warn!(key = %value["key"], "fleet: skipped an etcd key: {error}"))
        .ok()
}

fn kv(value: &Value) -> Result<Kv, EtcdError> {
    Ok(Kv {
        key: decode_key(&value["key"])?,
        value: decode(&value["value"])?,
        mod_revision: int(&value["mod_revision"]),
    })
}

impl Etcd {
    pub fn new(config: &FleetConfig) -> Result<Etcd, EtcdError> {
        Etcd::with_watch_read_timeout(config, WATCH_READ_TIMEOUT)
    }

    fn with_watch_read_timeout(
        config: &FleetConfig,
        watch_read_timeout: Duration,
    ) -> Result<Etcd, EtcdError> {
        let mut tls = TlsConfig::builder();
        if let Some(path) = &config.ca_file {
            let roots = crate::feeds::fetch::read_ca_file(path)
                .map_err(|error| EtcdError::Setup(error.to_string()))?;
            tls = tls.root_certs(roots);
        }
        if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
            let read = |path: &std::path::Path| {
                crate::feeds::fetch::read_bounded(path, MAX_PEM_BYTES).map_err(|cause| {
                    EtcdError::Setup(format!("reading {}: {cause}", path.display()))
                })
            };
            let cert_pem = read(cert)?;
            let key_pem = read(key)?;
            let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&cert_pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(cert)) => Some(cert.to_owned()),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(EtcdError::Setup(format!(
                    "{}: no PEM certificate in it",
                    cert.display()
                )));
            }
            let key = PrivateKey::from_pem(&key_pem)
                .map_err(|error| EtcdError::Setup(format!("{}: {error}", key.display())))?;
            tls = tls.client_cert(Some(ClientCert::new_with_certs(&certs, key)));
        }
        let tls = tls.build();
        let build = |total: Option<Duration>, per_read: Option<Duration>| -> ureq::Agent {
            ureq::Agent::config_builder()
                .timeout_connect(Some(CONNECT_TIMEOUT))
                .timeout_global(total)
                .timeout_per_read(per_read)
                .http_status_as_error(false)
                .max_redirects(0)
                .tls_config(tls.clone())
                .user_agent(concat!("allowlist/", env!("CARGO_PKG_VERSION")))
                .build()
                .into()
        };
        Ok(Etcd {
            agent: build(Some(REQUEST_TIMEOUT), None),
            watch_agent: build(None, Some(watch_read_timeout)),
            endpoints: config.endpoints.clone(),
            username: config.username.clone(),
            password_file: config.password_file.clone(),
            token: Mutex::new(None),
        })
    }

    fn token(&self) -> Option<String> {
        self.token.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_token(&self, token: Option<String>) {
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = token;
    }

    /// Logs in with the configured user, once per token (etcd tokens expire; a refused
    /// token is dropped and the next request logs in again).
    fn authenticate(&self, endpoint: &str) -> Result<(), EtcdError> {
        let (Some(user), Some(file)) = (&self.username, &self.password_file) else {
            return Ok(());
        };
        if self.token().is_some() {
            return Ok(());
        }
        let bytes =
            crate::feeds::fetch::read_bounded(file, MAX_PASSWORD_BYTES).map_err(|cause| {
                EtcdError::Setup(format!(
                    "reading the etcd password file {}: {cause}",
                    file.display()
                ))
            })?;
        let password = String::from_utf8_lossy(&bytes)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        let answer = self
            .send(
                &self.agent,
                endpoint,
                "/v3/auth/authenticate",
                &json!({"name": user, "password": password}),
                false,
            )
            .map_err(|error| match error {
                // etcd 3.4 with both `--client-cert-auth` and `--auth` refuses every
                // login through its JSON gateway (seen against a real one).
                EtcdError::Status {
                    endpoint, message, ..
                } if message.contains("CommonName") && message.contains("gateway") => {
                    EtcdError::Setup(format!(
                        "etcd {endpoint} refused to log in user {user:?}: {}. It asks for client certificates (--client-cert-auth) and passwords at once, and then refuses logins through its JSON gateway, which allowlist uses: use client certificates with etcd's auth off, or a user and password_file with etcd not asking for client certificates",
                        gateway_message(&message)
                    ))
                }
                // etcd itself said no (another endpoint would say the same); an etcd
                // without a leader is not a refusal.
                EtcdError::Status {
                    endpoint, message, ..
                } if !moves_on_status(&error) => EtcdError::Login {
                    endpoint,
                    user: user.clone(),
                    file: file.display().to_string(),
                    message: gateway_message(&message),
                },
                error => error,
            })?;
        let mut body = String::new();
        answer
            .take(MAX_ANSWER_BYTES)
            .read_to_string(&mut body)
            .map_err(|error| transport(endpoint, error))?;
        let value: Value =
            serde_json::from_str(&body).map_err(|error| EtcdError::Protocol(error.to_string()))?;
        let token = value["token"]
            .as_str()
            .ok_or_else(|| EtcdError::Protocol("authenticate gave no token".into()))?;
        self.set_token(Some(token.to_string()));
        Ok(())
    }

    fn send(
        &self,
        agent: &ureq::Agent,
        endpoint: &str,
        path: &str,
        body: &Value,
        with_token: bool,
    ) -> Result<impl Read, EtcdError> {
        let mut request = agent
            .post(&format!("{endpoint}{path}"))
            .header("Content-Type", "application/json");
        if with_token {
            if let Some(token) = self.token() {
                request = request.header("Authorization", &token);
            }
        }
        let response = request
            .send(body.to_string().as_bytes())
            .map_err(|error| transport(endpoint, error))?;
        let status = response.status().as_u16();
        let reader = response.into_body().into_reader();
        if status != 200 {
            let mut message = String::new();
            let _ = reader.take(4096).read_to_string(&mut message);
            if status == 401 || message.contains("invalid auth token") {
                self.set_token(None);
            }
            return Err(EtcdError::Status {
                endpoint: endpoint.to_string(),
                status,
                message: message.trim().chars().take(300).collect(),
            });
        }
        Ok(reader)
    }

    /// Posts `body` to `path` of the JSON gateway at the first endpoint that answers and
    /// has a leader, logging in again once if etcd forgot this client's token (a
    /// restart loses simple tokens); the answer. Public for what this client has no
    /// method for (the tests set up etcd's users with it).
    pub fn call(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        self.call_limited(path, body, MAX_ANSWER_BYTES)
            .map(|(value, _)| value)
    }

    /// As [`Etcd::call`], reading at most `limit` bytes; the answer and its size.
    fn call_limited(
        &self,
        path: &str,
        body: &Value,
        limit: u64,
    ) -> Result<(Value, u64), EtcdError> {
        let mut last = None;
        for endpoint in &self.endpoints {
            match self.call_endpoint(endpoint, path, body, limit) {
                Ok(value) => return Ok(value),
                Err(error) if moves_on(&error) => last = Some(error),
                // etcd itself answered: another endpoint would say the same.
                Err(error) => return Err(error),
            }
        }
        Err(last.unwrap_or_else(|| EtcdError::Setup("no etcd endpoint configured".into())))
    }

    fn call_endpoint(
        &self,
        endpoint: &str,
        path: &str,
        body: &Value,
        limit: u64,
    ) -> Result<(Value, u64), EtcdError> {
        let mut answer = self
            .authenticate(endpoint)
            .and_then(|()| self.send(&self.agent, endpoint, path, body, true));
        if answer.as_ref().is_err_and(is_invalid_token) && self.username.is_some() {
            // `send` dropped the token: this logs in again.
            answer = self
                .authenticate(endpoint)
                .and_then(|()| self.send(&self.agent, endpoint, path, body, true));
        }
        let mut text = String::new();
        answer?
            .take(limit)
            .read_to_string(&mut text)
            .map_err(|error| transport(endpoint, error))?;
        let value = serde_json::from_str(&text)
            .map_err(|error| EtcdError::Protocol(format!("{path}: {error}")))?;
        Ok((value, u64::try_from(text.len()).unwrap_or(u64::MAX)))
    }

    /// Every key starting with `prefix`, and the revision they are all as of: read in
    /// pages of [`RANGE_PAGE_KEYS`], every page at the first one's revision, at most
    /// [`MAX_ANSWER_BYTES`] in all.
    pub fn range_prefix(&self, prefix: &str) -> Result<(i64, Vec<Kv>), EtcdError> {
        let end = prefix_end(prefix);
        let mut start = prefix.as_bytes().to_vec();
        let mut revision = 0;
        let mut kvs = Vec::new();
        let mut left = MAX_ANSWER_BYTES;
        loop {
            let mut request = json!({
                "key": encode(&start),
                "range_end": encode(&end),
                "limit": RANGE_PAGE_KEYS.to_string(),
            });
            if revision > 0 {
                request["revision"] = json!(revision.to_string());
            }
            let (answer, size) = self.call_limited("/v3/kv/range", &request, left)?;
            // No revision, no telling what the answer is as of: an empty `kvs` from it
            // would read as an empty set.
            let answered = int(&answer["header"]["revision"]);
            if answered <= 0 {
                return Err(EtcdError::Protocol(format!(
                    "range {prefix}: an answer without a revision"
                )));
            }
            if revision == 0 {
                revision = answered;
            }
            let page = answer["kvs"].as_array().map_or(&[][..], Vec::as_slice);
            left = left
                .checked_sub(size)
                .filter(|left| *left > 0)
                .ok_or_else(|| {
                    EtcdError::Protocol(format!(
                        "range {prefix}: more than {MAX_ANSWER_BYTES} bytes in all; refused"
                    ))
                })?;
            // The next page starts just after this page's last key (even one that does
            // not decode, so it is not asked for again).
            let last_key = page.last().map(|kv| decode(&kv["key"])).transpose()?;
            kvs.extend(page.iter().filter_map(decodable_kv));
            match last_key {
                Some(mut key) if answer["more"].as_bool() == Some(true) => {
                    key.push(0);
                    start = key;
                }
                // A part of the set taken for all of it would read as a shrink.
                None if answer["more"].as_bool() == Some(true) => {
                    return Err(EtcdError::Protocol(format!(
                        "range {prefix}: an empty page that says more follow"
                    )))
                }
                _ => return Ok((revision, kvs)),
            }
        }
    }

    /// etcd's cluster id and current revision (a range that counts one key).
    pub fn header(&self, key: &str) -> Result<(u64, i64), EtcdError> {
        let answer = self.call(
            "/v3/kv/range",
            &json!({"key": encode(key.as_bytes()), "count_only": true}),
        )?;
        let header = &answer["header"];
        // A u64: JSON gateways write it as a string, too big for `int`.
        let cluster = match &header["cluster_id"] {
            Value::String(text) => text.parse().ok(),
            value => value.as_u64(),
        };
        match (cluster, int(&header["revision"])) {
            (Some(cluster), revision) if revision > 0 => Ok((cluster, revision)),
            _ => Err(EtcdError::Protocol(format!(
                "range {key}: an answer without cluster id or revision: {header}"
            ))),
        }
    }

    /// One key, or `None`.
    pub fn get(&self, key: &str) -> Result<(i64, Option<Kv>), EtcdError> {
        self.get_with(key, false)
    }

    /// As [`Etcd::get`], answered by the member asked from what it has, without a round
    /// of the cluster (possibly a little behind): for checks every host makes often.
    pub fn get_serializable(&self, key: &str) -> Result<(i64, Option<Kv>), EtcdError> {
        self.get_with(key, true)
    }

    fn get_with(&self, key: &str, serializable: bool) -> Result<(i64, Option<Kv>), EtcdError> {
        let answer = self.call(
            "/v3/kv/range",
            &json!({"key": encode(key.as_bytes()), "serializable": serializable}),
        )?;
        let revision = int(&answer["header"]["revision"]);
        let found = match answer["kvs"].as_array().and_then(|kvs| kvs.first()) {
            None => None,
            Some(value) => Some(kv(value)?),
        };
        Ok((revision, found))
    }

    /// Applies every op in one transaction (all or none); returns its revision.
    pub fn txn(&self, ops: &[Op]) -> Result<i64, EtcdError> {
        self.txn_if_unchanged(&[], ops)?
            .ok_or_else(|| EtcdError::Protocol("an unconditional transaction failed".into()))
    }

    /// As [`Etcd::txn`], only if none of `unchanged` was written after the revision it
    /// gives; `None` when one was (nothing was applied).
    pub fn txn_if_unchanged(
        &self,
        unchanged: &[Unchanged<'_>],
        ops: &[Op],
    ) -> Result<Option<i64>, EtcdError> {
        let success: Vec<Value> = ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => {
                    let mut put = json!({"key": encode(key.as_bytes()), "value": encode(value)});
                    if let Some(lease) = lease {
                        put["lease"] = json!(lease.to_string());
                    }
                    json!({"request_put": put})
                }
                Op::DeletePrefix(prefix) => json!({"request_delete_range": {
                    "key": encode(prefix.as_bytes()),
                    "range_end": encode(&prefix_end(prefix)),
                }}),
                Op::Delete(key) => json!({"request_delete_range": {"key": encode(key.as_bytes())}}),
            })
            .collect();
        let compare: Vec<Value> = unchanged
            .iter()
            .map(|unchanged| {
                let (key, revision) = match unchanged {
                    Unchanged::Prefix(key, revision) | Unchanged::Key(key, revision) => {
                        (key, revision)
                    }
                };
                let mut compare = json!({
                    "key": encode(key.as_bytes()),
                    "target": "MOD",
                    "result": "LESS",
                    "mod_revision": revision.saturating_add(1).to_string(),
                });
                if let Unchanged::Prefix(prefix, _) = unchanged {
                    compare["range_end"] = json!(encode(&prefix_end(prefix)));
                }
                compare
            })
            .collect();
        let answer = self.call(
            "/v3/kv/txn",
            &json!({"compare": compare, "success": success}),
        )?;
        if answer["succeeded"].as_bool() != Some(true) {
            return Ok(None);
        }
        Ok(Some(int(&answer["header"]["revision"])))
    }

    /// Drops the history before `revision` (what an operator's `etcdctl compact` does;
    /// the tests and the benchmark use it to send hosts through a full resync).
    pub fn compact(&self, revision: i64) -> Result<(), EtcdError> {
        self.call(
            "/v3/kv/compaction",
            &json!({"revision": revision.to_string(), "physical": true}),
        )
        .map(|_| ())
    }

    /// A lease of `ttl_secs`; its id.
    pub fn grant(&self, ttl_secs: i64) -> Result<i64, EtcdError> {
        let answer = self.call("/v3/lease/grant", &json!({"TTL": ttl_secs.to_string()}))?;
        match int(&answer["ID"]) {
            0 => Err(EtcdError::Protocol(format!("lease grant: {answer}"))),
            id => Ok(id),
        }
    }

    /// Renews a lease; `false` when etcd no longer has it (it expired).
    pub fn keep_alive(&self, lease: i64) -> Result<bool, EtcdError> {
        let answer = self.call("/v3/lease/keepalive", &json!({"ID": lease.to_string()}))?;
        Ok(int(&answer["result"]["TTL"]) > 0)
    }

    /// Watches every key starting with `prefix` from `start_revision` on. The stream
    /// ends when etcd goes away.
    pub fn watch(&self, prefix: &str, start_revision: i64) -> Result<Watch, EtcdError> {
        let body = json!({"create_request": {
            "key": encode(prefix.as_bytes()),
            "range_end": encode(&prefix_end(prefix)),
            "start_revision": start_revision.to_string(),
            "progress_notify": true,
        }});
        let mut last = None;
        for endpoint in &self.endpoints {
            let open = || {
                self.authenticate(endpoint)
                    .and_then(|()| self.send(&self.watch_agent, endpoint, "/v3/watch", &body, true))
            };
            let mut answer = open();
            if answer.as_ref().is_err_and(is_invalid_token) && self.username.is_some() {
                answer = open();
            }
            match answer {
                Ok(reader) => {
                    return Ok(Watch {
                        reader: Box::new(BufReader::new(reader)),
                        endpoint: endpoint.clone(),
                    })
                }
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| EtcdError::Setup("no etcd endpoint configured".into())))
    }
}

/// Whether another endpoint may do better: this one did not answer, or answered that
/// its member has no leader (or is not ready) rather than anything about the request.
fn moves_on(error: &EtcdError) -> bool {
    match error {
        EtcdError::Transport { .. } => true,
        EtcdError::Status { .. } => moves_on_status(error),
        EtcdError::Login { .. }
        | EtcdError::Stalled(_)
        | EtcdError::Protocol(_)
        | EtcdError::Setup(_) => false,
    }
}

/// An answer of a member that cannot serve (no leader, not ready).
fn moves_on_status(error: &EtcdError) -> bool {
    matches!(error, EtcdError::Status { status, message, .. }
        if *status == 503 || message.contains("no leader") || message.contains("not capable"))
}

/// The `error` of a gateway's JSON error answer (`{"error": "etcdserver: …", "code":
/// …}`), or the answer as it is.
fn gateway_message(answer: &str) -> String {
    serde_json::from_str::<Value>(answer)
        .ok()
        .and_then(|value| value["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| answer.to_string())
}

fn is_invalid_token(error: &EtcdError) -> bool {
    matches!(error, EtcdError::Status { status, message, .. }
        if *status == 401 || message.contains("invalid auth token"))
}

fn transport(endpoint: &str, error: impl std::fmt::Display) -> EtcdError {
    let mut cause = error.to_string();
    // A TLS handshake that failed over certificates: say which settings decide it.
    if cause.contains("certificate") || cause.contains("Certificate") {
        cause.push_str(
            "; check [fleet] ca_file (the CA that signed etcd's certificate, for an endpoint named as in that certificate) and, if etcd asks for client certificates, cert_file and key_file",
        );
    }
    EtcdError::Transport {
        endpoint: endpoint.to_string(),
        cause,
    }
}

/// An open watch: one JSON message per line.
pub struct Watch {
    reader: Box<dyn BufRead + Send>,
    endpoint: String,
}

impl Watch {
    /// The next message; an error when the stream ended or broke.
    pub fn next_message(&mut self) -> Result<WatchMessage, EtcdError> {
        let mut line = Vec::new();
        let read = (&mut self.reader)
            .take(MAX_ANSWER_BYTES)
            .read_until(b'\n', &mut line)
            .map_err(|error| transport(&self.endpoint, error))?;
        if read == 0 {
            return Err(transport(&self.endpoint, "the watch stream ended"));
        }
        let value: Value = serde_json::from_slice(&line)
            .map_err(|error| EtcdError::Protocol(format!("watch: {error}")))?;
        if let Some(error) = value.get("error") {
            return Ok(WatchMessage::Canceled(error.to_string()));
        }
        let result = &value["result"];
        let compact_revision = int(&result["compact_revision"]);
        if compact_revision > 0 {
            return Ok(WatchMessage::Compacted { compact_revision });
        }
        if result["canceled"].as_bool() == Some(true) {
            return Ok(WatchMessage::Canceled(
                result["cancel_reason"]
                    .as_str()
                    .unwrap_or("canceled")
                    .to_string(),
            ));
        }
        if result["created"].as_bool() == Some(true) {
            return Ok(WatchMessage::Created);
        }
        let mut events = Vec::new();
        for event in result["events"].as_array().into_iter().flatten() {
            let Some(kv) = decodable_kv(&event["kv"]) else {
                continue;
            };
            if event["type"].as_str() == Some("DELETE") {
                events.push(Event::Delete {
                    key: kv.key,
                    mod_revision: kv.mod_revision,
                });
            } else {
                events.push(Event::Put(kv));
            }
        }
        Ok(WatchMessage::Events {
            revision: int(&result["header"]["revision"]),
            events,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_end_of_a_prefix_is_its_successor() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(int(&json!("42")), 42);
        assert_eq!(int(&Value::Null), 0);
    }

    #[test]
    fn an_undecodable_key_is_skipped_alone() {
        let good = json!({"key": encode(b"/a/1"), "value": encode(b"{}"), "mod_revision": "7"});
        let not_utf8 = json!({"key": encode(&[0xff, 0xfe]), "mod_revision": "8"});
        let not_base64 = json!({"key": "%%%", "mod_revision": "9"});
        let kvs: Vec<Kv> = [not_utf8, good, not_base64]
            .iter()
            .filter_map(decodable_kv)
            .collect();
        assert_eq!(kvs.len(), 1);
        assert_eq!(kvs[0].key, "/a/1");
        assert_eq!(kvs[0].mod_revision, 7);
    }

    /// An etcd stand-in on loopback: answers the requests it gets, one connection each,
    /// with `answers` in order (status, body); returns its URL and, once done, each
    /// request's path, `Authorization` header and body.
    /// Each request the stand-in got: its path, `Authorization` header and body.
    type SeenRequests = Vec<(String, Option<String>, Value)>;

    fn fake_etcd(
        answers: Vec<(u16, &'static str)>,
    ) -> (String, std::thread::JoinHandle<SeenRequests>) {
        use std::io::Write as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for (status, body) in answers {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream);
                let mut request_line = String::new();
                reader.read_line(&mut request_line).unwrap();
                let mut length = 0;
                let mut authorization = None;
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    let header = header.trim_end();
                    if header.is_empty() {
                        break;
                    }
                    let (name, value) = header.split_once(':').unwrap();
                    match name.to_ascii_lowercase().as_str() {
                        "content-length" => length = value.trim().parse().unwrap(),
                        "authorization" => authorization = Some(value.trim().to_string()),
                        _ => {}
                    }
                }
                let mut request_body = vec![0; length];
                reader.read_exact(&mut request_body).unwrap();
                let path = request_line.split(' ').nth(1).unwrap().to_string();
                seen.push((
                    path,
                    authorization,
                    serde_json::from_slice(&request_body).unwrap(),
                ));
                write!(
                    reader.get_mut(),
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
            }
            seen
        });
        (url, server)
    }

    fn config(endpoints: Vec<String>) -> FleetConfig {
        FleetConfig {
            endpoints,
            prefix: "/allowlist".into(),
            host: "test".into(),
            sets: Vec::new(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password_file: None,
            line: 0,
        }
    }

    const HEADER: &str = r#"{"header":{"cluster_id":"1","revision":"7"}}"#;

    #[test]
    fn a_member_without_a_leader_sends_the_request_to_the_next_endpoint() {
        let (leaderless, first) = fake_etcd(vec![(
            503,
            r#"{"error":"etcdserver: no leader","code":14}"#,
        )]);
        let (healthy, second) = fake_etcd(vec![(200, HEADER)]);
        let etcd = Etcd::new(&config(vec![leaderless, healthy])).unwrap();
        assert_eq!(etcd.header("/allowlist/sets/").unwrap(), (1, 7));
        assert_eq!(first.join().unwrap().len(), 1);
        assert_eq!(second.join().unwrap().len(), 1);
    }

    #[test]
    fn a_token_etcd_forgot_is_replaced_by_logging_in_once_more() {
        let dir = tempfile::tempdir().unwrap();
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, "secret\n").unwrap();
        let (url, server) = fake_etcd(vec![
            (200, r#"{"token":"first"}"#),
            (
                401,
                r#"{"error":"etcdserver: invalid auth token","code":16}"#,
            ),
            (200, r#"{"token":"second"}"#),
            (200, HEADER),
        ]);
        let etcd = Etcd::new(&FleetConfig {
            username: Some("root".into()),
            password_file: Some(password_file),
            ..config(vec![url])
        })
        .unwrap();
        assert_eq!(etcd.header("/allowlist/sets/").unwrap(), (1, 7));
        let seen = server.join().unwrap();
        let paths: Vec<&str> = seen.iter().map(|(path, ..)| path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/v3/auth/authenticate",
                "/v3/kv/range",
                "/v3/auth/authenticate",
                "/v3/kv/range"
            ]
        );
        assert_eq!(seen[3].1.as_deref(), Some("second"));
    }

    #[test]
    fn a_refused_login_names_the_user_and_the_password_file_and_tries_no_other_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, "wrong\n").unwrap();
        // As etcd 3.4's gateway answers a wrong password.
        let (url, server) = fake_etcd(vec![(
            400,
            r#"{"error":"etcdserver: authentication failed, invalid user ID or password","code":3}"#,
        )]);
        let etcd = Etcd::new(&FleetConfig {
            username: Some("allowlist".into()),
            password_file: Some(password_file.clone()),
            ..config(vec![url, "http://127.0.0.1:1".into()])
        })
        .unwrap();
        let error = etcd.header("/allowlist/sets/").unwrap_err().to_string();
        assert!(error.contains("\"allowlist\""), "{error}");
        assert!(
            error.contains(&password_file.display().to_string()),
            "{error}"
        );
        assert!(error.contains("invalid user ID or password"), "{error}");
        assert_eq!(server.join().unwrap().len(), 1);
    }

    #[test]
    fn a_watch_that_hears_nothing_ends_instead_of_waiting_forever() {
        use std::io::Write as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (done, wait) = std::sync::mpsc::channel::<()>();
        // Answers the watch with its "created" message, then holds the connection open
        // and silent (a connection a NAT forgot looks just like that).
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut request = String::new();
            while reader.read_line(&mut request).unwrap() > 2 {
                request.clear();
            }
            let created = "{\"result\":{\"header\":{\"revision\":\"1\"},\"created\":true}}\n";
            write!(
                reader.get_mut(),
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{created}\r\n",
                created.len()
            )
            .unwrap();
            let _ = wait.recv();
        });
        let etcd =
            Etcd::with_watch_read_timeout(&config(vec![url]), Duration::from_millis(300)).unwrap();
        let mut watch = etcd.watch("/allowlist/sets/", 1).unwrap();
        assert_eq!(watch.next_message().unwrap(), WatchMessage::Created);
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || sender.send(watch.next_message()));
        let error = receiver
            .recv_timeout(Duration::from_secs(30))
            .expect("the silent watch's read never ended")
            .unwrap_err();
        assert!(matches!(error, EtcdError::Transport { .. }), "{error}");
        done.send(()).unwrap();
        server.join().unwrap();
    }

    #[test]
    fn an_etcd_that_asks_for_certificates_and_passwords_at_once_is_named_as_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, "secret\n").unwrap();
        // As etcd 3.4 started with --client-cert-auth and auth on answers a login.
        let (url, server) = fake_etcd(vec![(
            400,
            r#"{"error":"CommonName of client sending a request against gateway will be ignored and not used as expected","code":3}"#,
        )]);
        let etcd = Etcd::new(&FleetConfig {
            username: Some("allowlist".into()),
            password_file: Some(password_file),
            ..config(vec![url])
        })
        .unwrap();
        let error = etcd.header("/allowlist/sets/").unwrap_err().to_string();
        assert!(error.contains("--client-cert-auth"), "{error}");
        assert!(error.contains("\"allowlist\""), "{error}");
        server.join().unwrap();
    }

    #[test]
    fn a_full_read_takes_every_page_at_the_first_pages_revision() {
        let (url, server) = fake_etcd(vec![
            (
                200,
                r#"{"header":{"revision":"9"},"kvs":[{"key":"L2EvMQ==","value":"e30=","mod_revision":"3"}],"more":true}"#,
            ),
            (
                200,
                r#"{"header":{"revision":"12"},"kvs":[{"key":"L2EvMg==","value":"e30=","mod_revision":"4"}]}"#,
            ),
        ]);
        let etcd = Etcd::new(&config(vec![url])).unwrap();
        let (revision, kvs) = etcd.range_prefix("/a/").unwrap();
        assert_eq!(revision, 9, "the revision every page was read at");
        let keys: Vec<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["/a/1", "/a/2"]);
        let seen = server.join().unwrap();
        let next_page = &seen[1].2;
        assert_eq!(next_page["revision"], "9");
        assert_eq!(
            next_page["key"],
            encode(b"/a/1\0"),
            "just after the last key read"
        );
    }
}
