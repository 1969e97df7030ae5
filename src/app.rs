//! `fleetgate serve`: builds the server from a validated config (TLS, sinks, listeners,
//! metrics) and runs it until the shutdown token fires, then shuts down in order:
//! stop accepting → drain connections (pending acks) → flush sinks → stop background tasks,
//! all under one budget (`fleetgate.shutdown_grace_s`). The only place that wires modules.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ListenAddr, LoadedConfig};
use crate::control::{content_digest, AdminLog, Change, ImportItem, Live};
use crate::ingest::connection::ConnectionSettings;
use crate::ingest::server::{self, ServerSettings};
use crate::ingest::tls;
use crate::metrics::{self, FrameMetrics};
use crate::pipeline::{ChangesOnly, Pipeline};
use crate::rules::Fleet;
use crate::runner::local::{LocalRules, StateBackend};
use crate::runner::Placement;
use crate::sinks::kafka::KafkaSink;
use crate::sinks::logger::LoggerSink;
use crate::sinks::{Sink, SinkRouter};
use crate::store::{SqliteAdminLog, Store};

/// Why the server could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// TLS files unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsSetupError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source} — is another process using the port, or does it need privileges (ports < 1024)?")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// Something else in the config.
    #[error("config: {0}")]
    Config(String),
    /// Cluster mode could not start (Kafka unreachable, topics unusable).
    #[error("{0}")]
    Cluster(String),
}

/// Addresses the running server listens on (`serve --addrs-file` writes them as JSON).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BoundAddrs {
    /// Vehicle (mTLS websocket) listener.
    pub vehicles: SocketAddr,
    /// Prometheus `/metrics`, when enabled.
    pub metrics: Option<SocketAddr>,
    /// Plain `/status`, when enabled.
    pub status: Option<SocketAddr>,
    /// Admin API, when enabled.
    pub admin: Option<SocketAddr>,
    /// Proxy-terminated mTLS listener, when enabled.
    pub proxy: Option<SocketAddr>,
}

/// Options of `serve` that are not in the config file.
#[derive(Clone, Default)]
pub struct StartOptions {
    /// Allow the admin API without a token on a loopback address.
    pub insecure_admin: bool,
    /// An extra sink that receives every event (the demo prints them).
    pub event_tap: Option<Arc<dyn Sink>>,
}

/// The `topic` labels of Kafka deliveries: the record topics routed to Kafka, and `events`
/// (for their series at zero).
fn kafka_labels(config: &Config) -> Vec<&'static str> {
    let mut labels: Vec<&'static str> = config
        .records
        .iter()
        .filter(|(_, sinks)| sinks.iter().any(|s| s == "kafka"))
        .filter_map(|(topic, _)| crate::wire::Topic::from_wire(topic.as_bytes()))
        .map(|t| t.as_str())
        .collect();
    if config.event_sinks().iter().any(|s| s == "kafka") {
        labels.push("events");
    }
    labels.sort();
    labels.dedup();
    labels
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind {
            what,
            addr: addr.to_string(),
            source,
        })
}

/// A sink's (key, problem) list as one start-up error.
fn problems_error(problems: Vec<(String, String)>) -> ServeError {
    ServeError::Config(
        problems
            .iter()
            .map(|(k, p)| format!("{k}: {p}"))
            .collect::<Vec<_>>()
            .join("; "),
    )
}

