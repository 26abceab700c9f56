//! A provider's endpoint for feed tests: a real HTTP server (tiny_http) on 127.0.0.1 in
//! the topology's host namespace, where the daemon runs, answering what the test says.
//! It checks a Harness-style `X-API-KEY` and `accountIdentifier` when told to, answers
//! `304 Not Modified` to an `If-None-Match` that names its current body, and records
//! every request.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use tiny_http::{Header, Response, Server};

use crate::{in_netns, Netns};

/// What the endpoint answers now.
#[derive(Clone, Debug)]
struct Answer {
    status: u16,
    body: String,
}

/// One request the endpoint saw, and the status it answered.
#[derive(Clone, Debug)]
pub struct Seen {
    pub url: String,
    pub api_key: Option<String>,
    pub if_none_match: Option<String>,
    pub status: u16,
}

struct Shared {
    answer: Answer,
    /// (API key, account) a request must carry, or any request is answered.
    required: Option<(String, String)>,
    seen: Vec<Seen>,
}

pub struct FeedServer {
    address: SocketAddr,
    /// `None` once stopped.
    server: Option<Arc<Server>>,
    shared: Arc<Mutex<Shared>>,
    stopped: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The namespace it listens in: stopping it must happen there (tiny_http closes its
    /// listener by connecting to it).
    netns: std::path::PathBuf,
}

impl FeedServer {
    /// Starts the endpoint on 127.0.0.1 (a free port) in `netns`, answering 503 until
    /// told otherwise.
    pub fn start(netns: &Netns) -> FeedServer {
        let server = in_netns(netns, || Server::http("127.0.0.1:0"))
            .unwrap_or_else(|error| panic!("starting the feed endpoint: {error}"));
        let address = server
            .server_addr()
            .to_ip()
            .expect("a TCP listener has an IP address");
        let server = Arc::new(server);
        let shared = Arc::new(Mutex::new(Shared {
            answer: Answer {
                status: 503,
                body: String::new(),
            },
            required: None,
            seen: Vec::new(),
        }));
        let stopped = Arc::new(AtomicBool::new(false));
        let thread = {
            let server = Arc::clone(&server);
            let shared = Arc::clone(&shared);
            let stopped = Arc::clone(&stopped);
            std::thread::spawn(move || serve(&server, &shared, &stopped))
        };
        FeedServer {
            address,
            server: Some(server),
            shared,
            stopped,
            thread: Some(thread),
            netns: netns.path(),
        }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Answers 401 unless a request carries `X-API-KEY: key` and
    /// `accountIdentifier=account`, as Harness does.
    pub fn require(&self, key: &str, account: &str) {
        self.shared.lock().unwrap().required = Some((key.into(), account.into()));
    }

    /// Answers `status` with `body` from now on.
    pub fn answer(&self, status: u16, body: &str) {
        self.shared.lock().unwrap().answer = Answer {
            status,
            body: body.into(),
        };
    }

    /// Answers as Harness's IP allowlist API does, listing `addresses`.
    pub fn harness(&self, addresses: &[&str]) {
        let body = serde_json::json!({
            "status": "SUCCESS",
            "data": { "ipAddresses": addresses },
            "metaData": null,
            "correlationId": "fcfff224-052a-4196-9aa0-aec8d1fd8811"
        });
        self.answer(200, &body.to_string());
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.lock().unwrap().seen.clone()
    }

    /// Stops answering: connections are refused from now on, like a provider that is
    /// down or unreachable.
    pub fn stop(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        self.stopped.store(true, Ordering::SeqCst);
        server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // The listener closes with the last reference to the server, dropped in its
        // namespace.
        let netns = self.netns.clone();
        let _ = std::thread::spawn(move || {
            if crate::netns::enter_netns(&netns).is_ok() {
                drop(server);
            }
        })
        .join();
    }
}

impl Drop for FeedServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An ETag naming `body`: its length and a checksum.
fn etag(body: &str) -> String {
    let sum = body.bytes().fold(0u64, |sum, byte| {
        sum.wrapping_mul(31).wrapping_add(u64::from(byte))
    });
    format!("\"{}-{sum:x}\"", body.len())
}

fn serve(server: &Server, shared: &Mutex<Shared>, stopped: &AtomicBool) {
    while !stopped.load(Ordering::SeqCst) {
        let request = match server.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(request)) => request,
            Ok(None) => continue,
            Err(_) => return,
        };
        let header = |name: &'static str| {
            request
                .headers()
                .iter()
                .find(|header| header.field.equiv(name))
                .map(|header| header.value.to_string())
        };
        let api_key = header("X-API-KEY");
        let if_none_match = header("If-None-Match");
        let url = request.url().to_string();
        let (status, body, tag) = {
            let shared = shared.lock().unwrap();
            let authorized = match &shared.required {
                None => true,
                Some((key, account)) => {
                    api_key.as_deref() == Some(key.as_str())
                        && url.contains(&format!("accountIdentifier={account}"))
                }
            };
            let answer = &shared.answer;
            let tag = etag(&answer.body);
            if !authorized {
                (
                    401,
                    r#"{"status":"ERROR","code":"INVALID_TOKEN"}"#.to_string(),
                    None,
                )
            } else if answer.status == 200 && if_none_match.as_deref() == Some(tag.as_str()) {
                (304, String::new(), Some(tag))
            } else if answer.status == 200 {
                (200, answer.body.clone(), Some(tag))
            } else {
                (answer.status, answer.body.clone(), None)
            }
        };
        shared.lock().unwrap().seen.push(Seen {
            url,
            api_key,
            if_none_match,
            status,
        });
        let mut response = Response::from_string(body).with_status_code(status);
        if let Some(tag) = tag {
            if let Ok(header) = Header::from_bytes("ETag", tag) {
                response = response.with_header(header);
            }
        }
        let _ = request.respond(response);
    }
}
