//! An instrumented test HTTP server ("the upstream").
//!
//! Endpoints (all paths are matched exactly; unknown paths get `404`):
//!
//! * `GET|HEAD /fixed/{n}` — `n` bytes of [`crate::pattern_byte`] pattern,
//!   `content-type: application/octet-stream`, streamed in 64 KiB frames with
//!   `Content-Length: n`. `?chunked=1` omits Content-Length (chunked on h1.1).
//! * `ANY /echo` — `200 text/plain`, body =
//!   `"{METHOD} {path_and_query} {version:?}\r\n"` + `"{name}: {value}\r\n"` per
//!   request header (HeaderMap order, values lossy UTF-8) + `"\r\n"` + the
//!   request body streamed through frame by frame. Request headers named
//!   `x-echo-*` are copied to the response headers. `?status=N` sets the
//!   status. `?trailer=1` adds a response trailer `x-echo-trailer` whose value
//!   is request header `x-echo-trailer-value` (empty if absent) and a
//!   `trailer: x-echo-trailer` header. HTTP/2 always transmits trailers;
//!   hyper only sends trailers on a chunked HTTP/1.1 response if the request
//!   carried `TE: trailers`.
//! * `POST /sha256` — consumes the body streaming, returns
//!   `"{hex sha256} {length}"`.
//! * `GET /sse?events=N&gate=NAME&interval_ms=M&data=S` —
//!   `content-type: text/event-stream`, no Content-Length; frame `i` is
//!   `"data: event {i}{S}\n\n"` for `i in 0..N` (N defaults to 1). With
//!   `gate`, event `i >= 1` is sent only after `release("{NAME}-{i}")`;
//!   otherwise `interval_ms` sleeps between events (benchmarks only).
//!   `encoding=gzip|deflate|br|zstd` compresses the stream (with
//!   `Content-Encoding`), flushing the compressor after every event so each
//!   event is one decodable frame.
//! * `GET /redirect?to=URL` — `302` with `Location: URL`, empty body.
//! * `GET /slow?gate=NAME` — waits for `release(NAME)`, then `200 "released"`;
//!   `?ms=M` sleeps instead.
//! * `GET /ws` — WebSocket echo over an HTTP/1.1 upgrade (text and binary
//!   messages are echoed). `?refuse=1` answers `200 "no upgrade"` instead of
//!   `101`. A request without `Upgrade: websocket` / `Sec-WebSocket-Key` gets
//!   `400`. `reflect=HEADER` puts that request header's value in the 101's
//!   `Sec-WebSocket-Protocol`; `extensions=X` adds `Sec-WebSocket-Extensions:
//!   X` (whether offered or not); `send=HEADER` first sends that header's
//!   value `V` as `"text: V"`, as binary `"bin: V"`, as `"frag: V"` fragmented
//!   into three frames, split across two `{"type":"response.text.delta",
//!   "delta":..}` messages and then `{"type":"response.done"}`; with `close=1`
//!   it then closes with reason `"bye V"`.
//!
//! * `ANY /render?from=HEADER[&where=W,..][&encoding=E][&pad=N][&split=1]
//!   [&gate=NAME][&status=N][&chunked=1]` — reflects request header `HEADER`
//!   back in every rendering a careless API might use (a reflection-attack
//!   fixture). The rendered values are [`crate::credential_values`] of the
//!   header value: `V` itself, plus for `Bearer x` / `Basic x` the part after
//!   the scheme `V2`, plus for `Basic` the decoded `user:password` `V3`.
//!   `400` if `from` is missing or the header is absent, or for an unknown
//!   `where`/`encoding`. `W` is a comma-separated subset of (default `body`):
//!   * `body` — `content-type: text/plain`; for each value, the lines of
//!     [`crate::renderings`] (`raw: V`, `base64: ..`, `base64url: ..`,
//!     `base64_x0..2: ..`, `hex: ..`, `HEX: ..`, `percent: ..`, `json: ..`,
//!     `json_u: ..`), each `\n`-terminated.
//!   * `header` — response headers `x-rendered-raw: v` (values that are valid
//!     header values) and `x-rendered-b64: base64(v)`, one of each per value.
//!   * `location` — status `302` and
//!     `Location: https://elsewhere.example/cb?key={percent(V)}&raw={V}`.
//!   * `trailer` — a trailer `x-rendered-trailer: V` (plus
//!     `trailer: x-rendered-trailer`; no Content-Length). HTTP/2 always sends
//!     it; hyper sends trailers on HTTP/1.1 only if the request carried
//!     `TE: trailers`.
//!   * `sse` — `content-type: text/event-stream`; frames
//!     `"data: part1=" ++ V[..len/2]`, then `V[len/2..] ++ "\n\n"` (with
//!     `gate=NAME`: only after `release(NAME)`), then `"data: done\n\n"`,
//!     each flushed separately. After the `body` lines if both are asked for
//!     (separated by an empty line; SSE parsers ignore the `label:` fields).
//!   * `reason` — status `401` with the HTTP/1.1 reason phrase
//!     `Invalid API key V` (only HTTP/1.1 has reason phrases).
//!
//!   `encoding=gzip|deflate|br|zstd` compresses the whole body (deflate =
//!   zlib format) with `Content-Encoding` set; the compressor is flushed at
//!   every SSE frame boundary. `encoding=bogus` only sets
//!   `Content-Encoding: bogus`; `ce=RAW` sends the percent-decoded bytes
//!   `RAW` (not necessarily ASCII) as the `Content-Encoding` label instead.
//!   `te=gzip` compresses as a transfer coding: `Transfer-Encoding: gzip,
//!   chunked`, no `Content-Encoding` (HTTP/1.1 only). `pad=N` first sends `N` bytes of `'.'` in
//!   64 KiB frames and a `\n` (never held in memory; with compression the
//!   filler is compressed streaming, so any `N` is fine). `split=1` sends
//!   everything else (with compression: all compressed bytes) in 3-byte
//!   frames, each flushed separately. `status=N` sets the status (overrides
//!   `location`'s 302). Without `sse`, `trailer` or real compression the
//!   response has a `Content-Length` (`chunked=1` omits it).
//! * `POST /v1/messages` — a mock Anthropic Messages API. Reads the JSON
//!   request; replies with a `Message` whose single text block is
//!   `"key seen: {x-api-key, else authorization header}"` (it reflects the
//!   credential, like a reflection attack). `"stream": true` answers the SSE
//!   sequence `message_start`, `content_block_start`, `ping`, ≥ 3
//!   `content_block_delta` (the key is split across three of them),
//!   `content_block_stop`, `message_delta`, `message_stop`, one flushed frame
//!   per event. Invalid JSON gets a `400` Anthropic error object.
//! * `POST /v1/chat/completions` — a mock OpenAI Chat Completions API;
//!   `choices[0].message.content` = `"key seen: {authorization, else
//!   x-api-key header}"`. `"stream": true` answers `chat.completion.chunk`
//!   frames (role, ≥ 3 content pieces with the key split across three,
//!   `finish_reason: "stop"`, a usage chunk if
//!   `stream_options.include_usage`), then `data: [DONE]`.
//!
//! * `GET|HEAD /files/{path}` — with [`UpstreamOptions::with_files`]: the file
//!   `{dir}/{path}` (`application/octet-stream`, query ignored), `404` when it is
//!   missing or `path` is not a plain relative path. Enough to serve a git
//!   repository over the dumb HTTP protocol (`git update-server-info`).
//! * `GET /stream?from=HEADER&layout=L..` — the header's value split across
//!   the events of an SSE or NDJSON stream in one of several layouts; see
//!   the `stream_events` handler and [`crate::events::reassemble`].
//! * `PUT|POST /store/{key}[?from=HEADER]`, `GET /store/{key}` — keeps a value
//!   (a request header's, else the body) and serves it later, on any name.
//! * `GET /bomb?encoding=E[&size=N][&whole=1]` — a decompression bomb; see
//!   the `bomb` handler.
//!
//! Query values are percent-decoded (`%XX` only; `+` stays `+`).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::pattern::{pattern_chunk, CHUNK_SIZE};
use crate::pki::ServerCert;
use crate::render::{credential_values, percent_encode, render_body};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type RespBody = UnsyncBoxBody<Bytes, BoxError>;