/// Builds the sinks the config routes to.
pub fn build_sinks(
    config: &Config,
    base: &std::path::Path,
    tap: Option<Arc<dyn Sink>>,
) -> Result<SinkRouter, ServeError> {
    let mut available: Vec<Arc<dyn Sink>> = Vec::new();
    let used = |name: &str| {
        config.records.values().any(|v| v.iter().any(|s| s == name))
            || config.event_sinks().iter().any(|s| s == name)
    };
    if used("logger") {
        let logger: Arc<dyn Sink> = match &config.fleetgate.logger_file {
            Some(file) => {
                let path = Config::resolve(base, file);
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| {
                        ServeError::Config(format!(
                            "fleetgate.logger_file: cannot open {}: {e}",
                            path.display()
                        ))
                    })?;
                let sink = Arc::new(LoggerSink::buffered_file(f));
                let flushed = Arc::downgrade(&sink);
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_millis(100));
                    while let Some(sink) = flushed.upgrade() {
                        sink.flush(Duration::ZERO);
                        drop(sink);
                        tick.tick().await;
                    }
                });
                sink
            }
            None => Arc::new(LoggerSink::stdout()),
        };
        available.push(logger);
    }
    if used("kafka") {
        let properties = config.kafka.as_ref().ok_or_else(|| {
            ServeError::Config("records route to `kafka` but there is no `kafka` section".into())
        })?;
        let properties = crate::kafka::with_secrets(properties, &config.fleetgate.kafka, base)
            .map_err(|e| ServeError::Config(e.to_string()))?;
        let sink = KafkaSink::new(
            &properties,
            &config.namespace,
            &config.events_topic(),
            config.transmit_decoded_records,
            config.fleetgate.events.kafka_content_mode,
        )
        .map_err(|e| ServeError::Config(e.to_string()))?;
        available.push(Arc::new(sink));
    }
    if used("mqtt") {
        let mqtt = config.mqtt.as_ref().ok_or_else(|| {
            ServeError::Config("records route to `mqtt` but there is no `mqtt` section".into())
        })?;
        let settings =
            crate::sinks::mqtt::MqttSettings::from_config(mqtt, &config.fleetgate.mqtt, base)
                .map_err(problems_error)?;
        let sink = crate::sinks::mqtt::MqttSink::start(settings)
            .map_err(|e| ServeError::Config(e.to_string()))?;
        available.push(Arc::new(sink));
    }
    if used("webhook") {
        let webhook = config.fleetgate.webhook.as_ref().ok_or_else(|| {
            ServeError::Config("`webhook` is routed to but fleetgate.webhook is not set".into())
        })?;
        let data_dir = config
            .fleetgate
            .data_dir
            .as_ref()
            .map(|d| Config::resolve(base, d));
        let settings = crate::sinks::webhook::WebhookSettings::from_config(
            webhook,
            data_dir.as_deref(),
            base,
            true,
        )
        .map_err(problems_error)?;
        let sink = crate::sinks::webhook::WebhookSink::start(settings)
            .map_err(|e| ServeError::Config(e.to_string()))?;
        available.push(Arc::new(sink));
    }
    let mut router = SinkRouter::new(&config.records, &config.reliable_ack_sources, &available)
        .and_then(|r| r.with_event_sinks(&config.event_sinks()))
        .map_err(ServeError::Config)?;
    if let Some(tap) = tap {
        router = router.with_event_tap(tap);
    }
    Ok(router)
}

/// The config's own sites (`sites_file`) and watches (`fleetgate.watches`) as import items:
/// written through the admin log when new or changed since their last import.
fn config_imports(
    config: &Config,
    base: &std::path::Path,
) -> Result<Vec<(&'static str, Vec<ImportItem>)>, ServeError> {
    let mut out = Vec::new();
    if let Some(sites) = config.sites_file_sites(base) {
        let sites = sites.map_err(|e| ServeError::Config(format!("fleetgate.sites_file: {e}")))?;
        let items = sites
            .into_iter()
            .map(|site| ImportItem {
                item: site.id.clone(),
                digest: content_digest(&crate::rules::geojson::site_to_feature(&site)),
                change: Change::PutSite(site),
            })
            .collect();
        out.push(("sites_file", items));
    }
    let watches = config
        .fleetgate
        .watches
        .iter()
        .map(|spec| ImportItem {
            item: spec.watch_id.clone(),
            digest: content_digest(spec),
            change: Change::PutWatch(spec.clone()),
        })
        .collect::<Vec<_>>();
    if !watches.is_empty() {
        out.push(("watches", watches));
    }
    Ok(out)
}

/// Imports the config's own sites and watches through `log` (both modes: the one admin log).
async fn import_config(
    config: &Config,
    base: &std::path::Path,
    log: &dyn AdminLog,
    live: &Live,
) -> Result<(), ServeError> {
    for (source, items) in config_imports(config, base)? {
        let total = items.len();
        let written = crate::control::import(log, live, source, items)
            .await
            .map_err(|e| ServeError::Config(format!("importing fleetgate.{source}: {e}")))?;
        tracing::info!(
            source,
            items = total,
            written,
            "config items imported through the admin log (only new or changed ones are written)"
        );
    }
    Ok(())
}

