//! Optional export of credential-use records to Temporal (`audit.temporal`): one sink of the
//! export seam ([`crate::export`]).
//!
//! This is the only module in the workspace that imports the Temporal SDK. [`TemporalSink`]
//! starts one `ProxyRequestWorkflow` per credential-use record (workflow id = record id, id
//! reuse rejected, so a re-delivery never creates a second execution) and signals
//! `response_complete` with the outcome; the driver in [`crate::export`] reads the spool,
//! acknowledges each step, backs off while Temporal is down and resumes after a restart.
//!
//! What reaches Temporal: the record id, agent id, destination, method, path (no query),
//! credential ids, and the outcome's status, reason label, byte counts, scrub count and
//! latency. Never a secret, a token, a token hash or a claim set.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use temporalio_client::{
    Client, ClientOptions, Connection, ConnectionOptions, RetryOptions, WorkflowIdConflictPolicy,
    WorkflowIdReusePolicy, WorkflowSignalOptions, WorkflowStartOptions,
};
use temporalio_common::protos::temporal::api::enums::v1::IndexedValueType;
use temporalio_common::protos::temporal::api::operatorservice::v1::{
    AddSearchAttributesRequest, ListSearchAttributesRequest,
};
use temporalio_common::search_attributes::{SearchAttributeKey, SearchAttributes};
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{
    Runtime, SyncWorkflowContext, Worker, WorkerOptions, WorkflowContext, WorkflowResult,
};
use tokio::task::JoinHandle;

use crate::export::{AuditSink, ExportOptions};
pub use crate::export::{ExportError, ExporterHandle};
use crate::record::{AuditRecord, Decision, Outcome};
use crate::spool::AuditSpool;

/// Search attribute: the agent id (Keyword).
pub const SA_AGENT_ID: SearchAttributeKey<String> = SearchAttributeKey::keyword("CredProxyAgentID");
/// Search attribute: the destination `host:port` (Keyword).
pub const SA_TARGET_DOMAIN: SearchAttributeKey<String> =
    SearchAttributeKey::keyword("CredProxyTargetDomain");
/// Search attribute: the credential id(s) used, comma-separated (Keyword). Ids, never values.
pub const SA_CREDENTIAL_REF: SearchAttributeKey<String> =
    SearchAttributeKey::keyword("CredProxyCredentialRef");
/// Search attribute: `in_progress`, then `success`, `denied`, `error` or `timeout` (Keyword).
pub const SA_STATUS: SearchAttributeKey<String> = SearchAttributeKey::keyword("CredProxyStatus");

/// The custom search attributes the exporter registers (all Keyword, for exact-match queries).
pub const SEARCH_ATTRIBUTES: [&str; 4] = [
    "CredProxyAgentID",
    "CredProxyTargetDomain",
    "CredProxyCredentialRef",
    "CredProxyStatus",
];

/// Name of the signal carrying the outcome.
pub const SIGNAL_RESPONSE_COMPLETE: &str = "response_complete";

/// Default for [`TemporalConfig::namespace`] (the dev server has it).
pub const DEFAULT_NAMESPACE: &str = "default";
/// Default for [`TemporalConfig::task_queue`].
pub const DEFAULT_TASK_QUEUE: &str = "credproxy";
/// Default for [`TemporalConfig::signal_timeout`].
pub const DEFAULT_SIGNAL_TIMEOUT: Duration = Duration::from_secs(300);

/// Exporter configuration (`audit.temporal`: `address`, `namespace`, `task_queue` and
/// `signal_timeout`; the rest keep their defaults there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemporalConfig {
    /// gRPC address as a URL, e.g. `http://127.0.0.1:7233` ([`TemporalConfig::new`] accepts
    /// `host:port` as operators write it).
    pub address: String,
    /// Namespace (the dev server has `default`).
    pub namespace: String,
    /// Task queue of the `ProxyRequestWorkflow` worker.
    pub task_queue: String,
    /// How long a workflow waits for `response_complete` before finishing with `timeout`.
    pub signal_timeout: Duration,
    /// How often the exporter looks for new work when idle.
    pub poll_interval: Duration,
    /// Records handled per round.
    pub batch: usize,
    /// First retry delay while Temporal is unreachable.
    pub backoff_initial: Duration,
    /// Maximum retry delay.
    pub backoff_max: Duration,
    /// Client identity shown in Temporal.
    pub identity: String,
}