/// Options for [`Upstream::start`].
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// Serve TLS with this certificate; `None` = plain HTTP (HTTP/1.1, or
    /// HTTP/2 with prior knowledge).
    pub tls: Option<ServerCert>,
    /// ALPN protocols offered by the TLS server, in preference order.
    /// Default `["h2", "http/1.1"]`. If ALPN selects `h2` the connection is
    /// served as HTTP/2 only, if `http/1.1` as HTTP/1 only, otherwise
    /// auto-detected from the connection preface.
    pub alpn: Vec<Vec<u8>>,
    /// Serve this directory under `/files/`.
    pub files: Option<std::path::PathBuf>,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        Self {
            tls: None,
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            files: None,
        }
    }
}

impl UpstreamOptions {
    /// Plain HTTP.
    pub fn plain() -> Self {
        Self::default()
    }

    /// TLS with `cert` and the default ALPN list.
    pub fn tls(cert: ServerCert) -> Self {
        Self {
            tls: Some(cert),
            ..Self::default()
        }
    }

    /// Replace the ALPN list (e.g. `&["http/1.1"]`).
    pub fn with_alpn(mut self, alpn: &[&str]) -> Self {
        self.alpn = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        self
    }

    /// Serve the files under `dir` at `/files/`.
    pub fn with_files(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.files = Some(dir.into());
        self
    }
}

/// One request as received by the upstream.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Id of the TCP connection it arrived on (1-based, in accept order).
    pub conn_id: u64,
    pub method: Method,
    /// The request target as hyper parsed it (origin-form `/p?q` on h1;
    /// `https://authority/p?q` on h2).
    pub uri: String,
    /// Path and query (`/p?q`).
    pub path_and_query: String,
    pub version: Version,
    /// Headers as `(lowercase name, raw value)` in `HeaderMap` iteration
    /// order (first appearance of each name; repeated names grouped).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Bytes of request body the handler consumed (snapshot at the time
    /// `received()` was called; endpoints that ignore the body report 0).
    pub body_len: u64,
    /// SNI sent by the client, if TLS.
    pub sni: Option<String>,
    /// Negotiated ALPN protocol, if TLS.
    pub alpn: Option<Vec<u8>>,
}

impl RecordedRequest {
    /// First value of header `name` (case-insensitive), lossy UTF-8.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// All values of header `name` (case-insensitive), lossy UTF-8.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    /// The path without query.
    pub fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query.as_str(), |(p, _)| p)
    }
}

/// Named one-shot permits. `release(name)` adds a permit to the gate `name`;
/// a waiter consumes one. Releasing before anyone waits is fine.
#[derive(Clone, Default, Debug)]
pub struct Gates {
    inner: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl Gates {
    fn get(&self, name: &str) -> Arc<Semaphore> {
        self.inner
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(0)))
            .clone()
    }

    /// Add one permit to gate `name`.
    pub fn release(&self, name: &str) {
        self.get(name).add_permits(1);
    }

    /// Wait for (and consume) one permit of gate `name`.
    pub async fn wait(&self, name: &str) {
        let sem = self.get(name);
        sem.acquire().await.unwrap().forget();
    }
}

struct ConnInfo {
    id: u64,
    sni: Option<String>,
    alpn: Option<Vec<u8>>,
}

struct State {
    records: Mutex<Vec<(RecordedRequest, Arc<AtomicU64>)>>,
    request_count: watch::Sender<usize>,
    connections: AtomicUsize,
    tls_handshakes: AtomicUsize,
    tls_failures: AtomicUsize,
    gates: Gates,
    /// `/store/{key}` contents.
    store: Mutex<HashMap<String, Bytes>>,
    shutdown: watch::Receiver<bool>,
    files: Option<std::path::PathBuf>,
}

/// A running test upstream. Dropping it (or [`Upstream::shutdown`]) closes
/// the listener and aborts every connection and WebSocket task.
pub struct Upstream {
    addr: SocketAddr,
    tls: bool,
    state: Arc<State>,
    shutdown_tx: watch::Sender<bool>,
    accept_task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

async fn shutdown_signal(mut rx: watch::Receiver<bool>) {
    // Err means the sender (the Upstream) is gone: also a shutdown.
    let _ = rx.wait_for(|v| *v).await;
}

fn spawn_guarded<F>(rx: watch::Receiver<bool>, fut: F)
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(async move {
        tokio::select! {
            _ = fut => {}
            _ = shutdown_signal(rx) => {}
        }
    });
}

/// hyper executor whose tasks end at upstream shutdown.
#[derive(Clone)]
struct GuardedExec(watch::Receiver<bool>);

impl<F> hyper::rt::Executor<F> for GuardedExec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        spawn_guarded(self.0.clone(), fut);
    }
}