/// Embedded mode's rules: the store (`fleetgate.data_dir`, else in memory) is the admin log
/// (replayed into the fleet, then the config's own items imported through it) and the rules'
/// journal (restored).
async fn start_embedded(
    config: &Config,
    base: &std::path::Path,
    live: &Live,
    sinks: &SinkRouter,
) -> Result<(Arc<SqliteAdminLog>, LocalRules), ServeError> {
    let store = match &config.fleetgate.data_dir {
        Some(dir) => Store::open(&Config::resolve(base, dir))
            .map_err(|e| ServeError::Config(format!("fleetgate.data_dir: {e}")))?,
        None => {
            tracing::warn!("fleetgate.data_dir is not set: sites, watches and rule state live in memory and are lost on restart");
            Store::in_memory().map_err(|e| ServeError::Config(e.to_string()))?
        }
    };
    let store = Arc::new(store);
    let replayed = store
        .replay(config.fleetgate.rules.default_radius_m)
        .map_err(|e| ServeError::Config(format!("reading the admin store: {e}")))?;
    live.apply(&replayed);
    let log = Arc::new(SqliteAdminLog {
        store: store.clone(),
        live: live.clone(),
    });
    import_config(config, base, log.as_ref(), live).await?;
    let backend: Option<Arc<dyn StateBackend>> = store
        .is_durable()
        .then(|| store.clone() as Arc<dyn StateBackend>);
    let rules = LocalRules::start(live.fleet.clone(), sinks.clone(), backend)
        .map_err(|e| ServeError::Config(format!("starting the rule journal: {e}")))?;
    let restored = rules
        .restore()
        .map_err(|e| ServeError::Config(format!("restoring the rule state from the store: {e}")))?;
    tracing::info!(
        sites = live.fleet.sites.load().len(),
        watches = live.fleet.watches.len(),
        vehicles = restored,
        durable = store.is_durable(),
        "rules ready"
    );
    Ok((log, rules))
}