impl TemporalConfig {
    /// Defaults for a server at `address`: a URL, or `host:port` (then `http://host:port`).
    pub fn new(address: impl Into<String>) -> TemporalConfig {
        let address = address.into();
        TemporalConfig {
            address: if address.contains("://") {
                address
            } else {
                format!("http://{address}")
            },
            namespace: DEFAULT_NAMESPACE.into(),
            task_queue: DEFAULT_TASK_QUEUE.into(),
            signal_timeout: DEFAULT_SIGNAL_TIMEOUT,
            poll_interval: Duration::from_millis(200),
            batch: 256,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            identity: "credproxy-audit".into(),
        }
    }
}

/// Workflow input: the record's public fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyRequestInput {
    /// Record id (also the workflow id).
    pub record_id: String,
    /// RFC 3339 time of the request.
    pub time: String,
    /// Agent id.
    pub agent_id: Option<String>,
    /// Destination `host:port`.
    pub destination: String,
    /// HTTP method.
    pub method: String,
    /// Path without query.
    pub path: String,
    /// Credential ids used.
    pub credential_ids: Vec<String>,
    /// How long to wait for `response_complete`, in ms (input, so replay is deterministic).
    pub signal_timeout_ms: u64,
}

/// Payload of the `response_complete` signal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseComplete {
    /// `success`, `denied` or `error`.
    pub status: String,
    /// Upstream or proxy HTTP status.
    pub http_status: Option<u16>,
    /// `ok` or a failure label.
    pub reason: String,
    /// Request bytes sent upstream.
    pub bytes_up: u64,
    /// Response bytes returned.
    pub bytes_down: u64,
    /// Secrets scrubbed from the response.
    pub scrub_count: u64,
    /// Request latency.
    pub latency_ms: u64,
}

/// Workflow result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyRequestOutput {
    /// `success`, `denied`, `error` or `timeout`.
    pub status: String,
    /// The outcome, when it arrived in time.
    pub outcome: Option<ResponseComplete>,
}

/// One workflow per credential use: waits for the outcome, records the final status.
#[workflow]
#[derive(Default)]
pub struct ProxyRequestWorkflow {
    outcome: Option<ResponseComplete>,
}

#[workflow_methods]
impl ProxyRequestWorkflow {
    /// Waits for `response_complete` or the timeout, then upserts `CredProxyStatus`.
    #[run]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        input: ProxyRequestInput,
    ) -> WorkflowResult<ProxyRequestOutput> {
        let timeout = Duration::from_millis(input.signal_timeout_ms);
        let received = temporalio_sdk::workflows::select! {
            r = ctx.wait_condition(|s| s.outcome.is_some()) => r.is_ok(),
            _ = ctx.timer(timeout) => false,
        };
        let outcome = if received {
            ctx.state(|s| s.outcome.clone())
        } else {
            None
        };
        let status = outcome
            .as_ref()
            .map_or_else(|| "timeout".to_string(), |o| o.status.clone());
        ctx.upsert_search_attributes([SA_STATUS.value_set(status.clone())]);
        Ok(ProxyRequestOutput { status, outcome })
    }

    /// The outcome of the request. Only the first signal counts (the exporter may re-deliver
    /// after a crash).
    #[signal]
    pub fn response_complete(
        &mut self,
        _ctx: &mut SyncWorkflowContext<Self>,
        outcome: ResponseComplete,
    ) {
        if self.outcome.is_none() {
            self.outcome = Some(outcome);
        }
    }
}

/// Exports to Temporal: `TemporalSink` driven by [`crate::export::spawn`].
pub struct Exporter;

impl Exporter {
    /// Starts the export to Temporal on the current tokio runtime: connect (with backoff),
    /// register the search attributes, run the worker, export pending records, forever.
    pub fn spawn(spool: AuditSpool, cfg: TemporalConfig) -> ExporterHandle {
        let opts = ExportOptions {
            poll_interval: cfg.poll_interval,
            batch: cfg.batch,
            backoff_initial: cfg.backoff_initial,
            backoff_max: cfg.backoff_max,
        };
        crate::export::spawn(spool, TemporalSink::new(cfg), opts)
    }
}

/// The Temporal sink: a record starts its `ProxyRequestWorkflow`, an outcome is its
/// `response_complete` signal. `connect` also runs the workflow's worker (on its own thread).
pub struct TemporalSink {
    cfg: TemporalConfig,
    client: Option<Client>,
    worker: Option<WorkerStop>,
}