impl Upstream {
    /// Bind `127.0.0.1:0` and start serving.
    pub async fn start(opts: UpstreamOptions) -> Upstream {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let state = Arc::new(State {
            records: Mutex::new(Vec::new()),
            request_count: watch::channel(0).0,
            connections: AtomicUsize::new(0),
            tls_handshakes: AtomicUsize::new(0),
            tls_failures: AtomicUsize::new(0),
            gates: Gates::default(),
            store: Mutex::new(HashMap::new()),
            shutdown: shutdown_rx.clone(),
            files: opts.files.clone(),
        });
        let acceptor = opts.tls.as_ref().map(|cert| {
            let mut cfg = rustls::ServerConfig::builder_with_provider(crate::crypto_provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(cert.chain.clone(), cert.key.clone_key())
                .unwrap();
            cfg.alpn_protocols = opts.alpn.clone();
            TlsAcceptor::from(Arc::new(cfg))
        });
        let tls = acceptor.is_some();
        let st = state.clone();
        let accept_task = tokio::spawn(async move {
            let mut next_id = 0u64;
            loop {
                let accepted = tokio::select! {
                    r = listener.accept() => r,
                    _ = shutdown_signal(st.shutdown.clone()) => break,
                };
                let Ok((stream, _peer)) = accepted else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                st.connections.fetch_add(1, Ordering::SeqCst);
                next_id += 1;
                let id = next_id;
                let st2 = st.clone();
                let acceptor = acceptor.clone();
                spawn_guarded(st.shutdown.clone(), async move {
                    match acceptor {
                        None => {
                            let info = ConnInfo {
                                id,
                                sni: None,
                                alpn: None,
                            };
                            serve_conn(st2, info, stream).await
                        }
                        Some(acc) => match acc.accept(stream).await {
                            Ok(tls) => {
                                st2.tls_handshakes.fetch_add(1, Ordering::SeqCst);
                                let (_, conn) = tls.get_ref();
                                let info = ConnInfo {
                                    id,
                                    sni: conn.server_name().map(str::to_string),
                                    alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                                };
                                serve_conn(st2, info, tls).await
                            }
                            Err(e) => {
                                st2.tls_failures.fetch_add(1, Ordering::SeqCst);
                                tracing::debug!("testkit upstream TLS accept failed: {e}");
                            }
                        },
                    }
                });
            }
        });
        Upstream {
            addr,
            tls,
            state,
            shutdown_tx,
            accept_task: Some(accept_task),
        }
    }

    /// The bound address (`127.0.0.1:port`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether this upstream serves TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// `http://127.0.0.1:port` or `https://127.0.0.1:port`.
    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Every request received so far, in arrival order.
    pub fn received(&self) -> Vec<RecordedRequest> {
        self.state
            .records
            .lock()
            .unwrap()
            .iter()
            .map(|(r, len)| {
                let mut r = r.clone();
                r.body_len = len.load(Ordering::SeqCst);
                r
            })
            .collect()
    }

    /// Number of requests received so far.
    pub fn request_count(&self) -> usize {
        *self.state.request_count.borrow()
    }

    /// Wait until at least `n` requests have been received.
    pub async fn wait_for_requests(&self, n: usize) {
        let mut rx = self.state.request_count.subscribe();
        rx.wait_for(|c| *c >= n).await.unwrap();
    }

    /// Forget all recorded requests (counters are kept).
    pub fn clear_received(&self) {
        self.state.records.lock().unwrap().clear();
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// TLS handshakes that completed successfully so far.
    pub fn tls_handshakes(&self) -> usize {
        self.state.tls_handshakes.load(Ordering::SeqCst)
    }

    /// TLS handshakes that failed (e.g. the client rejected our certificate).
    pub fn tls_failures(&self) -> usize {
        self.state.tls_failures.load(Ordering::SeqCst)
    }

    /// Release gate `name` once (see the `/sse` and `/slow` endpoints).
    pub fn release(&self, name: &str) {
        self.state.gates.release(name);
    }

    /// A cloneable handle to this upstream's gates.
    pub fn gates(&self) -> Gates {
        self.state.gates.clone()
    }

    /// Stop accepting, abort all connections, and wait for the listener to
    /// be closed.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown_tx.send(true);
        if let Some(t) = self.accept_task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.shutdown_tx.send(true);
        if let Some(t) = self.accept_task.take() {
            t.abort();
        }
    }
}

async fn serve_conn<I>(state: Arc<State>, info: ConnInfo, io: I)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(GuardedExec(state.shutdown.clone()));
    match info.alpn.as_deref() {
        Some(b"h2") => builder = builder.http2_only(),
        Some(b"http/1.1") => builder = builder.http1_only(),
        _ => {}
    }
    let info = Arc::new(info);
    let svc = service_fn(move |req| {
        let state = state.clone();
        let info = info.clone();
        async move { Ok::<_, Infallible>(handle(state, &info, req).await) }
    });
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .await
    {
        tracing::debug!("testkit upstream connection ended: {e}");
    }
}

// ---------------------------------------------------------------- helpers

fn full(body: impl Into<Bytes>) -> RespBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn empty() -> RespBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<RespBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    resp
}

fn percent_decode(s: &str) -> String {
    String::from_utf8_lossy(&percent_decode_bytes(s)).into_owned()
}

/// `%XX` decoded to raw bytes (`+` stays `+`).
fn percent_decode_bytes(s: &str) -> Vec<u8> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

struct Query(Vec<(String, String)>, Vec<(String, Vec<u8>)>);

impl Query {
    fn parse(q: Option<&str>) -> Self {
        let pairs: Vec<(&str, &str)> = q
            .unwrap_or_default()
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
            .collect();
        Query(
            pairs
                .iter()
                .map(|(k, v)| (percent_decode(k), percent_decode(v)))
                .collect(),
            pairs
                .iter()
                .map(|(k, v)| (percent_decode(k), percent_decode_bytes(v)))
                .collect(),
        )
    }

    /// The value of `key` percent-decoded to raw bytes (not necessarily UTF-8).
    fn bytes(&self, key: &str) -> Option<&[u8]> {
        self.1
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some(v) if v == "1" || v == "true")
    }

    fn num(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(|v| v.parse().ok())
    }
}

/// Next data chunk of `body` (trailers skipped), counting consumed bytes.
async fn next_data(
    body: &mut Incoming,
    counter: &AtomicU64,
) -> Option<Result<Bytes, hyper::Error>> {
    loop {
        match body.frame().await? {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    if data.is_empty() {
                        continue;
                    }
                    counter.fetch_add(data.len() as u64, Ordering::SeqCst);
                    return Some(Ok(data));
                }
            }
            Err(e) => return Some(Err(e)),
        }
    }
}

// --------------------------------------------------------------- handlers