/// Cluster mode: this instance's identity checked, the shared admin state restored (before
/// this returns, so no vehicle or admin request is served on a partial state) and the config's
/// own items imported through it, the cluster-wide view, the partitioned rules, the relay of
/// events to the sinks other than Kafka, and the door for inputs.
async fn start_cluster(
    config: &Config,
    base: &std::path::Path,
    cluster: &crate::cluster::config::ClusterConfig,
    live: Live,
    sinks: &SinkRouter,
    starting: Option<crate::admin::starting::StartingAdmin>,
) -> Result<crate::cluster::Cluster, ServeError> {
    use crate::cluster::presence::{default_instance_id, Presence};
    use crate::cluster::rules::{RulesProcessor, RulesSettings};
    use crate::cluster::shared_log::{SharedLog, SharedLogSettings, Topics};
    let fail = |e: crate::kafka::Error| ServeError::Cluster(e.to_string());
    let properties = config.kafka.as_ref().ok_or_else(|| {
        ServeError::Config("fleetgate.cluster needs the top-level `kafka` section".into())
    })?;
    let properties = crate::kafka::with_secrets(properties, &config.fleetgate.kafka, base)
        .map_err(|e| ServeError::Config(e.to_string()))?;
    let vehicle_port = config.listen_addr().map(|a| a.port()).unwrap_or(0);
    let instance_id = cluster
        .instance_id
        .clone()
        .unwrap_or_else(|| default_instance_id(vehicle_port));
    let timeout = Duration::from_secs(cluster.write_timeout_s);
    let topics = Topics::from_config(&config.namespace, &cluster.topics);
    let topic = |configured: &Option<String>, name: &str| {
        configured
            .clone()
            .unwrap_or_else(|| crate::kafka::topic_name(&config.namespace, name))
    };
    let state_topic = topic(&cluster.topics.state, "fleetgate_state");
    let inputs_topic = topic(&cluster.topics.inputs, "fleetgate_inputs");
    let presence_topic = topic(&cluster.topics.presence, "fleetgate_presence");
    let group = |what: &str| {
        format!(
            "fleetgate-{}-{}-{}-{what}",
            config.namespace, cluster.name, instance_id
        )
    };
    let limit = Duration::from_secs(cluster.startup_wait_s);
    let wait_properties = properties.clone();
    let reporter = starting.clone();
    let waited = tokio::task::spawn_blocking(move || {
        crate::kafka::startup::wait_for_brokers(&wait_properties, limit, |progress| {
            tracing::warn!("{progress}");
            if let Some(s) = &reporter {
                s.phase(progress);
            }
        })
    })
    .await
    .map_err(|e| ServeError::Cluster(format!("waiting for Kafka: {e}")))?
    .map_err(ServeError::Cluster)?;
    if waited > Duration::from_secs(1) {
        tracing::info!(waited_s = waited.as_secs(), "Kafka answers");
    }
    if let Some(s) = &starting {
        s.phase("cluster mode: restoring the shared state from Kafka");
    }
    tracing::info!(
        cluster = %cluster.name,
        instance = %instance_id,
        sites = %topics.sites,
        watches = %topics.watches,
        vins = %topics.vins,
        state = %state_topic,
        inputs = %inputs_topic,
        "cluster mode: checking this instance's identity, then restoring the shared state from Kafka"
    );
    let presence = Presence::start(
        &properties,
        &group("presence"),
        &presence_topic,
        &instance_id,
        &cluster.name,
        timeout,
    )
    .await
    .map_err(fail)?;
    presence
        .check_identity(timeout.max(Duration::from_secs(30)))
        .await
        .map_err(ServeError::Cluster)?;
    presence.publish(live.registry.clone()).map_err(fail)?;
    let log = SharedLog::start(
        SharedLogSettings {
            properties: properties.clone(),
            namespace: config.namespace.clone(),
            cluster: cluster.name.clone(),
            instance_id: instance_id.clone(),
            topics: topics.clone(),
            write_timeout: timeout,
            default_radius_m: config.fleetgate.rules.default_radius_m,
        },
        live.clone(),
    )
    .await
    .map_err(fail)?;
    log.restored().await;
    import_config(config, base, log.as_ref(), &live).await?;
    let mut settings = RulesSettings {
        properties: properties.clone(),
        namespace: config.namespace.clone(),
        cluster: cluster.name.clone(),
        instance_id: instance_id.clone(),
        frames_topic: crate::kafka::topic_name(&config.namespace, "V"),
        inputs_topic: inputs_topic.clone(),
        state_topic: state_topic.clone(),
        events_topic: config.events_topic(),
        watches_topic: topics.watches.clone(),
        event_mode: config.fleetgate.events.kafka_content_mode,
        session_timeout: Duration::from_secs(cluster.session_timeout_s),
        transaction_timeout: Duration::from_secs(cluster.transaction_timeout_s),
        timeout,
        offset_reset: cluster.rules_offset_reset.clone(),
        sweep_every: Duration::from_secs(10),
        commit_interval: Duration::from_millis(cluster.commit_interval_ms),
        partitions: 0,
    };
    crate::cluster::rules::ensure_topics(&mut settings)
        .await
        .map_err(fail)?;
    let view = crate::cluster::view::ClusterView::start(
        &properties,
        &group("view"),
        &state_topic,
        timeout,
    )
    .map_err(fail)?;
    let relay_sinks = sinks.without_event_sink("kafka");
    let relay = if relay_sinks.event_sinks().is_empty() {
        None
    } else {
        Some(
            crate::cluster::relay::Relay::start(
                crate::cluster::relay::RelaySettings {
                    properties: properties.clone(),
                    group_id: format!("fleetgate-{}-{}-relay", config.namespace, cluster.name),
                    instance_id: instance_id.clone(),
                    events_topic: config.events_topic(),
                    offset_reset: cluster.rules_offset_reset.clone(),
                    session_timeout: Duration::from_secs(cluster.session_timeout_s),
                    timeout,
                },
                relay_sinks,
            )
            .map_err(fail)?,
        )
    };
    let partitions = settings.partitions;
    let rules = RulesProcessor::start(settings, live.fleet.clone(), view.clone()).map_err(fail)?;
    let inputs = Arc::new(
        crate::cluster::inputs::InputClient::new(
            &properties,
            &inputs_topic,
            view.clone(),
            rules.status_handle(),
            partitions,
        )
        .map_err(fail)?,
    );
    Ok(crate::cluster::Cluster {
        name: cluster.name.clone(),
        instance_id,
        log,
        rules,
        view,
        presence,
        relay,
        inputs,
    })
}

