//! Prometheus metrics, served in text format on the admin listener.

use std::sync::Arc;

use credproxy_tls::LeafCache;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `forwarded` or `rejected`.
    pub outcome: &'static str,
    /// `ok` or a stable rejection reason.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Histogram,
    pub open_connections: Gauge,
    pub connections: Family<ListenerLabels, Counter>,
    pub refused_connections: Family<RefusedLabels, Counter>,
    pub tunnels: Counter,
    pub misuse: Family<MisuseLabels, Counter>,
    pub scrubbed: Counter,
    pub reloads: Family<ReloadLabels, Counter>,
    pub generation: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub listener: String,
    /// `peer_uid` or `peer_cid`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MisuseLabels {
    pub kind: &'static str,
}

impl Metrics {
    pub fn new(
        leaf_cache: Arc<LeafCache>,
        agent_tokens: Vec<(String, Arc<credproxy_identity::RefreshingToken>)>,
    ) -> Metrics {
        let mut registry = Registry::with_prefix("credproxy");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests handled, by outcome and reason",
            requests.clone(),
        );
        let request_duration = Histogram::new(
            [
                0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                5.0, 10.0, 30.0, 60.0,
            ]
            .into_iter(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request head to response head",
            request_duration.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Agent connections currently open",
            open_connections.clone(),
        );
        let connections = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "connections",
            "Agent connections accepted, by listener",
            connections.clone(),
        );
        let refused_connections = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed at accept because the peer is not the one the listener admits (peer_uids, peer_cid), by listener and reason",
            refused_connections.clone(),
        );
        let tunnels = Counter::default();
        registry.register("tunnels", "CONNECT tunnels established", tunnels.clone());
        let misuse = Family::<MisuseLabels, Counter>::default();
        registry.register(
            "misuse_alarms",
            "Placeholder misuse refused (another host, location, cleartext, near miss)",
            misuse.clone(),
        );
        let scrubbed = Counter::default();
        registry.register(
            "scrubbed",
            "Renderings of secrets replaced in responses",
            scrubbed.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads, by result (an error keeps the old generation)",
            reloads.clone(),
        );
        let generation = Gauge::default();
        generation.set(1);
        registry.register(
            "config_generation",
            "Id of the active configuration generation",
            generation.clone(),
        );
        registry.register_collector(Box::new(LeafCacheCollector(leaf_cache)));
        if !agent_tokens.is_empty() {
            registry.register_collector(Box::new(AgentTokenCollector(agent_tokens)));
        }
        Metrics {
            registry,
            requests,
            request_duration,
            open_connections,
            connections,
            refused_connections,
            tunnels,
            misuse,
            scrubbed,
            reloads,
            generation,
        }
    }

    /// Expose the decision cache of whichever generation is current at scrape time.
    pub fn watch_policy_cache(&mut self, gen: Arc<arc_swap::ArcSwap<crate::Generation>>) {
        self.registry
            .register_collector(Box::new(PolicyCacheCollector(gen)));
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The policy decision cache of the current generation (`policy::cache`): its counters start
/// again at zero with every reload, which compiles a new generation with an empty cache.
struct PolicyCacheCollector(Arc<arc_swap::ArcSwap<crate::Generation>>);

impl std::fmt::Debug for PolicyCacheCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PolicyCacheCollector")
    }
}

impl Collector for PolicyCacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // No cache (a policy that reads the time or calls an impure builtin): no series.
        let Some(s) = self.0.load().policy.cache_stats() else {
            return Ok(());
        };
        for (name, help, v) in [
            (
                "policy_cache_hits",
                "Policy decisions answered from the current generation's decision cache",
                s.hits,
            ),
            (
                "policy_cache_misses",
                "Policy decisions evaluated after a miss in the current generation's cache",
                s.misses,
            ),
        ] {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let g = ConstGauge::new(s.entries as i64);
        g.encode(encoder.encode_descriptor(
            "policy_cache_entries",
            "Decisions held in the current generation's decision cache",
            None,
            g.metric_type(),
        )?)?;
        Ok(())
    }
}

#[derive(Debug)]
struct LeafCacheCollector(Arc<LeafCache>);

impl Collector for LeafCacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.stats();
        for (name, help, v) in [
            ("leaf_cache_hits", "Leaf certificate cache hits", s.hits),
            ("leaf_cache_misses", "Leaf certificates minted", s.misses),
        ] {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        for (name, help, v) in [
            ("leaf_cache_size", "Leaf certificates cached", s.size as i64),
            (
                "leaf_cache_capacity",
                "Leaf certificate cache capacity",
                s.capacity as i64,
            ),
        ] {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenResultLabels {
    listener: String,
    result: &'static str,
}

/// Listener tokens (`agent_token`): fetches by result, whether a valid token is held, and
/// when it expires. Read from the refreshers at scrape time.
#[derive(Debug)]
struct AgentTokenCollector(Vec<(String, Arc<credproxy_identity::RefreshingToken>)>);

impl Collector for AgentTokenCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "agent_token_refreshes",
            "Token requests for listener agents (agent_token), by result; the first one included",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (listener, t) in &self.0 {
            let (ok, failed) = t.fetches();
            for (result, v) in [("ok", ok), ("error", failed)] {
                let labels = TokenResultLabels {
                    listener: listener.clone(),
                    result,
                };
                ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "agent_token_valid",
            "1 when the listener holds an unexpired agent token, else 0",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (listener, t) in &self.0 {
            let labels = TokenLabels {
                listener: listener.clone(),
            };
            let valid = i64::from(t.current().is_ok());
            ConstGauge::new(valid).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "agent_token_expiry_timestamp_seconds",
            "When the listener's current agent token expires (Unix time; 0 when none or unknown)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (listener, t) in &self.0 {
            let labels = TokenLabels {
                listener: listener.clone(),
            };
            let at = t
                .expires_at()
                .and_then(|e| e.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs() as i64);
            ConstGauge::new(at).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
