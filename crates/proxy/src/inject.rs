//! The mechanics of injection: the request body's scan window, placing secrets in headers,
//! query and body, and wrapping the response for scrubbing.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use credproxy_core::{Reject, Secret};
use credproxy_scrub::{Encoding, PlaceholderSet, StreamReplacer};
use http::HeaderValue;
use http_body::{Body as _, Frame};
use http_body_util::BodyExt;

use crate::body::Body;
use crate::creds::{self, Credentials, Location, Scan};
use crate::request_body::{BodyFlags, RequestTail};
use crate::Shared;

/// The first part of a request body, held so its placeholders are checked before anything
/// is sent; `rest` is the unread remainder when the body is larger than the window.
pub(crate) struct Window {
    pub frames: Vec<Frame<Bytes>>,
    pub rest: Option<Body>,
    /// The connection's scan memory this window holds (released when its bytes are sent).
    pub permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Window {
    pub fn data(&self) -> impl Iterator<Item = &Bytes> {
        self.frames.iter().filter_map(|f| f.data_ref())
    }

    pub fn trailers(&self) -> impl Iterator<Item = &http::HeaderMap> {
        self.frames.iter().filter_map(|f| f.trailers_ref())
    }
}

/// Read up to `limit` bytes of the body (whole frames), keeping trailers if they come. The
/// window's room is taken from the connection's scan memory `budget` first; a request waits
/// for room at most `wait` (then 408), so the streams of one HTTP/2 connection together never
/// hold more than the budget (plus at most one frame each past their window).
pub(crate) async fn read_window(
    mut body: Body,
    limit: usize,
    budget: &Arc<tokio::sync::Semaphore>,
    wait: Duration,
) -> Result<Window, Reject> {
    // The room this window may need, taken at once (a request never holds part of its room
    // while waiting for the rest, so requests cannot starve each other): the body's length
    // when known and smaller than the window.
    let needed = if body.is_end_stream() {
        0
    } else {
        body.size_hint()
            .upper()
            .map_or(limit as u64, |n| n.min(limit as u64)) as u32
    };
    let permit = if needed == 0 {
        None
    } else {
        let p = tokio::time::timeout(wait, budget.clone().acquire_many_owned(needed))
            .await
            .map_err(|_| Reject::BodyTimeout)?
            .map_err(|_| Reject::Internal)?;
        Some(p)
    };
    let mut frames = Vec::new();
    let mut len = 0usize;
    while len < limit {
        match body.frame().await {
            None => {
                return Ok(Window {
                    frames,
                    rest: None,
                    permit,
                });
            }
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    len += d.len();
                }
                frames.push(f);
            }
            Some(Err(_)) => {
                return Err(Reject::BadRequest {
                    what: "the request body could not be read".into(),
                })
            }
        }
    }
    if body.is_end_stream() {
        return Ok(Window {
            frames,
            rest: None,
            permit,
        });
    }
    Ok(Window {
        frames,
        rest: Some(body),
        permit,
    })
}

/// What the body rebuild needs to know about injection.
pub(crate) struct Plan {
    /// Per credential index: approved for body injection in this request.
    pub approved_body: Vec<bool>,
    /// Per credential index: the secret to put in the body, if any.
    pub body_values: Vec<Option<Secret>>,
}

fn encoding_for(parts: &http::request::Parts) -> Encoding {
    let ct = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence == "application/json" || essence.ends_with("+json") {
        Encoding::JsonString
    } else if essence == "application/x-www-form-urlencoded" {
        Encoding::Percent
    } else {
        Encoding::Raw
    }
}