async fn handle(state: Arc<State>, info: &ConnInfo, req: Request<Incoming>) -> Response<RespBody> {
    let counter = Arc::new(AtomicU64::new(0));
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_default();
    let record = RecordedRequest {
        conn_id: info.id,
        method: req.method().clone(),
        uri: req.uri().to_string(),
        path_and_query,
        version: req.version(),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
            .collect(),
        body_len: 0,
        sni: info.sni.clone(),
        alpn: info.alpn.clone(),
    };
    {
        let mut recs = state.records.lock().unwrap();
        recs.push((record, counter.clone()));
    }
    state.request_count.send_modify(|c| *c += 1);

    let path = req.uri().path().to_string();
    let query = Query::parse(req.uri().query());
    let method = req.method().clone();
    match path.as_str() {
        "/echo" => echo(req, &query, counter),
        "/sha256" if method == Method::POST => sha256(req, counter).await,
        "/sse" if method == Method::GET => sse(&state, &query),
        "/redirect" if method == Method::GET => {
            let to = query.get("to").unwrap_or("/");
            match HeaderValue::from_str(to) {
                Ok(loc) => {
                    let mut resp = Response::new(empty());
                    *resp.status_mut() = StatusCode::FOUND;
                    resp.headers_mut().insert(http::header::LOCATION, loc);
                    resp
                }
                Err(_) => text(StatusCode::BAD_REQUEST, "bad location"),
            }
        }
        "/slow" if method == Method::GET => {
            if let Some(gate) = query.get("gate") {
                state.gates.wait(gate).await;
            } else if let Some(ms) = query.num("ms") {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            text(StatusCode::OK, "released")
        }
        "/ws" if method == Method::GET => websocket(&state, req, &query),
        "/render" => render(&state, &req, &query),
        "/stream" => stream_events(&state, &req, &query),
        "/bomb" => bomb(&query),
        "/v1/messages" if method == Method::POST => anthropic_messages(req, counter).await,
        "/v1/chat/completions" if method == Method::POST => openai_chat(req, counter).await,
        "/sha256"
        | "/sse"
        | "/redirect"
        | "/slow"
        | "/ws"
        | "/v1/messages"
        | "/v1/chat/completions" => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        p if p.starts_with("/files/") && state.files.is_some() => {
            if method != Method::GET && method != Method::HEAD {
                return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            }
            static_file(state.files.as_deref(), &p["/files/".len()..])
        }
        p if p.starts_with("/store/") => store(&state, req, &p["/store/".len()..], &query).await,
        p if p.starts_with("/fixed/") => {
            if method != Method::GET && method != Method::HEAD {
                return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            }
            match p["/fixed/".len()..].parse::<u64>() {
                Ok(n) => fixed(n, query.flag("chunked")),
                Err(_) => text(StatusCode::NOT_FOUND, "not found"),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

/// `dir/rel`, for plain relative paths only (no `..`, no absolute path).
fn static_file(dir: Option<&std::path::Path>, rel: &str) -> Response<RespBody> {
    let rel = std::path::Path::new(rel);
    let plain = rel
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    let Some(dir) = dir.filter(|_| plain && !rel.as_os_str().is_empty()) else {
        return text(StatusCode::NOT_FOUND, "not found");
    };
    match std::fs::read(dir.join(rel)) {
        Ok(data) => {
            let mut resp = Response::new(full(data));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            resp
        }
        Err(_) => text(StatusCode::NOT_FOUND, "not found"),
    }
}

fn fixed(n: u64, chunked: bool) -> Response<RespBody> {
    let stream = futures_util::stream::unfold(0u64, move |off| async move {
        if off >= n {
            return None;
        }
        let len = (n - off).min(CHUNK_SIZE as u64) as usize;
        Some((
            Ok::<_, BoxError>(Frame::data(pattern_chunk(off, len))),
            off + len as u64,
        ))
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if !chunked {
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    resp
}

struct EchoState {
    head: Option<Bytes>,
    body: Option<Incoming>,
    trailers: Option<HeaderMap>,
    counter: Arc<AtomicU64>,
}

fn echo(req: Request<Incoming>, query: &Query, counter: Arc<AtomicU64>) -> Response<RespBody> {
    let (parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_string();
    let mut head = format!("{} {} {:?}\r\n", parts.method, pq, parts.version);
    for (name, value) in &parts.headers {
        head.push_str(&format!(
            "{}: {}\r\n",
            name,
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    head.push_str("\r\n");

    let trailers = query.flag("trailer").then(|| {
        let value = parts
            .headers
            .get("x-echo-trailer-value")
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static(""));
        let mut t = HeaderMap::new();
        t.insert(HeaderName::from_static("x-echo-trailer"), value);
        t
    });
    let has_trailers = trailers.is_some();
    let st = EchoState {
        head: Some(Bytes::from(head)),
        body: Some(body),
        trailers,
        counter,
    };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        if let Some(h) = st.head.take() {
            return Some((Ok::<_, BoxError>(Frame::data(h)), st));
        }
        if let Some(body) = st.body.as_mut() {
            match next_data(body, &st.counter).await {
                Some(Ok(d)) => return Some((Ok(Frame::data(d)), st)),
                Some(Err(e)) => {
                    st.body = None;
                    st.trailers = None;
                    return Some((Err(e.into()), st));
                }
                None => st.body = None,
            }
        }
        let t = st.trailers.take()?;
        Some((Ok(Frame::trailers(t)), st))
    });

    let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
    if let Some(s) = query
        .num("status")
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
    {
        *resp.status_mut() = s;
    }
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    if has_trailers {
        h.insert(
            http::header::TRAILER,
            HeaderValue::from_static("x-echo-trailer"),
        );
    }
    for (name, value) in &parts.headers {
        if name.as_str().starts_with("x-echo-") {
            h.append(name.clone(), value.clone());
        }
    }
    resp
}

async fn sha256(req: Request<Incoming>, counter: Arc<AtomicU64>) -> Response<RespBody> {
    let mut body = req.into_body();
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(chunk) = next_data(&mut body, &counter).await {
        match chunk {
            Ok(d) => {
                len += d.len() as u64;
                hasher.update(&d);
            }
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("body error: {e}")),
        }
    }
    text(
        StatusCode::OK,
        format!("{} {}", hex::encode(hasher.finalize()), len),
    )
}

fn sse(state: &State, query: &Query) -> Response<RespBody> {
    let events = query.num("events").unwrap_or(1);
    let gate = query.get("gate").map(str::to_string);
    let interval = query.num("interval_ms").unwrap_or(0);
    let data = query.get("data").unwrap_or_default().to_string();
    let gates = state.gates.clone();
    let encoding = query
        .get("encoding")
        .filter(|e| !e.is_empty() && *e != "identity")
        .map(str::to_string);
    let compressor = match encoding.as_deref().map(Compressor::new) {
        None => None,
        Some(Some(c)) => Some(c),
        Some(None) => return text(StatusCode::BAD_REQUEST, "unknown encoding\n"),
    };
    // The compressor is flushed after every event, so each event is one decodable frame.
    let stream = futures_util::stream::unfold((0u64, compressor), move |(i, mut comp)| {
        let gate = gate.clone();
        let data = data.clone();
        let gates = gates.clone();
        async move {
            if i >= events {
                let c = comp.take()?;
                let tail = c.finish();
                return Some((Ok::<_, BoxError>(Frame::data(tail)), (i + 1, None)));
            }
            if i >= 1 {
                if let Some(g) = &gate {
                    gates.wait(&format!("{g}-{i}")).await;
                } else if interval > 0 {
                    tokio::time::sleep(Duration::from_millis(interval)).await;
                }
            }
            let event = Bytes::from(format!("data: event {i}{data}\n\n"));
            let frame = match comp.as_mut() {
                Some(c) => {
                    let mut z = c.write(&event).to_vec();
                    z.extend_from_slice(&c.flush());
                    Frame::data(Bytes::from(z))
                }
                None => Frame::data(event),
            };
            Some((Ok::<_, BoxError>(frame), (i + 1, comp)))
        }
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    if let Some(e) = &encoding {
        h.insert(
            http::header::CONTENT_ENCODING,
            HeaderValue::from_str(e).unwrap(),
        );
    }
    resp
}

fn websocket(state: &State, mut req: Request<Incoming>, query: &Query) -> Response<RespBody> {
    if query.flag("refuse") {
        return text(StatusCode::OK, "no upgrade");
    }
    let wants_ws = req
        .headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return text(StatusCode::BAD_REQUEST, "missing sec-websocket-key");
    };
    if !wants_ws || req.version() != Version::HTTP_11 {
        return text(
            StatusCode::BAD_REQUEST,
            "expected HTTP/1.1 websocket upgrade",
        );
    }
    let header = |name: Option<&str>| {
        name.and_then(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .and_then(|n| req.headers().get(n).cloned())
    };
    let reflect = header(query.get("reflect"));
    let send = header(query.get("send"));
    let close = query.flag("close");
    let on_upgrade = hyper::upgrade::on(&mut req);
    spawn_guarded(state.shutdown.clone(), async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!("testkit upstream ws upgrade failed: {e}");
                return;
            }
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        if let Some(v) = send {
            if ws_send_renderings(&mut ws, v.as_bytes(), close)
                .await
                .is_err()
            {
                return;
            }
        }
        while let Some(msg) = ws.next().await {
            let Ok(msg) = msg else { break };
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
            // Ping/Pong/Close are handled by tungstenite; after a Close the
            // stream yields None once the close reply is flushed.
        }
    });
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    h.insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&derive_accept_key(key.as_bytes())).unwrap(),
    );
    if let Some(v) = reflect {
        // Some realtime APIs carry the key in the subprotocol; a careless one echoes it.
        h.insert("sec-websocket-protocol", v);
    }
    if let Some(ext) = query.bytes("extensions") {
        h.insert(
            "sec-websocket-extensions",
            HeaderValue::from_bytes(ext).unwrap(),
        );
    }
    resp
}

/// The `/ws?send=HEADER` sequence: the value `v` in a text message, a binary message, a text
/// message fragmented into three frames, and split across two JSON delta messages (the
/// layout of realtime APIs), then `{"type":"response.done"}`; with `close`, a Close frame
/// whose reason carries `v`.
async fn ws_send_renderings<S>(
    ws: &mut WebSocketStream<S>,
    v: &[u8],
    close: bool,
) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};
    use tokio_tungstenite::tungstenite::Message;
    let text = String::from_utf8_lossy(v).into_owned();
    ws.send(Message::text(format!("text: {text}"))).await?;
    ws.send(Message::binary([&b"bin: "[..], v].concat()))
        .await?;
    let frag = format!("frag: {text}").into_bytes();
    let third = frag.len() / 3;
    let parts = [&frag[..third], &frag[third..2 * third], &frag[2 * third..]];
    for (i, p) in parts.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        ws.send(Message::Frame(Frame::message(p.to_vec(), opcode, i == 2)))
            .await?;
    }
    let mut half = text.len() / 2;
    while !text.is_char_boundary(half) {
        half += 1;
    }
    for piece in [&text[..half], &text[half..]] {
        let ev = serde_json::json!({"type": "response.text.delta", "delta": piece});
        ws.send(Message::text(ev.to_string())).await?;
    }
    ws.send(Message::text(r#"{"type":"response.done"}"#))
        .await?;
    if close {
        ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: format!("bye {text}").into(),
        })))
        .await?;
    }
    Ok(())
}

// ----------------------------------------------------------------- render

const FILLER_CHUNK: usize = 64 * 1024;
static FILLER: [u8; FILLER_CHUNK] = [b'.'; FILLER_CHUNK];

/// One piece of a sequenced response body.
enum Seg {
    /// `n` bytes of `'.'`, produced 64 KiB at a time.
    Filler(u64),
    Data(Bytes),
    /// Flush the compressor (if any) so everything so far goes out.
    Flush,
    /// Wait for `release(name)`.
    Gate(String),
}

/// A streaming compressor writing into an in-memory sink that is drained
/// after every write.
enum Compressor {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Deflate(flate2::write::ZlibEncoder<Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Compressor {
    fn new(name: &str) -> Option<Self> {
        let fast = flate2::Compression::fast();
        Some(match name {
            "gzip" => Self::Gzip(flate2::write::GzEncoder::new(Vec::new(), fast)),
            "deflate" => Self::Deflate(flate2::write::ZlibEncoder::new(Vec::new(), fast)),
            "br" => Self::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                5,
                22,
            ))),
            "zstd" => Self::Zstd(zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap()),
            _ => return None,
        })
    }

    /// Settings for `/bomb`: small output from zeros, quickly (even in a debug build).
    fn new_best(name: &str) -> Option<Self> {
        let level = flate2::Compression::new(6);
        Some(match name {
            "gzip" => Self::Gzip(flate2::write::GzEncoder::new(Vec::new(), level)),
            "deflate" => Self::Deflate(flate2::write::ZlibEncoder::new(Vec::new(), level)),
            "br" => Self::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                1 << 16,
                1,
                24,
            ))),
            "zstd" => Self::Zstd(zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap()),
            _ => return None,
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Self::Gzip(e) => e,
            Self::Deflate(e) => e,
            Self::Br(e) => e.as_mut(),
            Self::Zstd(e) => e,
        }
    }

    fn take(&mut self) -> Bytes {
        let sink = match self {
            Self::Gzip(e) => e.get_mut(),
            Self::Deflate(e) => e.get_mut(),
            Self::Br(e) => e.get_mut(),
            Self::Zstd(e) => e.get_mut(),
        };
        Bytes::from(std::mem::take(sink))
    }

    fn write(&mut self, data: &[u8]) -> Bytes {
        self.writer().write_all(data).unwrap();
        self.take()
    }

    fn flush(&mut self) -> Bytes {
        self.writer().flush().unwrap();
        self.take()
    }

    fn finish(self) -> Bytes {
        Bytes::from(match self {
            Self::Gzip(e) => e.finish().unwrap(),
            Self::Deflate(e) => e.finish().unwrap(),
            Self::Br(e) => e.into_inner(),
            Self::Zstd(e) => e.finish().unwrap(),
        })
    }
}

