//! The request helper reports what the agent got, whichever head it came in: a refused
//! CONNECT (its status and reason, no final response), a refusal of a plain-HTTP request,
//! the final response of a tunnel (not the CONNECT's 200), and bodies of any bytes.
#![allow(clippy::unwrap_used)]

use credproxy_harness::{Harness, HOST, PLAIN};

#[tokio::test]
async fn a_refused_connect_is_its_status_and_reason_with_no_final_response() {
    let h = Harness::start().await;
    let r = h.get("https://unlisted.example.test/").send().await;
    assert_eq!(r.connect, 403, "{r}");
    assert_eq!(r.status, 0, "{r}");
    assert_eq!(r.reason.as_deref(), Some("destination_not_allowed"), "{r}");
    assert_ne!(r.exit, 0, "{r}");
    // Without a token the CONNECT asks for one.
    let r = h.get(format!("https://{HOST}/echo")).token("").send().await;
    assert_eq!((r.connect, r.status), (407, 0), "{r}");
    assert_eq!(r.reason.as_deref(), Some("identity_missing"), "{r}");
    assert!(r.header("proxy-authenticate").is_some(), "{r}");
}

#[tokio::test]
async fn a_plain_http_refusal_has_status_reason_and_the_proxys_line() {
    let h = Harness::start().await;
    let r = h.get("http://unlisted.example.test/echo").send().await;
    assert_eq!((r.connect, r.status), (0, 403), "{r}");
    assert_eq!(r.reason.as_deref(), Some("destination_not_allowed"), "{r}");
    assert!(r.text().starts_with("credproxy: "), "{r}");
    assert!(r.text().contains("(request id "), "{r}");
    assert_eq!(r.exit, 0, "{r}");
    let r = h.get(format!("http://{PLAIN}/echo")).send().await;
    assert_eq!((r.connect, r.status, r.reason.as_deref()), (0, 200, None));
}

#[tokio::test]
async fn a_tunnelled_response_is_the_final_head_and_its_body() {
    let h = Harness::start().await;
    let r = h
        .request("PUT", format!("https://{HOST}/echo?status=201"))
        .header("x-echo-one", "1")
        .header("x-echo-two", "a")
        .header("x-echo-two", "b")
        .send()
        .await;
    assert_eq!((r.connect, r.status), (200, 201), "{r}");
    assert_eq!(r.reason, None, "{r}");
    assert_eq!(r.header("X-Echo-One"), Some("1"), "{r}");
    assert_eq!(r.header_all("x-echo-two"), vec!["a", "b"], "{r}");
    assert!(r.text().starts_with("PUT /echo?status=201 "), "{r}");
    assert!(
        r.head.starts_with("HTTP/1.1 200"),
        "the CONNECT's head first: {r}"
    );
}

#[tokio::test]
async fn a_body_of_any_bytes_is_sent_as_is() {
    let h = Harness::start().await;
    let body: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let r = h
        .post(format!("https://{HOST}/sha256"), body.clone())
        .send()
        .await;
    assert_eq!(r.status, 200, "{r}");
    let want = format!("{} {}", credproxy_testkit::sha256_hex(&body), body.len());
    assert_eq!(r.text(), want, "{r}");
}