/// Fetch the secrets of `to_inject` and place them: headers now, query now, body later
/// (through the returned plan).
pub(crate) async fn inject(
    shared: &Shared,
    creds: &Credentials,
    to_inject: &[usize],
    scan: &Scan,
    parts: &mut http::request::Parts,
) -> Result<Plan, Reject> {
    let n = creds.configs.len();
    let mut plan = Plan {
        approved_body: vec![false; n],
        body_values: vec![None; n],
    };
    if to_inject.is_empty() {
        return Ok(plan);
    }
    let mut query_values: Vec<Option<Secret>> = vec![None; n];
    let mut any_query = false;
    for &i in to_inject {
        let cfg = &creds.configs[i];
        let secret =
            shared
                .secrets
                .get(&creds.sources[i])
                .await
                .map_err(|e| Reject::SecretUnavailable {
                    credential: cfg.id.clone(),
                    failure: e.failure(),
                })?;
        let locs: Vec<&Location> = scan
            .uses
            .iter()
            .filter(|u| u.cred == i)
            .map(|u| &u.loc)
            .collect();
        // The agent's own Basic credentials, when the placeholder is its password.
        let agent_basic = locs.iter().find_map(|l| match l {
            Location::BasicPassword(h) => parts
                .headers
                .get(h)
                .and_then(|v| credproxy_scrub::decode_basic(v.as_bytes())),
            _ => None,
        });
        let (value, rendered) = creds::header_value(cfg, &secret, agent_basic.as_deref())?;
        // In the scrub set first: a secret that cannot be scrubbed is not sent.
        shared
            .scrub
            .record(creds, i, &secret, &rendered)
            .map_err(|_| Reject::SecretInvalid {
                credential: cfg.id.clone(),
            })?;
        for loc in &locs {
            match loc {
                Location::Header(_) | Location::BasicPassword(_) => {
                    // Replaces every agent-supplied value of that header: never duplicated.
                    if let Ok(name) = http::HeaderName::from_bytes(cfg.header_name.as_bytes()) {
                        parts.headers.remove(&name);
                        parts.headers.insert(name, value.clone());
                    }
                }
                Location::Query => {
                    any_query = true;
                    query_values[i] = Some(secret.clone());
                }
                Location::Body => {
                    plan.approved_body[i] = true;
                    plan.body_values[i] = Some(secret.clone());
                }
                Location::Path | Location::Trailer(_) => {}
            }
        }
    }
    if any_query {
        if let (Some(set), Some(q)) = (&creds.set, parts.uri.query()) {
            let values: Vec<Option<&[u8]>> = query_values
                .iter()
                .map(|v| v.as_ref().map(|s| s.expose()))
                .collect();
            let (new_q, _) =
                credproxy_scrub::replace_all(set, q.as_bytes(), &values, Encoding::Percent);
            let pq = format!("{}?{}", parts.uri.path(), String::from_utf8_lossy(&new_q));
            let mut uri_parts = parts.uri.clone().into_parts();
            uri_parts.path_and_query = pq.parse().ok();
            if let Ok(u) = http::Uri::from_parts(uri_parts) {
                parts.uri = u;
            }
        }
    }
    // Responses to credential-bearing requests are scrubbed; ask for them uncompressed.
    // (Range and If-Range are removed from every request while credentials are configured,
    // in `forward::send::inject_and_record`.)
    parts.headers.insert(
        http::header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    Ok(plan)
}

/// The body to send upstream: the window (with body placeholders replaced) followed by the
/// rest of the stream, still scanned.
pub(crate) fn rebuild_body(
    set: &PlaceholderSet,
    window: Window,
    plan: &Plan,
    parts: &mut http::request::Parts,
    late: Arc<BodyFlags>,
) -> Body {
    let inject_body = plan.body_values.iter().any(Option::is_some);
    let enc = encoding_for(parts);
    match window.rest {
        None => {
            let mut frames: VecDeque<Frame<Bytes>> = VecDeque::new();
            let mut data = Vec::new();
            let mut trailers = None;
            for f in window.frames {
                match f.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(f) => trailers = f.into_trailers().ok(),
                }
            }
            if inject_body {
                let values: Vec<Option<&[u8]>> = plan
                    .body_values
                    .iter()
                    .map(|v| v.as_ref().map(|s| s.expose()))
                    .collect();
                let (out, _) = credproxy_scrub::replace_all(set, &data, &values, enc);
                data = out;
                if parts.headers.contains_key(http::header::CONTENT_LENGTH) {
                    parts
                        .headers
                        .insert(http::header::CONTENT_LENGTH, HeaderValue::from(data.len()));
                }
            }
            if !data.is_empty() {
                frames.push_back(Frame::data(Bytes::from(data)));
            }
            if let Some(t) = trailers {
                frames.push_back(Frame::trailers(t));
            }
            frames_body(frames)
        }
        Some(rest) => {
            let replacer = inject_body
                .then(|| StreamReplacer::new(set.clone(), plan.body_values.clone(), enc));
            if replacer.is_some() {
                // The length changes; the body goes out chunked (or as HTTP/2 frames).
                parts.headers.remove(http::header::CONTENT_LENGTH);
            }
            let head = frames_body(window.frames.into());
            let chained = Chain {
                first: Some(head),
                second: rest,
            }
            .boxed();
            RequestTail::boxed(chained, set, plan.approved_body.clone(), replacer, late)
        }
    }
}

fn frames_body(frames: VecDeque<Frame<Bytes>>) -> Body {
    let stream = futures_util::stream::iter(frames.into_iter().map(Ok::<_, crate::body::BoxError>));
    http_body_util::StreamBody::new(stream).boxed()
}

pin_project_lite::pin_project! {
    /// Two bodies one after the other.
    struct Chain {
        #[pin]
        first: Option<Body>,
        #[pin]
        second: Body,
    }
}

impl http_body::Body for Chain {
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        if let Some(first) = this.first.as_mut().as_pin_mut() {
            match first.poll_frame(cx) {
                std::task::Poll::Ready(None) => this.first.set(None),
                other => return other,
            }
        }
        this.second.poll_frame(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    fn body(n: usize) -> Body {
        Full::new(Bytes::from(vec![b'x'; n]))
            .map_err(|e| match e {})
            .boxed()
    }

    /// The windows of one connection's requests never hold more than its scan memory: a
    /// request waits for room, and gets 408 when none frees up in time.
    #[tokio::test(start_paused = true)]
    async fn windows_share_the_connections_scan_memory() {
        let budget = Arc::new(tokio::sync::Semaphore::new(16384));
        let wait = Duration::from_secs(30);
        let first = read_window(body(100_000), 16384, &budget, wait)
            .await
            .unwrap();
        assert_eq!(budget.available_permits(), 0);
        // A small body takes only its length; none is left, so it waits, then times out.
        let second = read_window(body(10), 16384, &budget, wait).await;
        assert!(
            matches!(second, Err(Reject::BodyTimeout)),
            "{:?}",
            second.err()
        );
        // Once the first window's bytes are sent (the window dropped), room is back.
        drop(first);
        let third = read_window(body(10), 16384, &budget, wait).await.unwrap();
        assert_eq!(budget.available_permits(), 16384 - 10);
        drop(third);
        // A bodiless request takes nothing.
        let empty = read_window(crate::body::empty(), 16384, &budget, wait)
            .await
            .unwrap();
        assert!(empty.permit.is_none());
    }
}