/// Tesla onboarding: the Fleet API client, the token broker and the reconciler (started on
/// every instance; each acts only on the vehicles and accounts placed on it).
#[allow(clippy::too_many_arguments)]
fn start_onboarding(
    config: &Config,
    base: &std::path::Path,
    tesla: &crate::tesla::config::TeslaConfig,
    live: &Live,
    log: Arc<dyn AdminLog>,
    placement: Arc<dyn Placement>,
    background: &tokio_util::task::TaskTracker,
    shutdown: &CancellationToken,
) -> Result<crate::admin::tesla::TeslaAdmin, ServeError> {
    use crate::tesla::{fleet_api::FleetApi, reconcile, seal::TokenKey, tokens::TokenBroker};
    let fail = |e: String| ServeError::Config(e);
    let api = FleetApi::new(
        tesla.fleet_api().map_err(fail)?,
        tesla.auth().map_err(fail)?,
        tesla.client_id.clone().unwrap_or_default(),
        tesla.client_secret(base).map_err(fail)?,
        Duration::from_secs(15),
    )
    .map_err(|e| ServeError::Config(e.to_string()))?;
    let api = Arc::new(api);
    let key = Arc::new(TokenKey::new(&tesla.token_key(base).map_err(fail)?));
    let broker = Arc::new(TokenBroker::new(
        live.onboarding.clone(),
        key,
        api.clone(),
        log.clone(),
        placement.clone(),
    ));
    let template =
        crate::tesla::telemetry_config::ConfigTemplate::from_config(config, base).map_err(fail)?;
    let reconciler = Arc::new(reconcile::Reconciler::new(
        live.onboarding.clone(),
        api,
        broker.clone(),
        log,
        placement,
        live.fleet.clone(),
        tesla.partner_key(base).map_err(fail)?,
        reconcile::ReconcileSettings {
            interval: Duration::from_secs(tesla.reconcile_interval_s),
            poll: Duration::from_secs(tesla.poll_interval_s),
            partner_domain: tesla.partner_domain.clone().unwrap_or_default(),
            template,
        },
    ));
    tracing::info!(
        accounts = live.onboarding.accounts().len(),
        vehicles = live.onboarding.vehicles().len(),
        "Tesla onboarding on"
    );
    background.spawn(reconciler.run(shutdown.clone()));
    Ok(crate::admin::tesla::TeslaAdmin {
        onboarding: live.onboarding.clone(),
        broker,
        config: Arc::new(tesla.clone()),
    })
}

/// Where the rules run and admin writes go, as `start` wires them.
struct Placed {
    /// The admin log (the store, or the shared topics).
    log: Arc<dyn AdminLog>,
    /// Where the rules' inputs go.
    placement: Arc<dyn Placement>,
    /// The rules of this process (embedded mode).
    local_rules: Option<LocalRules>,
    /// Cluster mode's parts.
    cluster: Option<crate::cluster::Cluster>,
    /// The sinks of the frame path (its own events: every event sink in embedded mode, only
    /// Kafka in cluster mode, from where the relay hands them on).
    ingest_sinks: SinkRouter,
}

/// Embedded mode's clock: every 10 s, vehicles with a stale charging session or an expired
/// watch get a tick through the rules (cluster mode: the owner of each vehicle ticks it).
async fn run_clock(rules: LocalRules, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let r = rules.clone();
        let _ = tokio::task::spawn_blocking(move || r.tick(crate::runner::now_ms())).await;
    }
}

/// The sites, watches and vehicles gauges, every 10 s.
async fn report_fleet_size(fleet: Fleet, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        ::metrics::gauge!(crate::metrics::SITES).set(fleet.sites.load().len() as f64);
        ::metrics::gauge!(crate::metrics::WATCHES).set(fleet.watches.len() as f64);
        ::metrics::gauge!(crate::metrics::VEHICLES_KNOWN).set(fleet.vehicles.len() as f64);
    }
}