/// Drives a list of [`Seg`]s into body frames: optional compression,
/// optional 3-byte splitting, optional flush (a task yield, so hyper writes
/// the frame out) between frames, optional trailers at the end.
struct SegStream {
    segs: VecDeque<Seg>,
    out: VecDeque<Bytes>,
    compressor: Option<Compressor>,
    split: bool,
    flush_each: bool,
    started: bool,
    trailers: Option<HeaderMap>,
    gates: Gates,
}

impl SegStream {
    fn new(segs: VecDeque<Seg>, gates: Gates) -> Self {
        SegStream {
            segs,
            out: VecDeque::new(),
            compressor: None,
            split: false,
            flush_each: false,
            started: false,
            trailers: None,
            gates,
        }
    }

    fn push_out(&mut self, b: Bytes, split: bool) {
        if b.is_empty() {
            return;
        }
        if split {
            for i in (0..b.len()).step_by(3) {
                self.out.push_back(b.slice(i..(i + 3).min(b.len())));
            }
        } else {
            self.out.push_back(b);
        }
    }

    fn emit(&mut self, b: Bytes, filler: bool) {
        match self.compressor.as_mut() {
            Some(c) => {
                let z = c.write(&b);
                self.push_out(z, self.split);
            }
            None => self.push_out(b, self.split && !filler),
        }
    }

    async fn next_frame(&mut self) -> Option<Frame<Bytes>> {
        loop {
            if let Some(b) = self.out.pop_front() {
                if self.flush_each && self.started {
                    // Return Pending once: hyper flushes what it has
                    // buffered before polling the body again.
                    tokio::task::yield_now().await;
                }
                self.started = true;
                return Some(Frame::data(b));
            }
            match self.segs.pop_front() {
                Some(Seg::Filler(n)) => {
                    let len = n.min(FILLER_CHUNK as u64);
                    if n > len {
                        self.segs.push_front(Seg::Filler(n - len));
                    }
                    self.emit(Bytes::from_static(&FILLER[..len as usize]), true);
                }
                Some(Seg::Data(b)) => self.emit(b, false),
                Some(Seg::Flush) => {
                    if let Some(c) = self.compressor.as_mut() {
                        let z = c.flush();
                        self.push_out(z, self.split);
                    }
                }
                Some(Seg::Gate(name)) => self.gates.wait(&name).await,
                None => {
                    if let Some(c) = self.compressor.take() {
                        let z = c.finish();
                        self.push_out(z, self.split);
                        continue;
                    }
                    return self.trailers.take().map(Frame::trailers);
                }
            }
        }
    }

