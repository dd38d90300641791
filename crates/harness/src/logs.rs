//! Every log line of a test binary, captured for the canary checks (no secret in any log).

use std::sync::{Arc, Mutex, OnceLock};

/// The captured log output (JSON lines), shared by every test of the binary.
#[derive(Clone, Default)]
pub struct Logs(pub Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// Everything logged so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Install the process's tracing subscriber (JSON, with `filter`, e.g.
/// `"debug,credproxy_proxy=trace"`) writing into one buffer, and return it. The first call in
/// a test binary installs it; later calls return the same buffer (and ignore their filter).
pub fn capture(filter: &str) -> Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(move || writer.clone())
            .json()
            .try_init()
            .expect("no other tracing subscriber in this test binary");
        logs
    })
    .clone()
}
