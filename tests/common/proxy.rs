//! A fault-injecting HTTP proxy for the export API tests: it sits between the daemon and
//! the real server and, request by request, forwards faithfully or injects a fault (429
//! with Retry-After, 500, 502 with HTML, a reset connection, a reply slower than the
//! client's timeout, a truncated JSON body). Its upstream can be switched mid-run (to a
//! server whose cursor key rotated away).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone)]
pub enum Fault {
    Forward,
    TooManyRequests(&'static str),
    ServerError,
    BadGatewayHtml,
    Reset,
    Slow(Duration),
    Truncated,
    /// Forward, renaming the first record's `order_id` (a record the daemon cannot key).
    StripOrderId,
}

pub struct Proxy {
    pub base: String,
    state: Arc<Mutex<State>>,
}

struct State {
    upstream: String,
    faults: VecDeque<Fault>,
    /// Inject the next fault every `every` requests.
    every: usize,
    requests: usize,
    injected: Vec<String>,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State { upstream: upstream.to_string(), faults: VecDeque::new(), every: 1, requests: 0, injected: Vec::new() }));
        let shared = state.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            loop {
                let Ok((socket, _)) = listener.accept().await else { return };
                tokio::spawn(handle(socket, shared.clone(), http.clone()));
            }
        });
        Self { base, state }
    }

    /// Faults to inject, one every `every` requests, in order.
    pub fn inject(&self, faults: Vec<Fault>, every: usize) {
        let mut s = self.state.lock().unwrap();
        s.faults.extend(faults);
        s.every = every.max(1);
    }

    pub fn set_upstream(&self, upstream: &str) {
        self.state.lock().unwrap().upstream = upstream.to_string();
    }

    pub fn pending_faults(&self) -> usize {
        self.state.lock().unwrap().faults.len()
    }

    pub fn injected(&self) -> Vec<String> {
        self.state.lock().unwrap().injected.clone()
    }
}

async fn read_head(socket: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut byte).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&byte[..n]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

async fn reply(socket: &mut TcpStream, status: &str, headers: &str, body: &[u8]) {
    let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n", body.len());
    let _ = socket.write_all(head.as_bytes()).await;
    let _ = socket.write_all(body).await;
    let _ = socket.shutdown().await;
}

async fn handle(mut socket: TcpStream, state: Arc<Mutex<State>>, http: reqwest::Client) {
    // One request per connection (every reply says Connection: close).
    let Some(head) = read_head(&mut socket).await else { return };
    let mut lines = head.lines();
    let path = lines.next().and_then(|l| l.split_whitespace().nth(1)).unwrap_or("/").to_string();
    let auth = lines.find_map(|l| l.strip_prefix("authorization: ").or_else(|| l.strip_prefix("Authorization: "))).unwrap_or("").to_string();
    let (fault, upstream) = {
        let mut s = state.lock().unwrap();
        s.requests += 1;
        let fault = if s.requests % s.every == 0 { s.faults.pop_front().unwrap_or(Fault::Forward) } else { Fault::Forward };
        if !matches!(fault, Fault::Forward) {
            s.injected.push(format!("{fault:?}"));
        }
        (fault, s.upstream.clone())
    };
    match fault {
        Fault::TooManyRequests(after) => reply(&mut socket, "429 Too Many Requests", &format!("Retry-After: {after}\r\n"), b"{}").await,
        Fault::ServerError => reply(&mut socket, "500 Internal Server Error", "Content-Type: application/json\r\n", br#"{"error":"boom"}"#).await,
        Fault::BadGatewayHtml => {
            reply(&mut socket, "502 Bad Gateway", "Content-Type: text/html\r\n", b"<html><body><h1>502 Bad Gateway</h1></body></html>").await
        }
        Fault::Reset => {
            // A zero linger makes the close a reset (RST); it does not block.
            #[allow(deprecated)]
            let _ = socket.set_linger(Some(Duration::ZERO));
            drop(socket); // RST
        }
        Fault::Slow(delay) => {
            tokio::time::sleep(delay).await;
            reply(&mut socket, "503 Service Unavailable", "", b"").await;
        }
        Fault::Forward | Fault::Truncated | Fault::StripOrderId => {
            let response = http.get(format!("{upstream}{path}")).header("authorization", auth).send().await;
            let Ok(response) = response else {
                reply(&mut socket, "502 Bad Gateway", "", b"").await;
                return;
            };
            let status = response.status();
            let mut body = response.bytes().await.unwrap_or_default().to_vec();
            if matches!(fault, Fault::StripOrderId) {
                body = String::from_utf8(body).unwrap().replacen("\"order_id\":", "\"order_ref\":", 1).into_bytes();
            }
            if matches!(fault, Fault::Truncated) {
                // Headers promise the whole body; half of it arrives, then the connection ends.
                let head = format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&body[..body.len() / 2]).await;
                let _ = socket.shutdown().await;
            } else {
                reply(&mut socket, &status.to_string(), "Content-Type: application/json\r\n", &body).await;
            }
        }
    }
}