    fn into_body(self) -> RespBody {
        let stream = futures_util::stream::unfold(self, |mut s| async move {
            let frame = s.next_frame().await?;
            Some((Ok::<_, BoxError>(frame), s))
        });
        StreamBody::new(stream).boxed_unsync()
    }
}

#[derive(Default)]
struct RenderWhere {
    body: bool,
    header: bool,
    location: bool,
    trailer: bool,
    sse: bool,
    reason: bool,
}

fn render(state: &State, req: &Request<Incoming>, query: &Query) -> Response<RespBody> {
    let Some(from) = query.get("from") else {
        return text(StatusCode::BAD_REQUEST, "missing ?from=<header-name>\n");
    };
    let Some(hv) = HeaderName::from_bytes(from.as_bytes())
        .ok()
        .and_then(|n| req.headers().get(n))
    else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("request header {from:?} absent\n"),
        );
    };
    let mut wh = RenderWhere::default();
    for w in query
        .get("where")
        .unwrap_or("body")
        .split(',')
        .map(str::trim)
    {
        match w {
            "" => {}
            "body" => wh.body = true,
            "header" | "headers" => wh.header = true,
            "location" => wh.location = true,
            "trailer" | "trailers" => wh.trailer = true,
            "sse" => wh.sse = true,
            "reason" => wh.reason = true,
            other => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("unknown where={other:?}\n"),
                )
            }
        }
    }
    let encoding = query
        .get("encoding")
        .filter(|e| !e.is_empty() && *e != "identity");
    // `te=gzip`: the body is compressed as a transfer coding (`Transfer-Encoding: gzip,
    // chunked`, HTTP/1.1 only) instead of a content coding.
    let transfer = query.get("te").filter(|e| !e.is_empty());
    let compressor = match encoding.or(transfer) {
        None | Some("bogus") => None,
        Some(e) => match Compressor::new(e) {
            Some(c) => Some(c),
            None => return text(StatusCode::BAD_REQUEST, format!("unknown encoding={e:?}\n")),
        },
    };
    let values = credential_values(hv.as_bytes());
    let v = hv.as_bytes();

    let mut segs = VecDeque::new();
    let mut len = 0u64;
    let pad = query.num("pad").unwrap_or(0);
    if pad > 0 {
        segs.push_back(Seg::Filler(pad));
        segs.push_back(Seg::Data(Bytes::from_static(b"\n")));
        len += pad + 1;
    }
    if wh.body {
        let mut body = render_body(&values);
        if wh.sse {
            body.push(b'\n');
        }
        len += body.len() as u64;
        segs.push_back(Seg::Data(Bytes::from(body)));
    }
    if wh.sse {
        let half = v.len() / 2;
        let mut first = b"data: part1=".to_vec();
        first.extend_from_slice(&v[..half]);
        let mut second = v[half..].to_vec();
        second.extend_from_slice(b"\n\n");
        segs.push_back(Seg::Data(Bytes::from(first)));
        segs.push_back(Seg::Flush);
        if let Some(g) = query.get("gate") {
            segs.push_back(Seg::Gate(g.to_string()));
        }
        segs.push_back(Seg::Data(Bytes::from(second)));
        segs.push_back(Seg::Flush);
        segs.push_back(Seg::Data(Bytes::from_static(b"data: done\n\n")));
    }

    let trailers = wh.trailer.then(|| {
        let mut t = HeaderMap::new();
        t.insert(HeaderName::from_static("x-rendered-trailer"), hv.clone());
        t
    });
    let content_length = !(wh.sse || wh.trailer || compressor.is_some() || query.flag("chunked"));
    let split = query.flag("split");
    let mut stream = SegStream::new(segs, state.gates.clone());
    stream.compressor = compressor;
    stream.split = split;
    stream.flush_each = split || wh.sse;
    stream.trailers = trailers;

    let mut resp = Response::new(stream.into_body());
    let h = resp.headers_mut();
    let ctype = if wh.sse {
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        );
        "text/event-stream"
    } else {
        "text/plain"
    };
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    if let Some(e) = encoding {
        // `ce=RAW` sends these bytes (percent-decoded, not necessarily ASCII) as the
        // Content-Encoding label instead of the encoding's name.
        let label = match query.bytes("ce") {
            Some(raw) => HeaderValue::from_bytes(raw).unwrap(),
            None => HeaderValue::from_str(e).unwrap(),
        };
        h.insert(http::header::CONTENT_ENCODING, label);
    }
    if let Some(t) = transfer {
        h.insert(
            http::header::TRANSFER_ENCODING,
            HeaderValue::from_str(&format!("{t}, chunked")).unwrap(),
        );
    }
    if content_length {
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    if wh.trailer {
        h.insert(
            http::header::TRAILER,
            HeaderValue::from_static("x-rendered-trailer"),
        );
    }
    if wh.header {
        for val in &values {
            if let Ok(raw) = HeaderValue::from_bytes(val) {
                h.append("x-rendered-raw", raw);
            }
            h.append(
                "x-rendered-b64",
                HeaderValue::from_str(&B64.encode(val)).unwrap(),
            );
        }
    }
    if wh.location {
        let mut loc = b"https://elsewhere.example/cb?key=".to_vec();
        loc.extend_from_slice(&percent_encode(v, true, false));
        let mut with_raw = loc.clone();
        with_raw.extend_from_slice(b"&raw=");
        with_raw.extend_from_slice(v);
        let loc = HeaderValue::from_bytes(&with_raw)
            .or_else(|_| HeaderValue::from_bytes(&loc))
            .unwrap();
        h.insert(http::header::LOCATION, loc);
        *resp.status_mut() = StatusCode::FOUND;
    }
    if wh.reason {
        // What some servers' sendError writes: the rejected key in the HTTP/1.1 reason phrase.
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
        let mut phrase = b"Invalid API key ".to_vec();
        phrase.extend_from_slice(v);
        if let Ok(r) = hyper::ext::ReasonPhrase::try_from(phrase) {
            resp.extensions_mut().insert(r);
        }
    }
    if let Some(s) = query
        .num("status")
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
    {
        *resp.status_mut() = s;
    }
    resp
}

// ------------------------------------------------------------ store

/// `/store/{key}`: `PUT`/`POST` stores the value of request header `?from=HEADER` (else the
/// request body) under `key` and answers `204`; `GET` returns what is stored (`200
/// text/plain`, `404` if nothing). The upstream's memory stands for anything an API keeps
/// and serves later (a gist, an email, an object), on any host name that reaches it.
async fn store(
    state: &State,
    req: Request<Incoming>,
    key: &str,
    query: &Query,
) -> Response<RespBody> {
    let key = key.to_string();
    match *req.method() {
        Method::GET => match state.store.lock().unwrap().get(&key) {
            Some(v) => text(StatusCode::OK, v.clone()),
            None => text(StatusCode::NOT_FOUND, "nothing stored\n"),
        },
        Method::PUT | Method::POST => {
            let value = match query.get("from") {
                Some(h) => match HeaderName::from_bytes(h.as_bytes())
                    .ok()
                    .and_then(|n| req.headers().get(n))
                {
                    Some(v) => Bytes::copy_from_slice(v.as_bytes()),
                    None => return text(StatusCode::BAD_REQUEST, "header absent\n"),
                },
                None => match req.into_body().collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => return text(StatusCode::BAD_REQUEST, format!("body error: {e}")),
                },
            };
            state.store.lock().unwrap().insert(key, value);
            let mut resp = Response::new(empty());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            resp
        }
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    }
}

