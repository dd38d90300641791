//! Credentials end to end: placeholders injected only where declared, every misuse refused
//! before anything is sent, and responses scrubbed — through the real proxy to a real TLS
//! upstream, with curl and reqwest as clients.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use base64::Engine as _;
use credproxy_harness::{Harness, Setup, HOST, OTHER, PLAIN, ROLE};

pub const SECRET: &str = "sk-live-CANARY-7f3a9c1e5b2d4068aa";

/// Each credential has its own secret; `SECRET` is the api_key's.
pub fn secret(id: &str) -> String {
    if id == "key" {
        SECRET.to_string()
    } else {
        format!("tok-{id}-CANARY-0b1d2f3e4a5c6978")
    }
}
pub const PH_KEY: &str = "agent-vault-11111111-2222-3333-4444-555555555555";
pub const PH_BEARER: &str = "agent-vault-22222222-2222-3333-4444-555555555555";
pub const PH_BASIC: &str = "agent-vault-33333333-2222-3333-4444-555555555555";
pub const PH_QUERY: &str = "agent-vault-44444444-2222-3333-4444-555555555555";
pub const PH_BODY: &str = "agent-vault-55555555-2222-3333-4444-555555555555";

/// Credentials bound to HOST: an api_key in x-api-key, a bearer, a basic_auth (git style:
/// the agent's user name, the secret as password), one allowed in the query, one in the body.
pub fn setup() -> Setup {
    let cred = |id: &str, ph: &str, kind: &str, extra: &str| {
        format!(
            "  - id: {id}\n    placeholder: {ph}\n    type: {kind}\n    bound_domains: [{HOST}]\n    allowed_roles: [{ROLE}]\n    source: {{env: SECRET_{}}}\n{extra}",
            id.to_uppercase()
        )
    };
    Setup {
        credentials: [
            cred("key", PH_KEY, "api_key", ""),
            cred("bearer", PH_BEARER, "bearer", ""),
            cred("basic", PH_BASIC, "basic_auth", ""),
            cred(
                "query",
                PH_QUERY,
                "header",
                "    header_name: x-query-key\n    inject_in: [query]\n",
            ),
            cred(
                "body",
                PH_BODY,
                "header",
                "    header_name: x-body-key\n    inject_in: [body]\n",
            ),
        ]
        .concat(),
        env: ["key", "bearer", "basic", "query", "body"]
            .iter()
            .map(|id| (format!("SECRET_{}", id.to_uppercase()), secret(id)))
            .collect(),
        ..Setup::default()
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The upstream's last request, header by name.
fn last_header(h: &Harness, name: &str) -> Vec<String> {
    h.upstream.received().last().unwrap().header_all(name)
}

#[tokio::test]
async fn api_key_is_injected_and_the_echo_comes_back_scrubbed() {
    let h = Harness::with(setup()).await;
    let c = h
        .get(format!("https://{HOST}/echo"))
        .header("x-api-key", PH_KEY)
        .send()
        .await;
    assert_eq!(c.exit, 0, "{c}");
    assert_eq!(last_header(&h, "x-api-key"), vec![SECRET.to_string()]);
    let body = c.text();
    assert!(!body.contains(SECRET), "secret echoed to the agent: {body}");
    assert!(body.contains(&format!("x-api-key: {PH_KEY}")), "{body}");
    // The request went out asking for an uncompressed response.
    assert_eq!(
        last_header(&h, "accept-encoding"),
        vec!["identity".to_string()]
    );
}

#[tokio::test]
async fn bearer_never_doubles_its_prefix() {
    let h = Harness::with(setup()).await;
    for written in [format!("Bearer {PH_BEARER}"), PH_BEARER.to_string()] {
        let c = h
            .get(format!("https://{HOST}/echo"))
            .header("Authorization", written)
            .send()
            .await;
        assert_eq!(c.exit, 0, "{c}");
        assert_eq!(
            last_header(&h, "authorization"),
            vec![format!("Bearer {}", secret("bearer"))]
        );
        assert!(!c.text().contains(&secret("bearer")));
    }
}

#[tokio::test]
async fn basic_auth_replaces_the_password_of_the_agents_own_basic_header() {
    let h = Harness::with(setup()).await;
    // git over HTTPS: user name, placeholder as password.
    let c = h
        .get(format!("https://{HOST}/echo"))
        .curl_args(&["-u", &format!("git:{PH_BASIC}")])
        .send()
        .await;
    assert_eq!(c.exit, 0, "{c}");
    assert_eq!(
        last_header(&h, "authorization"),
        vec![format!(
            "Basic {}",
            b64(&format!("git:{}", secret("basic")))
        )]
    );
    let body = c.text();
    assert!(
        !body.contains(&b64(&format!("git:{}", secret("basic")))),
        "{body}"
    );
}

#[tokio::test]
async fn same_name_header_is_replaced_not_duplicated() {
    let h = Harness::with(setup()).await;
    let c = h
        .get(format!("https://{HOST}/echo"))
        .header("x-api-key", PH_KEY)
        .header("x-api-key", "agents-own-value")
        .send()
        .await;
    assert_eq!(c.exit, 0, "{c}");
    assert_eq!(last_header(&h, "x-api-key"), vec![SECRET.to_string()]);
}

#[tokio::test]
async fn query_and_body_injection_are_opt_in_and_leave_everything_else_untouched() {
    let h = Harness::with(setup()).await;
    let url = format!("https://{HOST}/echo?b=2&key={PH_QUERY}&a=%2F1");
    let c = h.get(url).send().await;
    assert_eq!(c.exit, 0, "{c}");
    let got = h.upstream.received().last().unwrap().path_and_query.clone();
    let enc: String = secret("query")
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    assert_eq!(got, format!("/echo?b=2&key={enc}&a=%2F1"));
    assert!(!c.text().contains(&secret("query")));
    assert!(!c.text().contains(&enc));

    let json = format!(r#"{{"model":"m","key":"{PH_BODY}","other":"keep \"me\""}}"#);
    let c = h
        .post(format!("https://{HOST}/echo"), json.clone())
        .header("content-type", "application/json")
        .send()
        .await;
    assert_eq!(c.exit, 0, "{c}");
    let r = h.upstream.received().last().unwrap().clone();
    let expected = json.replace(PH_BODY, &secret("body"));
    assert_eq!(r.body_len, expected.len() as u64);
    assert_eq!(r.header("content-length"), Some(expected.len().to_string()));
    assert!(!c.text().contains(&secret("body")), "{}", c.text());
    assert!(
        c.text().contains(&format!(r#""key":"{PH_BODY}""#)),
        "{}",
        c.text()
    );
}

/// Each misuse: 403 with an agent-readable reason, and the upstream receives nothing.
#[tokio::test]
async fn every_misuse_is_refused_before_anything_is_sent() {
    let h = Harness::with(Setup {
        allow: vec![],
        ..setup()
    })
    .await;
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        // Placeholder for another (allowed) host.
        (
            "credential_not_bound",
            vec![
                "-H".into(),
                format!("x-api-key: {PH_KEY}"),
                format!("https://{OTHER}/echo"),
            ],
            "may only be used in header x-api-key for api.example.test",
        ),
        // Another header than the declared one.
        (
            "credential_wrong_location",
            vec![
                "-H".into(),
                format!("x-other: {PH_KEY}"),
                format!("https://{HOST}/echo"),
            ],
            "it was found in header:x-other",
        ),
        // In the path.
        (
            "credential_wrong_location",
            vec![format!("https://{HOST}/echo/{PH_KEY}")],
            "found in path",
        ),
        // In the query without query injection.
        (
            "credential_wrong_location",
            vec![format!("https://{HOST}/echo?k={PH_KEY}")],
            "found in query",
        ),
        // In the body without body injection.
        (
            "credential_wrong_location",
            vec![
                "--data-binary".into(),
                format!("{{\"k\":\"{PH_KEY}\"}}"),
                format!("https://{HOST}/echo"),
            ],
            "found in body",
        ),
        // Cleartext.
        (
            "credential_not_bound",
            vec![
                "-H".into(),
                format!("x-api-key: {PH_KEY}"),
                format!("http://{PLAIN}/echo"),
            ],
            "may only be used",
        ),
        // Near misses: altered case, truncated, padded.
        (
            "placeholder_near_miss",
            vec![
                "-H".into(),
                format!("x-api-key: {}", PH_KEY.to_uppercase()),
                format!("https://{HOST}/echo"),
            ],
            "looks like a placeholder",
        ),
        (
            "placeholder_near_miss",
            vec![
                "-H".into(),
                format!("x-api-key: {}", &PH_KEY[..30]),
                format!("https://{HOST}/echo"),
            ],
            "looks like a placeholder",
        ),
        (
            "placeholder_near_miss",
            vec![
                "-H".into(),
                format!("x-api-key: {PH_KEY}x"),
                format!("https://{HOST}/echo"),
            ],
            "looks like a placeholder",
        ),
    ];
    for (reason, args, says) in cases {
        let (url, rest) = args.split_last().unwrap();
        let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
        let c = h.get(url).curl_args(&rest).send().await;
        assert_eq!(c.status, 403, "{args:?}: {c}");
        assert_eq!(c.reason.as_deref(), Some(reason), "{args:?}: {c}");
        assert!(c.text().contains(says), "{args:?}: {c}");
        assert!(!c.received().contains(SECRET));
    }
    assert_eq!(
        h.upstream.request_count(),
        0,
        "the upstream received a request"
    );
    assert_eq!(h.plain.request_count(), 0);
}

#[tokio::test]
async fn cleartext_to_a_bound_host_is_refused() {
    // A credential bound to the plain-HTTP host: the placeholder over http:// is refused.
    let mut s = setup();
    s.credentials.push_str(&format!(
        "  - id: plainkey\n    placeholder: agent-vault-66666666-2222-3333-4444-555555555555\n    type: api_key\n    bound_domains: [{PLAIN}]\n    allowed_roles: [{ROLE}]\n    source: {{env: SECRET_KEY}}\n"
    ));
    let h = Harness::with(s).await;
    let c = h
        .get(format!("http://{PLAIN}/echo"))
        .header(
            "x-api-key",
            "agent-vault-66666666-2222-3333-4444-555555555555",
        )
        .send()
        .await;
    assert_eq!(c.status, 403, "{c}");
    assert_eq!(c.reason.as_deref(), Some("credential_cleartext"), "{c}");
    assert_eq!(h.plain.request_count(), 0);
}

#[tokio::test]
async fn a_secret_with_crlf_is_never_put_in_a_header() {
    let h = Harness::with(Setup {
        env: vec![("SECRET_KEY".into(), "sk-evil\r\nX-Injected: yes".into())],
        ..setup()
    })
    .await;
    let c = h
        .get(format!("https://{HOST}/echo"))
        .header("x-api-key", PH_KEY)
        .send()
        .await;
    assert_eq!(c.status, 502, "{c}");
    assert_eq!(c.reason.as_deref(), Some("secret_invalid"), "{c}");
    assert_eq!(h.upstream.request_count(), 0);
}

#[tokio::test]
async fn a_missing_secret_fails_closed_with_502() {
    let h = Harness::with(Setup {
        env: vec![],
        ..setup()
    })
    .await;
    let c = h
        .get(format!("https://{HOST}/echo"))
        .header("x-api-key", PH_KEY)
        .send()
        .await;
    assert_eq!(c.status, 502, "{c}");
    assert_eq!(h.upstream.request_count(), 0);
}

#[tokio::test]
async fn credential_needs_one_of_its_roles() {
    let h = Harness::with(setup()).await;
    let stranger = h.token_for("agent-b", &["other-role"], Duration::from_secs(600));
    let c = h
        .get(format!("https://{HOST}/echo"))
        .token(&stranger)
        .header("x-api-key", PH_KEY)
        .send()
        .await;
    assert_eq!(c.status, 403, "{c}");
    assert_eq!(c.reason.as_deref(), Some("policy_denied"), "{c}");
    assert!(c.text().contains("none of the roles"), "{c}");
    assert_eq!(h.upstream.request_count(), 0);
    // Without a placeholder the same agent may use the proxy.
    let c = h
        .get(format!("https://{HOST}/echo"))
        .token(&stranger)
        .send()
        .await;
    assert_eq!(c.status, 200, "{c}");
}

#[tokio::test]
async fn large_body_with_the_placeholder_past_the_window_is_aborted() {
    let h = Harness::with(Setup {
        limits: vec!["body_scan_window: 4096".into()],
        ..setup()
    })
    .await;
    let mut body = "a".repeat(100_000);
    body.push_str(PH_KEY);
    let c = h
        .post(format!("https://{HOST}/sha256"), body.clone())
        .header("transfer-encoding", "chunked")
        .send()
        .await;
    assert_ne!(c.status, 200, "{c}");
    // The upstream never saw a complete request carrying the placeholder.
    for r in h.upstream.received() {
        assert!(r.body_len < body.len() as u64, "{r:?}");
    }
}

/// Fetch through the proxy over HTTP/2 in a fresh tunnel, collecting status, headers, body
/// and trailers exactly as the agent receives them.
async fn fetch(
    h: &Harness,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, Vec<u8>, String) {
    use http_body_util::BodyExt;
    let (tcp, status, _) =
        credproxy_testkit::connect_tunnel(h.addr(), &format!("{HOST}:443"), &h.auth_pairs())
            .await
            .unwrap();
    assert_eq!(status, 200);
    let tls = credproxy_testkit::tls_over(tcp, HOST, h.proxy_client_config(&["h2"])).await;
    let mut send = credproxy_testkit::http2_handshake::<_, http_body_util::Full<bytes::Bytes>>(tls)
        .await
        .unwrap();
    let mut req = http::Request::get(format!("https://{HOST}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send
        .send_request(
            req.body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let head: String = resp
        .headers()
        .iter()
        .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
        .collect();
    let mut body = resp.into_body();
    let mut data = Vec::new();
    let mut trailers = String::new();
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(60), body.frame())
        .await
        .unwrap()
    {
        let frame = frame.unwrap();
        if let Some(d) = frame.data_ref() {
            data.extend_from_slice(d);
        } else if let Some(t) = frame.trailers_ref() {
            for (k, v) in t {
                trailers.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
            }
        }
    }
    (status, head, data, trailers)
}

/// No rendering of any secret in anything the agent received.
fn assert_clean(what: &str, bytes: &[u8]) {
    for id in ["key", "bearer", "basic", "query", "body"] {
        let s = secret(id);
        if let Some(form) = credproxy_testkit::contains_any_rendering(bytes, s.as_bytes()) {
            panic!("{what}: the {id} secret reached the agent as {form}");
        }
    }
}

#[tokio::test]
async fn every_rendering_in_body_headers_trailers_and_location_is_scrubbed() {
    let h = Harness::with(setup()).await;
    let key = format!("x-api-key: {PH_KEY}");
    let _ = key;
    let (status, head, body, trailers) = fetch(
        &h,
        "/render?from=x-api-key&where=body,header,trailer,location",
        &[("x-api-key", PH_KEY)],
    )
    .await;
    assert_eq!(status, 302);
    // The upstream really did receive (and render) the secret.
    assert_eq!(
        h.upstream
            .received()
            .last()
            .unwrap()
            .header("x-api-key")
            .as_deref(),
        Some(SECRET)
    );
    assert!(!body.is_empty());
    assert_clean("body", &body);
    assert_clean("headers", head.as_bytes());
    assert_clean("trailers", trailers.as_bytes());
    assert!(
        head.contains("location: https://elsewhere.example/cb?key="),
        "{head}"
    );
    assert!(
        trailers.contains("x-rendered-trailer"),
        "trailer missing: {trailers:?}"
    );
    // Raw, JSON and percent forms come back as the placeholder.
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains(&format!("raw: {PH_KEY}")), "{text}");

    // Bearer and Basic renderings too (the header value, the token, user:password).
    let (_, head, body, _) = fetch(
        &h,
        "/render?from=authorization&where=body,header",
        &[("authorization", &format!("Bearer {PH_BEARER}"))],
    )
    .await;
    assert_clean("bearer body", &body);
    assert_clean("bearer headers", head.as_bytes());
    let basic = format!("Basic {}", b64(&format!("git:{PH_BASIC}")));
    let (_, head, body, _) = fetch(
        &h,
        "/render?from=authorization&where=body,header",
        &[("authorization", &basic)],
    )
    .await;
    assert_clean("basic body", &body);
    assert_clean("basic headers", head.as_bytes());
}

#[tokio::test]
async fn a_secret_split_across_sse_events_is_scrubbed_and_events_still_stream() {
    let h = Harness::with(setup()).await;
    let h2 = &h;
    let fetch_task = fetch(
        h2,
        "/render?from=x-api-key&where=sse&gate=second",
        &[("x-api-key", PH_KEY)],
    );
    // Release the second half only once the first event has been forwarded: the first frame
    // carries half the secret, which the scrubber must hold back (it may be a prefix) —
    // everything before it goes out. Release unconditionally after the request arrived.
    let release = async {
        h.upstream.wait_for_requests(1).await;
        h.upstream.release("second");
    };
    let ((status, _, body, _), ()) = tokio::join!(fetch_task, release);
    assert_eq!(status, 200);
    assert_clean("sse", &body);
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains(&format!("part1={PH_KEY}")), "{text}");
    assert!(text.ends_with("data: done\n\n"), "{text}");
}

#[tokio::test]
async fn compressed_echoes_are_decoded_and_scrubbed_and_unknown_encodings_fail_closed() {
    let h = Harness::with(setup()).await;
    for enc in ["gzip", "deflate", "br", "zstd"] {
        let (status, head, body, _) = fetch(
            &h,
            &format!("/render?from=x-api-key&encoding={enc}&split=1"),
            &[("x-api-key", PH_KEY)],
        )
        .await;
        assert_eq!(status, 200, "{enc}");
        assert!(!head.contains("content-encoding"), "{enc}: {head}");
        assert_clean(enc, &body);
        assert!(
            String::from_utf8_lossy(&body).contains(&format!("raw: {PH_KEY}")),
            "{enc}"
        );
    }
    let (status, head, body, _) = fetch(
        &h,
        "/render?from=x-api-key&encoding=bogus",
        &[("x-api-key", PH_KEY)],
    )
    .await;
    assert_eq!(status, 502, "{head}");
    assert!(head.contains("upstream_encoding"), "{head}");
    assert_clean("bogus", &body);
}

#[tokio::test]
async fn a_64_mib_echo_with_the_secret_at_the_end_is_scrubbed() {
    let h = Harness::with(setup()).await;
    let (status, _, body, _) = fetch(
        &h,
        &format!("/render?from=x-api-key&pad={}", 64 * 1024 * 1024),
        &[("x-api-key", PH_KEY)],
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.len() > 64 * 1024 * 1024);
    assert_clean("64 MiB", &body[64 * 1024 * 1024 - 16..]);
    assert!(String::from_utf8_lossy(&body[64 * 1024 * 1024..]).contains(&format!("raw: {PH_KEY}")));
}

#[tokio::test]
async fn responses_from_a_bound_host_are_scrubbed_even_without_a_placeholder() {
    let h = Harness::with(setup()).await;
    // First request injects (and so the proxy knows the secret is at that host)...
    let _ = fetch(&h, "/echo", &[("x-api-key", PH_KEY)]).await;
    // ...a later request without any placeholder gets an echo of a header carrying the
    // secret (as if the upstream had stored it): still scrubbed.
    let (status, _, body, _) = fetch(&h, "/render?from=x-stored", &[("x-stored", SECRET)]).await;
    assert_eq!(status, 200);
    assert_clean("stored echo", &body);
}