/// Re-reads the `data_connectors.file` VIN file when it changes (polled every 2 s, as Tesla's
/// connector watches it); connections the new list refuses are closed. A file that stops
/// parsing keeps the last good list and is logged.
async fn watch_vin_file(
    path: std::path::PathBuf,
    vins: Arc<crate::ingest::vins::VinPolicy>,
    registry: Arc<crate::ingest::registry::Registry>,
    shutdown: CancellationToken,
) {
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = modified(&path);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let now = modified(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match crate::ingest::vins::read_allowed_file(&path) {
            Ok(allowed) => {
                let count = allowed.len();
                vins.set_file_allowed(allowed);
                let closed = registry.kick(|vin| vins.refusal(vin).is_some());
                tracing::info!(file = %path.display(), vins = count, closed, "data_connectors.file: allowed VINs reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "data_connectors.file: the file no longer parses; keeping the last good list")
            }
        }
    }
}

/// Starts every listener; returns their addresses and a future that runs the server until
/// `shutdown` fires and then shuts down in order.
pub async fn start(
    loaded: &LoadedConfig,
    options: StartOptions,
    shutdown: CancellationToken,
) -> Result<(BoundAddrs, impl std::future::Future<Output = usize>), ServeError> {
    let config = &loaded.config;
    let parsed = &loaded.settings;
    let base = loaded
        .path
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .to_owned();
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    let tls_config = config
        .tls
        .as_ref()
        .ok_or_else(|| ServeError::Config("tls missing".into()))?;
    let server_cert = Config::resolve(&base, &tls_config.server_cert);
    let server_key = Config::resolve(&base, &tls_config.server_key);
    let roots = config.client_roots(&base);
    tracing::info!(roots = %roots.describe(), "vehicle certificates are verified against");
    let verifier = tls::client_verifier(&roots)?;
    let server_tls = tls::server_config(Some(verifier.clone()), &server_cert, &server_key)?;
    let proxy_settings = match &config.fleetgate.proxy_mtls {
        None => None,
        Some(proxy) => {
            let trusted = parsed
                .proxy
                .as_ref()
                .map(|(_, trusted)| trusted.clone())
                .ok_or_else(|| {
                    ServeError::Config("fleetgate.proxy_mtls: no trusted proxies".into())
                })?;
            let acceptor = if proxy.tls {
                Some(TlsAcceptor::from(tls::server_config(
                    None,
                    &server_cert,
                    &server_key,
                )?))
            } else {
                None
            };
            Some(Arc::new(server::ProxyListener {
                auth: crate::ingest::proxy::ProxyAuth::new(proxy.header, trusted, verifier),
                tls: acceptor,
            }))
        }
    };
    metrics::install();
    let sinks = build_sinks(config, &base, options.event_tap.clone())?;
    let sink_names: Vec<&str> = sinks.all().iter().map(|s| s.name()).collect();
    metrics::register_zeros(&metrics::Registered {
        sinks: sink_names.clone(),
        proxy: proxy_settings.is_some(),
        close_reasons: crate::ingest::connection::CloseReason::ALL
            .iter()
            .map(|r| r.label())
            .collect(),
        kafka_client_error_reasons: crate::sinks::kafka::CLIENT_ERROR_REASONS.to_vec(),
        kafka_topics: kafka_labels(config),
        webhook_endpoints: config
            .fleetgate
            .webhook
            .iter()
            .flat_map(|w| w.endpoints.iter().map(|e| e.name.clone()))
            .collect(),
        cluster: config.fleetgate.cluster.is_some(),
        tesla: config
            .fleetgate
            .tesla
            .as_ref()
            .is_some_and(|t| t.reconciler_enabled()),
    });
    let registry = Arc::new(crate::ingest::registry::Registry::default());
    // every task that outlives start-up: stopped and awaited at shutdown
    let background = tokio_util::task::TaskTracker::new();
    // the admin VIN lists come from the admin log's replay, like sites and watches
    let vins = Arc::new(crate::ingest::vins::VinPolicy::new(
        config.fleetgate.vins.clone(),
        Default::default(),
    ));
    if let Some(path) = config
        .data_connectors
        .as_ref()
        .and_then(|dc| dc.file.as_ref())
        .and_then(|f| f.vin_allowed_path())
    {
        let path = Config::resolve(&base, path);
        let allowed = crate::ingest::vins::read_allowed_file(&path).map_err(ServeError::Config)?;
        tracing::info!(file = %path.display(), vins = allowed.len(), "data_connectors.file: allowed VINs loaded");
        vins.set_file_allowed(allowed);
        background.spawn(watch_vin_file(
            path,
            vins.clone(),
            registry.clone(),
            shutdown.clone(),
        ));
    }
    // The admin listener first: while the rest starts (cluster mode waits for Kafka) it
    // answers /healthz with what start-up waits for, and 503 elsewhere.
    let starting_admin = match (&config.fleetgate.admin, parsed.admin) {
        (Some(admin), Some(addr)) => {
            if let Some(problem) = admin.token_problem(options.insecure_admin) {
                return Err(ServeError::Config(format!(
                    "fleetgate.admin.token: {problem}"
                )));
            }
            let l = bind("admin", addr).await?;
            let bound = l.local_addr().map_err(|source| ServeError::Bind {
                what: "admin",
                addr: addr.to_string(),
                source,
            })?;
            Some((
                crate::admin::starting::StartingAdmin::serve(l, shutdown.clone(), &background),
                bound,
            ))
        }
        _ => None,
    };
    let fleet = Fleet::new(config.fleetgate.rules.clone(), Vec::new());
    let live = Live {
        fleet: fleet.clone(),
        vins: vins.clone(),
        registry: registry.clone(),
        imports: Default::default(),
        onboarding: Default::default(),
    };
    // Where the rules run, where admin writes go, and which sinks the frame path's own events
    // (vehicle.connected / disconnected) reach: everything in this process (embedded), or
    // Kafka, from where the relay hands them to the other sinks (cluster).
    let Placed {
        log,
        placement,
        local_rules,
        cluster,
        ingest_sinks,
    } = match &config.fleetgate.cluster {
        None => {
            let (log, rules) = start_embedded(config, &base, &live, &sinks).await?;
            background.spawn(run_clock(rules.clone(), shutdown.clone()));
            Placed {
                log,
                placement: Arc::new(rules.clone()),
                local_rules: Some(rules),
                cluster: None,
                ingest_sinks: sinks.clone(),
            }
        }
        Some(settings) => {
            let starting = starting_admin.as_ref().map(|(s, _)| s.clone());
            let cluster =
                start_cluster(config, &base, settings, live.clone(), &sinks, starting).await?;
            // stop the rules (after their transaction), the relay, the readers and the view
            // with the other background tasks
            let (stopping, stop) = (cluster.clone(), shutdown.clone());
            background.spawn(async move {
                stop.cancelled().await;
                let _ = tokio::task::spawn_blocking(move || stopping.stop()).await;
            });
            Placed {
                log: cluster.log.clone(),
                placement: cluster.inputs.clone(),
                local_rules: None,
                ingest_sinks: sinks.only_event_sink("kafka"),
                cluster: Some(cluster),
            }
        }
    };
    let listener_up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    background.spawn(report_fleet_size(fleet.clone(), shutdown.clone()));
    let tesla = match config
        .fleetgate
        .tesla
        .as_ref()
        .filter(|t| t.reconciler_enabled())
    {
        Some(tesla) => Some(start_onboarding(
            config,
            &base,
            tesla,
            &live,
            log.clone(),
            placement.clone(),
            &background,
            &shutdown,
        )?),
        None => None,
    };

    let limits = &config.fleetgate.limits;
    let settings = ServerSettings {
        tls: TlsAcceptor::from(server_tls),
        max_connections: limits.max_connections,
        handshake_timeout: parsed.handshake_timeout,
        upgrade_timeout: parsed.upgrade_timeout,
        websocket: crate::ingest::connection::websocket_config(
            limits.ws_read_buffer_bytes,
            limits.max_message_bytes,
        ),
        connection: ConnectionSettings {
            pipeline: Pipeline {
                sinks: ingest_sinks.clone(),
                rate_limit: parsed.rate_limit,
                inflight_slots: Arc::new(tokio::sync::Semaphore::new(
                    limits.max_pending_acks_total,
                )),
                metrics: Arc::new(FrameMetrics::new(&sink_names)),
                // cluster mode: the rules run where Kafka's group puts each vehicle
                rules: local_rules.clone(),
                changes_only: config.fleetgate.changes_only.enabled_for_v().then(|| {
                    let co = &config.fleetgate.changes_only;
                    Arc::new(ChangesOnly {
                        min_delta: co.deltas(),
                        max_age_ms: (co.max_age_s * 1000) as i64,
                    })
                }),
            },
            idle_timeout: parsed.idle_timeout,
            ping_interval: parsed.ping_interval,
            write_timeout: parsed.write_timeout,
            max_pending_acks: limits.max_pending_acks_per_connection,
        },
        shutdown_grace: parsed.shutdown_grace,
        registry: registry.clone(),
        vehicle_grace: parsed.vehicle_grace,
        handover_grace: parsed.handover_grace,
        ip_limiter: Arc::new(crate::ingest::rate::IpRateLimiter::new(
            limits.handshakes_per_ip_per_s,
        )),
        handshake_slots: Arc::new(tokio::sync::Semaphore::new(limits.max_handshakes_in_flight)),
        vins: vins.clone(),
        timers: tokio_util::task::TaskTracker::new(),
    };

    let vehicles_listen = parsed.vehicles.clone();
    let vehicle_addr = tokio::task::spawn_blocking(move || vehicles_listen.resolve())
        .await
        .map_err(|e| ServeError::Config(format!("host: {e}")))?
        .map_err(|e| ServeError::Config(format!("host: {e}")))?;
    let listener = bind("vehicles", vehicle_addr).await?;
    let vehicles = listener.local_addr().map_err(|source| ServeError::Bind {
        what: "vehicles",
        addr: vehicle_addr.to_string(),
        source,
    })?;

    let mut proxy = None;
    if let (Some((addr, _)), Some(proxy_settings)) = (&parsed.proxy, proxy_settings) {
        let l = bind("proxy_mtls", *addr).await?;
        proxy = Some((l, proxy_settings));
    }
    let proxy_addr = proxy.as_ref().and_then(|(l, _)| l.local_addr().ok());

    let mut metrics_addr = None;
    if let Some(addr) = parsed.metrics {
        let l = bind("metrics", addr).await?;
        metrics_addr = l.local_addr().ok();
        background.spawn(metrics::serve(l, shutdown.clone()));
    }
    let mut status_addr = None;
    if let Some(port) = parsed.status.as_ref().map(ListenAddr::port) {
        // on the vehicle listener's address, resolved once
        let l = bind("status", SocketAddr::new(vehicle_addr.ip(), port)).await?;
        status_addr = l.local_addr().ok();
        let public_key = match config.fleetgate.tesla.as_ref() {
            Some(t) if t.private_key_file.is_some() => Some(
                t.partner_key(&base)
                    .map_err(ServeError::Config)?
                    .public_pem(),
            ),
            _ => None,
        };
        background.spawn(server::serve_status(l, public_key, shutdown.clone()));
    }
    let mut admin_addr = None;
    if let (Some(admin), Some((starting, bound))) = (&config.fleetgate.admin, &starting_admin) {
        let token = admin.effective_token();
        if token.is_empty() {
            tracing::warn!("admin API without a token (--insecure-admin, loopback only)");
        }
        let smartcar = match &config.fleetgate.sources.smartcar {
            Some(sc) => Some(Arc::new(crate::sources::smartcar::http::SmartcarSource {
                token: sc.token(&base).map_err(ServeError::Config)?,
                vehicles: sc.vehicles.clone(),
            })),
            None => None,
        };
        admin_addr = Some(*bound);
        let state = crate::admin::AdminState {
            fleet: fleet.clone(),
            log: log.clone(),
            rules: placement.clone(),
            cluster: cluster.clone(),
            registry: registry.clone(),
            sinks: sinks.clone(),
            listener_up: listener_up.clone(),
            vins: vins.clone(),
            token: Arc::new(token),
            smartcar: crate::sources::smartcar::http::SmartcarState {
                source: smartcar,
                rules: placement.clone(),
            },
            tesla: tesla.clone(),
        };
        starting.ready(crate::admin::router(state));
    }
    listener_up.store(true, std::sync::atomic::Ordering::Relaxed);
    let addrs = BoundAddrs {
        vehicles,
        metrics: metrics_addr,
        status: status_addr,
        admin: admin_addr,
        proxy: proxy_addr,
    };
    let shown = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_else(|| "off".into());
    // addresses as fields: JSON logs carry them as keys, text logs as `vehicles=…`
    tracing::info!(
        vehicles = %addrs.vehicles,
        metrics = %shown(addrs.metrics),
        status = %shown(addrs.status),
        admin = %shown(addrs.admin),
        proxy = %shown(addrs.proxy),
        "listening"
    );

    // One shutdown budget: stop accepting, drain the connections, flush the sinks and stop
    // every background task, all within `shutdown_grace_s` of the signal.
    let budget = parsed.shutdown_grace;
    let shutdown_at = Arc::new(std::sync::OnceLock::new());
    {
        let (draining, stop, at) = (listener_up.clone(), shutdown.clone(), shutdown_at.clone());
        background.spawn(async move {
            stop.cancelled().await;
            let _ = at.set(tokio::time::Instant::now());
            // not ready from the first moment of a shutdown: the Service stops sending vehicles
            draining.store(false, std::sync::atomic::Ordering::Relaxed);
        });
    }
    let run = async move {
        let still_open = server::run(listener, proxy, settings, shutdown).await;
        let deadline = shutdown_at
            .get()
            .copied()
            .unwrap_or_else(tokio::time::Instant::now)
            + budget;
        let remaining = || {
            deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .max(Duration::from_millis(500))
        };
        tracing::info!(
            budget_left_ms = remaining().as_millis() as u64,
            "flushing sinks"
        );
        let flush_budget = remaining();
        let left = tokio::task::spawn_blocking(move || sinks.flush_all(flush_budget))
            .await
            .unwrap_or(0);
        if let Some(rules) = local_rules {
            // every vehicle's rule state, written once more before the process ends
            let budget = remaining();
            let _ = tokio::task::spawn_blocking(move || rules.stop(budget)).await;
        }
        background.close();
        if tokio::time::timeout(remaining(), background.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = background.len(),
                "background tasks still running at the shutdown deadline"
            );
        }
        if left > 0 {
            tracing::error!(
                records = left,
                "sinks could not deliver every record before the shutdown deadline"
            );
        }
        tracing::info!("shutdown complete");
        still_open + left
    };
    Ok((addrs, run))
}

/// Waits for SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