// ------------------------------------------------------------ event streams

/// Layouts of `/stream`: how each piece of the reflected value is framed.
fn stream_event(layout: &str, i: usize, piece: &str, pad: &str) -> Option<String> {
    use serde_json::json;
    let mut v = match layout {
        "plain" => return Some(format!("{pad}{piece}")),
        "openai" => json!({"id": "chatcmpl-stream", "object": "chat.completion.chunk",
            "model": "mock-model",
            "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]}),
        "anthropic" => json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": piece}}),
        "gemini" => json!({"candidates": [{"content": {"parts": [{"text": piece}],
            "role": "model"}, "index": 0}], "modelVersion": "gemini-mock"}),
        "custom" | "ndjson-custom" => json!({"seq": i, "chunk": {"payload": piece}, "model": "m"}),
        "ndjson" => {
            json!({"model": "llama-mock", "created_at": format!("2025-01-01T00:00:{i:02}Z"),
            "response": piece, "done": false})
        }
        _ => return None,
    };
    if !pad.is_empty() {
        v["pad"] = json!(pad);
    }
    Some(v.to_string())
}

/// The event that ends a `/stream` (none for `plain`).
fn stream_end(layout: &str, n: usize) -> Option<String> {
    use serde_json::json;
    let v = match layout {
        "openai" => json!({"id": "chatcmpl-stream", "object": "chat.completion.chunk",
            "model": "mock-model", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        "anthropic" => json!({"type": "content_block_stop", "index": 0}),
        "gemini" => json!({"candidates": [{"content": {"parts": [{"text": ""}], "role": "model"},
            "finishReason": "STOP", "index": 0}], "modelVersion": "gemini-mock"}),
        "custom" | "ndjson-custom" => json!({"seq": n, "done": true}),
        "ndjson" => json!({"model": "llama-mock", "response": "", "done": true}),
        _ => return None,
    };
    Some(v.to_string())
}

/// `GET /stream?from=HEADER&layout=L[&cuts=a,b][&eol=lf|cr|crlf][&gate=NAME][&pad=N]
/// [&encoding=E]`: request header `HEADER` reflected as an event stream whose value is split
/// across events at byte offsets `cuts` (default: the middle), one event per piece, each
/// flushed separately, then a layout-specific final event. Layouts: `plain` (SSE,
/// `data: <piece>`), `openai`, `anthropic`, `gemini`, `custom` (SSE, JSON
/// `{"seq":i,"chunk":{"payload":piece}}`), `ndjson` (Ollama-like lines,
/// `application/x-ndjson`) and `ndjson-custom`. `eol` sets the line terminator (SSE allows
/// CR-only). `pad=N` adds `N` bytes of `'.'` to the first event (a `pad` field in JSON,
/// before the piece in `plain`). With `gate`, event `i >= 1` waits for `release("NAME-i")`.
/// [`crate::events::reassemble`] rebuilds what a client concatenates.
fn stream_events(state: &State, req: &Request<Incoming>, query: &Query) -> Response<RespBody> {
    let Some(v) = query
        .get("from")
        .and_then(|f| HeaderName::from_bytes(f.as_bytes()).ok())
        .and_then(|n| req.headers().get(n))
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    else {
        return text(StatusCode::BAD_REQUEST, "missing ?from=<present header>\n");
    };
    let layout = query.get("layout").unwrap_or("plain").to_string();
    let eol = match query.get("eol").unwrap_or("lf") {
        "lf" => "\n",
        "cr" => "\r",
        "crlf" => "\r\n",
        other => return text(StatusCode::BAD_REQUEST, format!("unknown eol={other:?}\n")),
    };
    let mut cuts: Vec<usize> = match query.get("cuts") {
        Some(c) => c.split(',').filter_map(|x| x.parse().ok()).collect(),
        None => vec![v.len() / 2],
    };
    cuts.retain(|&c| c > 0 && c < v.len() && v.is_char_boundary(c));
    cuts.sort_unstable();
    cuts.dedup();
    let mut pieces = Vec::new();
    let mut at = 0;
    for c in cuts.into_iter().chain([v.len()]) {
        pieces.push(v[at..c].to_string());
        at = c;
    }
    let pad = ".".repeat(query.num("pad").unwrap_or(0) as usize);
    let ndjson = layout.starts_with("ndjson");
    let frame = |data: String| -> Bytes {
        if ndjson {
            Bytes::from(format!("{data}{eol}"))
        } else {
            Bytes::from(format!("data: {data}{eol}{eol}"))
        }
    };
    let mut events = Vec::new();
    for (i, p) in pieces.iter().enumerate() {
        let Some(e) = stream_event(&layout, i, p, if i == 0 { &pad } else { "" }) else {
            return text(
                StatusCode::BAD_REQUEST,
                format!("unknown layout={layout:?}\n"),
            );
        };
        events.push(frame(e));
    }
    if let Some(e) = stream_end(&layout, pieces.len()) {
        events.push(frame(e));
    }
    let encoding = query
        .get("encoding")
        .filter(|e| !e.is_empty() && *e != "identity")
        .map(str::to_string);
    let mut segs = VecDeque::new();
    for (i, e) in events.into_iter().enumerate() {
        if i >= 1 {
            if let Some(g) = query.get("gate") {
                segs.push_back(Seg::Gate(format!("{g}-{i}")));
            }
        }
        segs.push_back(Seg::Data(e));
        segs.push_back(Seg::Flush);
    }
    let mut stream = SegStream::new(segs, state.gates.clone());
    stream.flush_each = true;
    if let Some(e) = &encoding {
        match Compressor::new(e) {
            Some(c) => stream.compressor = Some(c),
            None => return text(StatusCode::BAD_REQUEST, format!("unknown encoding={e:?}\n")),
        }
    }
    let mut resp = Response::new(stream.into_body());
    let h = resp.headers_mut();
    let ctype = if ndjson {
        "application/x-ndjson"
    } else {
        "text/event-stream"
    };
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    if let Some(e) = &encoding {
        h.insert(
            http::header::CONTENT_ENCODING,
            HeaderValue::from_str(e).unwrap(),
        );
    }
    resp
}

/// `GET /bomb?encoding=gzip|deflate|br|zstd[&size=N][&whole=1]`: a decompression bomb.
/// The body decodes to `"ok\n"` followed by `N` zero bytes (default 256 MiB). By default
/// the `"ok\n"` part is its own (flushed) frame and the zeros follow in later frames; with
/// `whole=1` the entire compressed body is one frame. The compressed bytes are computed
/// once per `(encoding, size)` and cached.
fn bomb(query: &Query) -> Response<RespBody> {
    /// (encoding, size) → (the `"ok\n"` frame, the rest).
    type Bombs = Vec<((String, u64), (Bytes, Bytes))>;
    static CACHE: Mutex<Bombs> = Mutex::new(Vec::new());
    let Some(enc) = query.get("encoding").map(str::to_string) else {
        return text(StatusCode::BAD_REQUEST, "missing ?encoding=\n");
    };
    let size = query.num("size").unwrap_or(256 << 20);
    let key = (enc.clone(), size);
    let cached = CACHE
        .lock()
        .unwrap()
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.clone());
    let (head, rest) = match cached {
        Some(v) => v,
        None => {
            let Some(mut c) = Compressor::new_best(&enc) else {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("unknown encoding={enc:?}\n"),
                );
            };
            let mut head = c.write(b"ok\n").to_vec();
            head.extend_from_slice(&c.flush());
            let zeros = vec![0u8; 1 << 20];
            let mut rest = Vec::new();
            let mut left = size;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                rest.extend_from_slice(&c.write(&zeros[..n]));
                left -= n as u64;
            }
            rest.extend_from_slice(&c.finish());
            let v = (Bytes::from(head), Bytes::from(rest));
            CACHE.lock().unwrap().push((key, v.clone()));
            v
        }
    };
    let frames: Vec<Bytes> = if query.flag("whole") {
        vec![Bytes::from([head.as_ref(), rest.as_ref()].concat())]
    } else {
        vec![head, rest]
    };
    let segs = frames.into_iter().map(Seg::Data).collect();
    let mut stream = SegStream::new(segs, Gates::default());
    stream.flush_each = true;
    let mut resp = Response::new(stream.into_body());
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(
        http::header::CONTENT_ENCODING,
        HeaderValue::from_str(&enc).unwrap(),
    );
    resp
}

// ------------------------------------------------------------ mock LLM APIs

static NEXT_MOCK_ID: AtomicU64 = AtomicU64::new(1);

fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<RespBody> {
    let mut resp = Response::new(full(v.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Each frame sent (and flushed) separately.
fn event_stream(frames: Vec<Bytes>) -> Response<RespBody> {
    let segs = frames.into_iter().map(Seg::Data).collect();
    let mut stream = SegStream::new(segs, Gates::default());
    stream.flush_each = true;
    let mut resp = Response::new(stream.into_body());
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    resp
}

/// Read the whole request: its headers, JSON body and body length.
async fn read_json_request(
    req: Request<Incoming>,
    counter: &AtomicU64,
) -> Result<(HeaderMap, serde_json::Value, usize), String> {
    let (parts, mut body) = req.into_parts();
    let mut buf = Vec::new();
    while let Some(chunk) = next_data(&mut body, counter).await {
        buf.extend_from_slice(&chunk.map_err(|e| format!("body error: {e}"))?);
    }
    let v = serde_json::from_slice(&buf).map_err(|e| format!("invalid JSON body: {e}"))?;
    Ok((parts.headers, v, buf.len()))
}

/// First present header of `names`, lossy UTF-8 (empty if none).
fn first_header(h: &HeaderMap, names: &[&str]) -> String {
    names
        .iter()
        .find_map(|n| h.get(*n))
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default()
}

/// `"key seen: {key}"` in pieces: `"key "`, `"seen"`, `": "`, then `key`
/// in three parts (empty parts dropped), so the key is split across three
/// stream events when it has ≥ 3 characters.
fn reply_pieces(key: &str) -> Vec<String> {
    let chars: Vec<char> = key.chars().collect();
    let n = chars.len();
    let mut pieces = vec!["key ".to_string(), "seen".to_string(), ": ".to_string()];
    for (a, b) in [(0, n / 3), (n / 3, 2 * n / 3), (2 * n / 3, n)] {
        if b > a {
            pieces.push(chars[a..b].iter().collect());
        }
    }
    pieces
}

// The test upstream stands for a remote server: its time is the world's, not the proxy's.
#[allow(clippy::disallowed_methods)]
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn anthropic_messages(req: Request<Incoming>, counter: Arc<AtomicU64>) -> Response<RespBody> {
    use serde_json::json;
    let (headers, body, body_len) = match read_json_request(req, &counter).await {
        Ok(r) => r,
        Err(e) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"type": "error", "error": {"type": "invalid_request_error", "message": e}}),
            )
        }
    };
    let key = first_header(&headers, &["x-api-key", "authorization"]);
    let model = body["model"].as_str().unwrap_or("mock-model").to_string();
    let id = format!("msg_mock{:08}", NEXT_MOCK_ID.fetch_add(1, Ordering::SeqCst));
    let pieces = reply_pieces(&key);
    let text = pieces.concat();
    let input_tokens = (body_len / 4).max(1);
    let output_tokens = pieces.len();
    if body["stream"].as_bool() != Some(true) {
        let mut resp = json_response(
            StatusCode::OK,
            &json!({
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": null,
                "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
            }),
        );
        resp.headers_mut().insert(
            "request-id",
            HeaderValue::from_str(&format!("req_{id}")).unwrap(),
        );
        return resp;
    }
    let ev = |name: &str, data: serde_json::Value| {
        Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
    };
    let mut frames = vec![
        ev(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {"input_tokens": input_tokens, "output_tokens": 1},
            }}),
        ),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}}),
        ),
        ev("ping", json!({"type": "ping"})),
    ];
    for p in &pieces {
        frames.push(ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": p}}),
        ));
    }
    frames.push(ev(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    frames.push(ev(
        "message_delta",
        json!({"type": "message_delta",
               "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"output_tokens": output_tokens}}),
    ));
    frames.push(ev("message_stop", json!({"type": "message_stop"})));
    let mut resp = event_stream(frames);
    resp.headers_mut().insert(
        "request-id",
        HeaderValue::from_str(&format!("req_{id}")).unwrap(),
    );
    resp
}

async fn openai_chat(req: Request<Incoming>, counter: Arc<AtomicU64>) -> Response<RespBody> {
    use serde_json::json;
    let (headers, body, body_len) = match read_json_request(req, &counter).await {
        Ok(r) => r,
        Err(e) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": {"message": e, "type": "invalid_request_error",
                                  "param": null, "code": null}}),
            )
        }
    };
    let key = first_header(&headers, &["authorization", "x-api-key"]);
    let model = body["model"].as_str().unwrap_or("mock-model").to_string();
    let id = format!(
        "chatcmpl-mock{:08}",
        NEXT_MOCK_ID.fetch_add(1, Ordering::SeqCst)
    );
    let created = unix_now();
    let pieces = reply_pieces(&key);
    let text = pieces.concat();
    let prompt_tokens = (body_len / 4).max(1);
    let completion_tokens = pieces.len();
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    if body["stream"].as_bool() != Some(true) {
        return json_response(
            StatusCode::OK,
            &json!({
                "id": id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": null},
                    "logprobs": null,
                    "finish_reason": "stop",
                }],
                "usage": usage,
            }),
        );
    }
    let chunk = |choices: serde_json::Value, usage: serde_json::Value| {
        let c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
            "usage": usage,
        });
        Bytes::from(format!("data: {c}\n\n"))
    };
    let choice = |delta: serde_json::Value, finish: serde_json::Value| json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]);
    let mut frames = vec![chunk(
        choice(json!({"role": "assistant", "content": ""}), json!(null)),
        json!(null),
    )];
    for p in &pieces {
        frames.push(chunk(
            choice(json!({"content": p}), json!(null)),
            json!(null),
        ));
    }
    frames.push(chunk(choice(json!({}), json!("stop")), json!(null)));
    if body["stream_options"]["include_usage"].as_bool() == Some(true) {
        frames.push(chunk(json!([]), usage));
    }
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    event_stream(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b"), "a b");
        assert_eq!(
            percent_decode("http%3A%2F%2Fx%2Fy%3Fa%3D1"),
            "http://x/y?a=1"
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz+"), "%zz+");
        assert_eq!(percent_decode("%41"), "A");
    }
}