impl TemporalSink {
    /// A sink for the server and namespace of `cfg` (nothing connects before `connect`).
    pub fn new(cfg: TemporalConfig) -> TemporalSink {
        TemporalSink {
            cfg,
            client: None,
            worker: None,
        }
    }

    fn client(&self) -> Result<&Client, ExportError> {
        self.client.as_ref().ok_or(ExportError::Rpc {
            sink: SINK,
            op: "export",
            reason: "not connected".into(),
        })
    }
}

const SINK: &str = "temporal";

impl AuditSink for TemporalSink {
    fn name(&self) -> &'static str {
        SINK
    }

    async fn connect(&mut self) -> Result<(), ExportError> {
        let client = setup(&self.cfg).await?;
        self.worker = match start_worker(&self.cfg, client.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(error = %e, "temporal worker did not start; exporting without it");
                None
            }
        };
        self.client = Some(client);
        Ok(())
    }

    async fn record(&self, rec: &AuditRecord) -> Result<(), ExportError> {
        let opts = WorkflowStartOptions::new(self.cfg.task_queue.clone(), rec.id.clone())
            .id_reuse_policy(WorkflowIdReusePolicy::RejectDuplicate)
            .id_conflict_policy(WorkflowIdConflictPolicy::Fail)
            .search_attributes(search_attributes(rec))
            .build();
        match self
            .client()?
            .start_workflow(
                ProxyRequestWorkflow::run,
                workflow_input(rec, &self.cfg),
                opts,
            )
            .await
        {
            // AlreadyStarted: delivered before (a re-delivery after a crash).
            Ok(_) | Err(temporalio_client::errors::WorkflowStartError::AlreadyStarted { .. }) => {
                Ok(())
            }
            Err(e) => Err(ExportError::Rpc {
                sink: SINK,
                op: "start workflow",
                reason: e.to_string(),
            }),
        }
    }

    async fn outcome(&self, rec: &AuditRecord, outcome: &Outcome) -> Result<(), ExportError> {
        let signal = ResponseComplete {
            status: outcome.status_label(rec.decision).to_string(),
            http_status: outcome.status,
            reason: outcome.reason.clone(),
            bytes_up: outcome.bytes_up,
            bytes_down: outcome.bytes_down,
            scrub_count: outcome.scrub_count,
            latency_ms: outcome.latency_ms,
        };
        let handle = self
            .client()?
            .get_workflow_handle::<ProxyRequestWorkflow>(rec.id.clone());
        match handle
            .signal(
                ProxyRequestWorkflow::response_complete,
                signal,
                WorkflowSignalOptions::default(),
            )
            .await
        {
            // NotFound: the workflow already closed (timed out, or signalled before a crash).
            Ok(()) | Err(temporalio_client::errors::WorkflowInteractionError::NotFound(_)) => {
                Ok(())
            }
            Err(e) => Err(ExportError::Rpc {
                sink: SINK,
                op: "signal workflow",
                reason: e.to_string(),
            }),
        }
    }

    async fn shutdown(&mut self) {
        if let Some((stop, task)) = self.worker.take() {
            stop();
            let _ = task.await;
        }
    }
}

type WorkerStop = (Box<dyn Fn() + Send + Sync>, JoinHandle<()>);

/// Runs the `ProxyRequestWorkflow` worker on its own thread: the SDK's worker future is not
/// `Send`, so it gets a current-thread runtime of its own.
fn start_worker(cfg: &TemporalConfig, client: Client) -> Result<WorkerStop, ExportError> {
    let rpc = |reason: String| ExportError::Rpc {
        sink: SINK,
        op: "worker start",
        reason,
    };
    let task_queue = cfg.task_queue.clone();
    let (tx, rx) = std::sync::mpsc::channel::<Result<Box<dyn Fn() + Send + Sync>, String>>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("audit-temporal-worker".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            rt.block_on(async move {
                let built = (|| {
                    let runtime = Runtime::from_current_tokio(Default::default())
                        .map_err(|e| e.to_string())?;
                    let opts = WorkerOptions::new(task_queue)
                        .register_workflow::<ProxyRequestWorkflow>()
                        .map_err(|e| e.to_string())?
                        .build();
                    let worker = Worker::new(&runtime, client, opts).map_err(|e| e.to_string())?;
                    Ok::<_, String>((runtime, worker))
                })();
                match built {
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                    Ok((_runtime, mut worker)) => {
                        let _ = tx.send(Ok(Box::new(worker.shutdown_handle())));
                        if let Err(e) = worker.run().await {
                            tracing::error!(error = %e, "temporal worker stopped");
                        }
                    }
                }
            });
            let _ = done_tx.send(());
        })
        .map_err(|e| rpc(e.to_string()))?;
    let shutdown = rx.recv().map_err(|e| rpc(e.to_string()))?.map_err(rpc)?;
    let task = tokio::spawn(async move {
        let _ = done_rx.await;
    });
    Ok((shutdown, task))
}

