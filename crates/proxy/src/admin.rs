//! The admin server: `/healthz`, `/readyz` and `/metrics` on `admin.addr`.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::body;
use crate::body::Body;
use crate::Shared;

pub(crate) async fn admin_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(admin(&shared, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Ready when every dependency that requests may need can answer: the identity provider's
/// keys are loaded, every listener with `agent_token` holds a token that verifies for its
/// agent and, when OpenBao is configured, the proxy holds a valid OpenBao token. Requests
/// that need none of these keep being served either way; this is for orchestration and
/// operators.
async fn readiness(shared: &Shared) -> (u16, &'static str, String) {
    let mut lines = Vec::new();
    let mut ready = true;
    if let Some(v) = &shared.verifier {
        let ok = v.is_ready();
        ready &= ok;
        lines.push(format!(
            "identity: {}",
            if ok { "ready" } else { "keys not loaded" }
        ));
    } else {
        lines.push("identity: anonymous (danger_allow_anonymous)".to_string());
    }
    if let Some(v) = &shared.verifier {
        for (_, t) in shared.listener_tokens.all() {
            let (ok, line) = t.readiness(v).await;
            ready &= ok;
            lines.push(line);
        }
    }
    match shared.secrets.openbao_ready() {
        Some(true) => lines.push("openbao: ready".to_string()),
        Some(false) => {
            ready = false;
            lines.push("openbao: not authenticated".to_string());
        }
        None => {}
    }
    let g = shared.generation();
    let scrub_ready = g.scrub_ready.load(std::sync::atomic::Ordering::Acquire);
    ready &= scrub_ready;
    lines.push(format!(
        "scrub set: {}{}",
        if scrub_ready {
            "ready, "
        } else {
            "not ready, "
        },
        shared.scrub.status()
    ));
    lines.push(format!("generation: {} policy {}", g.id, g.policy.hash()));
    let status = if ready { 200 } else { 503 };
    let head = if ready { "ready" } else { "not ready" };
    (
        status,
        "text/plain",
        format!("{head}\n{}\n", lines.join("\n")),
    )
}

async fn admin(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let (status, ctype, body) = match req.uri().path() {
        "/healthz" => (200, "text/plain", "ok\n".to_string()),
        "/readyz" => readiness(shared).await,
        "/metrics" => (200, "text/plain; version=0.0.4; charset=utf-8", {
            let mut m = shared.metrics.encode();
            // The registry ends with "# EOF"; the audit spool's figures go before it.
            if let Some(spool) = &shared.audit {
                let eof = m.rfind("# EOF").unwrap_or(m.len());
                m.insert_str(eof, &spool.stats().render_prometheus());
            }
            m
        }),
        _ => (
            404,
            "text/plain",
            "not found: try /healthz, /readyz or /metrics\n".into(),
        ),
    };
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
    if let Ok(v) = http::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}
