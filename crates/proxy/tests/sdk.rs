//! Real SDK clients through the proxy: the Python `anthropic` and `openai` packages, given
//! only a placeholder key, `HTTPS_PROXY=http://agent:<jwt>@…` and a CA bundle, talk to local
//! TLS upstreams pinned as api.anthropic.com / api.openai.com. The upstream must receive the
//! real key in the header the SDK uses; the SDK must see only the placeholder in the echo.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use credproxy_harness::{Harness, Setup, ROLE};
use credproxy_testkit::{TestPki, Upstream, UpstreamOptions, Validity};

const ANTHROPIC: &str = "api.anthropic.com";
const OPENAI: &str = "api.openai.com";
const PH_ANT: &str = "sk-ant-placeholder-for-the-agent-0001";
const PH_OAI: &str = "agent-vault-0a1b2c3d-0000-4000-8000-00000000a1b2";
const ANT_SECRET: &str = "sk-ant-api03-REALCANARY-9f8e7d6c5b4a3210";
const OAI_SECRET: &str = "sk-proj-REALCANARY-0123456789abcdefABCDEF";

fn python() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/test, which installs the anthropic and openai SDKs",
        p.display()
    );
    p
}

struct Sdks {
    h: Harness,
    anthropic: Upstream,
    openai: Upstream,
    bundle: PathBuf,
    _pki: TestPki,
}

async fn start() -> Sdks {
    let pki = TestPki::new();
    let anthropic = Upstream::start(UpstreamOptions::tls(
        pki.issue(&[ANTHROPIC], Validity::Valid),
    ))
    .await;
    let openai = Upstream::start(UpstreamOptions::tls(pki.issue(&[OPENAI], Validity::Valid))).await;
    let cred = |id: &str, ph: &str, host: &str, env: &str| {
        format!("  - id: {id}\n    placeholder: {ph}\n    type: bearer\n    bound_domains: [{host}]\n    allowed_roles: [{ROLE}]\n    source: {{env: {env}}}\n")
    };
    let h = Harness::with(Setup {
        allow: vec![ANTHROPIC.into(), OPENAI.into()],
        resolve: vec![
            (ANTHROPIC.into(), anthropic.addr()),
            (OPENAI.into(), openai.addr()),
        ],
        extra_ca: vec![pki.ca_cert_path().to_path_buf()],
        credentials: [
            cred("anthropic", PH_ANT, ANTHROPIC, "ANT"),
            cred("openai", PH_OAI, OPENAI, "OAI"),
        ]
        .concat(),
        env: vec![
            ("ANT".into(), ANT_SECRET.into()),
            ("OAI".into(), OAI_SECRET.into()),
        ],
        ..Setup::default()
    })
    .await;
    // SSL_CERT_FILE replaces the system store in these clients: give them the proxy CA only.
    let bundle = h.dir.path().join("bundle.pem");
    std::fs::copy(&h.proxy_ca, &bundle).unwrap();
    Sdks {
        h,
        anthropic,
        openai,
        bundle,
        _pki: pki,
    }
}

async fn run_python(s: &Sdks, script: &str, key: &str) -> (bool, String, String) {
    let proxy = format!("http://agent:{}@{}", s.h.token, s.h.addr());
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        tokio::process::Command::new(python())
            .arg("-c")
            .arg(script)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HTTPS_PROXY", &proxy)
            .env("HTTP_PROXY", &proxy)
            .env("SSL_CERT_FILE", &s.bundle)
            .env("API_KEY", key)
            .output(),
    )
    .await
    .expect("python finished")
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn anthropic_sdk_streams_with_only_a_placeholder() {
    let s = start().await;
    let script = r#"
import os, anthropic
c = anthropic.Anthropic(api_key=os.environ["API_KEY"])
with c.messages.stream(model="claude-test", max_tokens=32, messages=[{"role": "user", "content": "hi"}]) as st:
    text = "".join(st.text_stream)
print("STREAM:" + text)
m = c.messages.create(model="claude-test", max_tokens=32, messages=[{"role": "user", "content": "hi"}])
print("CREATE:" + m.content[0].text)
"#;
    let (ok, out, err) = run_python(&s, script, PH_ANT).await;
    assert!(ok, "python failed: {err}\n{out}");
    // The upstream received the real key, in the header this SDK uses.
    let recv = s.anthropic.received();
    assert_eq!(recv.len(), 2, "{recv:?}");
    for r in &recv {
        let auth = r
            .header("authorization")
            .or_else(|| r.header("x-api-key"))
            .unwrap();
        assert!(auth.ends_with(ANT_SECRET), "{auth}");
    }
    // The SDK saw the echo of its key only as the placeholder, in both modes.
    assert!(
        out.contains(&format!("STREAM:key seen: Bearer {PH_ANT}"))
            || out.contains(&format!("STREAM:key seen: {PH_ANT}")),
        "{out}"
    );
    assert!(
        out.contains(&format!("CREATE:key seen: Bearer {PH_ANT}"))
            || out.contains(&format!("CREATE:key seen: {PH_ANT}")),
        "{out}"
    );
    assert!(!out.contains(ANT_SECRET) && !err.contains(ANT_SECRET));
}

#[tokio::test]
async fn openai_sdk_with_the_token_in_the_proxy_url() {
    let s = start().await;
    let script = r#"
import os, openai
c = openai.OpenAI(api_key=os.environ["API_KEY"])
r = c.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
print("CREATE:" + r.choices[0].message.content)
chunks = c.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True)
print("STREAM:" + "".join((ch.choices[0].delta.content or "") for ch in chunks if ch.choices))
"#;
    let (ok, out, err) = run_python(&s, script, PH_OAI).await;
    assert!(ok, "python failed: {err}\n{out}");
    let recv = s.openai.received();
    assert_eq!(recv.len(), 2);
    for r in &recv {
        assert_eq!(
            r.header("authorization").as_deref(),
            Some(&*format!("Bearer {OAI_SECRET}"))
        );
    }
    assert!(
        out.contains(&format!("CREATE:key seen: Bearer {PH_OAI}")),
        "{out}"
    );
    assert!(
        out.contains(&format!("STREAM:key seen: Bearer {PH_OAI}")),
        "{out}"
    );
    assert!(!out.contains(OAI_SECRET) && !err.contains(OAI_SECRET));
}