/// Connects and registers the search attributes (idempotent: existing ones are kept).
async fn setup(cfg: &TemporalConfig) -> Result<Client, ExportError> {
    let connect_err = |reason: String| ExportError::Connect {
        sink: SINK,
        address: cfg.address.clone(),
        reason,
    };
    let url = cfg
        .address
        .parse::<url::Url>()
        .map_err(|e| connect_err(e.to_string()))?;
    // Short SDK-level retries: our own backoff decides when to try again, so a Temporal outage
    // never parks the exporter inside one RPC for long.
    let retry = RetryOptions::builder()
        .max_elapsed_time(Some(Duration::from_secs(2)))
        .max_retries(2)
        .build();
    let opts = ConnectionOptions::new(url)
        .identity(cfg.identity.clone())
        .connect_timeout(Duration::from_secs(3))
        .retry_options(retry)
        .build();
    let connection = Connection::connect(opts)
        .await
        .map_err(|e| connect_err(e.to_string()))?;
    register_search_attributes(&connection, &cfg.namespace).await?;
    Client::new(
        connection,
        ClientOptions::new(cfg.namespace.clone()).build(),
    )
    .map_err(|e| connect_err(e.to_string()))
}

/// Registers the four Keyword attributes that are missing. The dev server keeps
/// `--search-attribute` flags only for a fresh database, so this runs at every start.
pub async fn register_search_attributes(
    connection: &Connection,
    namespace: &str,
) -> Result<(), ExportError> {
    let rpc = |op, e: temporalio_client::tonic::Status| ExportError::Rpc {
        sink: SINK,
        op,
        reason: e.message().to_string(),
    };
    let mut ops = connection.operator_service();
    let existing = ops
        .list_search_attributes(temporalio_client::tonic::Request::new(
            ListSearchAttributesRequest {
                namespace: namespace.to_string(),
            },
        ))
        .await
        .map_err(|e| rpc("list search attributes", e))?
        .into_inner();
    let missing: HashMap<String, i32> = SEARCH_ATTRIBUTES
        .iter()
        .filter(|n| {
            !existing.custom_attributes.contains_key(**n)
                && !existing.system_attributes.contains_key(**n)
        })
        .map(|n| (n.to_string(), IndexedValueType::Keyword as i32))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    match ops
        .add_search_attributes(temporalio_client::tonic::Request::new(
            AddSearchAttributesRequest {
                search_attributes: missing,
                namespace: namespace.to_string(),
            },
        ))
        .await
    {
        Ok(_) => Ok(()),
        // A concurrent registration won the race.
        Err(e) if e.code() == temporalio_client::tonic::Code::AlreadyExists => Ok(()),
        Err(e) if e.message().contains("already exists") => Ok(()),
        Err(e) => Err(rpc("add search attributes", e)),
    }
}

fn workflow_input(rec: &AuditRecord, cfg: &TemporalConfig) -> ProxyRequestInput {
    ProxyRequestInput {
        record_id: rec.id.clone(),
        time: rec.time.clone(),
        agent_id: rec.agent_id.clone(),
        destination: rec.destination.clone(),
        method: rec.method.clone(),
        path: rec.path.clone(),
        credential_ids: rec.credentials.iter().map(|c| c.id.clone()).collect(),
        signal_timeout_ms: u64::try_from(cfg.signal_timeout.as_millis()).unwrap_or(u64::MAX),
    }
}

fn search_attributes(rec: &AuditRecord) -> SearchAttributes {
    let creds = rec
        .credentials
        .iter()
        .map(|c| c.id.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let status = match rec.decision {
        Decision::Allow => "in_progress",
        Decision::Deny => "denied",
        Decision::Error => "error",
    };
    let mut updates = vec![
        SA_TARGET_DOMAIN.value_set(rec.destination.clone()),
        SA_CREDENTIAL_REF.value_set(creds),
        SA_STATUS.value_set(status.to_string()),
    ];
    if let Some(agent) = &rec.agent_id {
        updates.push(SA_AGENT_ID.value_set(agent.clone()));
    }
    SearchAttributes::new(updates)
}
