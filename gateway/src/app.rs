//! The application: one [`Server`] built from one [`Config`], the only place that wires the
//! subsystems together (and the only place that chooses single-node or fleet control).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::control::{LocalControl, ModelControl};
use crate::controllers::{DriftEvaluator, Guard};
use crate::infer::Inference;
use crate::lifecycle::ModelManager;
use crate::outcomes::Outcomes;
use crate::predlog::{CloseReport, PredictionLog};
use crate::repository::Loader;
use crate::routing::{Router, Snapshot};
use crate::server::ServerConfig;
use crate::server::connections::Listener;
use crate::server::{auth, grpc, http, metrics_routes, serve_until_drained};
use crate::sources::Sources;

/// A running sluice: its bound addresses and the means to stop it.
pub struct Server {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub models: Arc<ModelManager>,
    pub log: PredictionLog,
    drain: Duration,
    shutdown: watch::Sender<bool>,
    /// When shutdown was asked for: the prediction log's flush shares the drain deadline.
    stopping_since: std::sync::Mutex<Option<std::time::Instant>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Loads the repository, binds every listener and starts serving. Returns once the server
    /// is ready; ports given as 0 are resolved in the returned addresses.
    pub async fn start(mut config: Config) -> anyhow::Result<Server> {
        let listeners = Listeners::bind(&config.server).await?;
        let (http_addr, grpc_addr, metrics_addr) = listeners.addresses()?;
        let metrics = crate::telemetry::metrics::install();
        // The model sources say which folder the loader reads: a bucket's local cache, or the
        // repository folder itself.
        let (sources, local) = Sources::build(&config.repository, &config.registry)
            .map_err(|e| anyhow::anyhow!("model sources: {e}"))?;
        config.repository.path = local;
        if sources.owns_repository() {
            // The bucket's source polls the bucket; its cache needs no folder poller.
            config.repository.poll_interval = None;
        }
        let sources = Arc::new(sources);
        let core = Core::build(&config)?;
        // The one place that decides "single node or fleet": everything that changes models
        // holds this control and never asks which one it is.
        let fleet_brokers = config
            .fleet
            .brokers_or(&config.prediction_log.kafka.brokers)
            .to_string();
        let fleet =
            crate::fleet::Fleet::connect(&config.fleet, &fleet_brokers, Arc::clone(&core.models))
                .map_err(|e| anyhow::anyhow!("fleet: {e}"))?;
        let control: Arc<dyn ModelControl> = match &fleet {
            Some((fleet, _)) => Arc::clone(fleet) as Arc<dyn ModelControl>,
            None => Arc::new(LocalControl::new(Arc::clone(&core.models))),
        };
        let guard = Arc::new(Guard::new(
            Arc::clone(&core.router),
            Arc::clone(&control),
            Arc::clone(&core.inference),
            config.rollout.clone(),
        ));
        let (shutdown, _) = watch::channel(false);
        let ready = Arc::new(AtomicBool::new(false));
        let handlers = Handlers {
            core: &core,
            control: &control,
            guard: &guard,
            ready: &ready,
            sources: &sources,
        };
        let (mut tasks, grpc_health) =
            serve_listeners(&config, listeners, metrics, handlers, &shutdown).await?;
        sources.prepare(&core.models).await;
        match fleet {
            // A replica of a fleet serves what the control topic says, so it reads the topic
            // before it reports ready.
            Some((fleet, mut feed)) => {
                fleet
                    .catch_up(&mut feed)
                    .await
                    .map_err(|e| anyhow::anyhow!("fleet: {e}"))?;
                tasks.push(tokio::spawn(fleet.run(feed, shutdown.subscribe())));
            }
            None => core.models.load_all().await?,
        }
        tasks.extend(sources.start(&core.models, &control, &shutdown));
        tasks.extend(start_controllers(
            &config,
            &core.models,
            control,
            guard,
            &core.inference,
            &shutdown,
        )?);
        ready.store(true, Ordering::Release);
        grpc::set_serving(&grpc_health, true).await;
        tracing::info!(
            http = %http_addr,
            grpc = %grpc_addr,
            metrics = %metrics_addr,
            "sluice is ready"
        );
        Ok(Server {
            http_addr,
            grpc_addr,
            metrics_addr,
            models: core.models,
            log: core.log,
            drain: config.server.drain_timeout,
            shutdown,
            stopping_since: std::sync::Mutex::new(None),
            tasks,
        })
    }

    /// Stops accepting connections; in-flight requests finish (bounded by the drain timeout).
    pub fn shutdown(&self) {
        if let Ok(mut since) = self.stopping_since.lock() {
            since.get_or_insert_with(std::time::Instant::now);
        }
        let _ = self.shutdown.send(true);
    }

    /// Waits until every listener has drained, then flushes the prediction log within what
    /// is left of the drain timeout (at least a second).
    pub async fn wait(self) -> CloseReport {
        for task in self.tasks {
            let _ = task.await;
        }
        let since = self
            .stopping_since
            .lock()
            .ok()
            .and_then(|s| *s)
            .unwrap_or_else(std::time::Instant::now);
        let left = self
            .drain
            .saturating_sub(since.elapsed())
            .max(Duration::from_secs(1));
        let log = self.log;
        tokio::task::spawn_blocking(move || log.close(left))
            .await
            .unwrap_or_default()
    }
}

/// The three listening sockets, bound before anything else so that a taken port fails fast.
struct Listeners {
    http: TcpListener,
    grpc: TcpListener,
    metrics: TcpListener,
}

impl Listeners {
    async fn bind(server: &ServerConfig) -> anyhow::Result<Listeners> {
        let host: std::net::IpAddr = server
            .host
            .parse()
            .with_context(|| format!("server.host '{}'", server.host))?;
        let bind = |port: u16, what: &'static str| async move {
            TcpListener::bind((host, port))
                .await
                .with_context(|| format!("cannot bind {what} port {port}"))
        };
        Ok(Listeners {
            http: bind(server.http_port, "HTTP").await?,
            grpc: bind(server.grpc_port, "gRPC").await?,
            metrics: bind(server.metrics_port, "metrics").await?,
        })
    }

    fn addresses(&self) -> std::io::Result<(SocketAddr, SocketAddr, SocketAddr)> {
        Ok((
            self.http.local_addr()?,
            self.grpc.local_addr()?,
            self.metrics.local_addr()?,
        ))
    }
}

/// What serves requests: the routing state, the models, the inference path and the log.
struct Core {
    router: Arc<Router>,
    models: Arc<ModelManager>,
    inference: Arc<Inference>,
    log: PredictionLog,
}

impl Core {
    fn build(config: &Config) -> anyhow::Result<Core> {
        let loader = Arc::new(Loader::new(
            &config.runtime,
            &config.repository,
            &config.drift,
        ));
        match loader.runtimes().ort_status() {
            Ok(path) => tracing::info!(library = %path.display(), "ONNX Runtime available"),
            Err(reason) => {
                tracing::info!(%reason, "ONNX Runtime unavailable; trees and tract serve the models")
            }
        }
        let log = PredictionLog::start(&config.prediction_log)
            .map_err(|e| anyhow::anyhow!("prediction log: {e}"))?;
        let router = Arc::new(Router::new(Snapshot::default()));
        let models = Arc::new(
            ModelManager::new(loader, Arc::clone(&router), log.clone())
                .with_rollout_defaults(config.rollout.clone()),
        );
        let shadow = crate::infer::shadow::Shadower::start(
            config.traffic.shadow_workers,
            config.traffic.shadow_queue,
            config.server.request_timeout,
            log.clone(),
        );
        let mut inference = Inference::new(
            Arc::clone(&router),
            config.server.request_timeout,
            shadow,
            log.clone(),
            config.server.max_concurrent_requests,
        )
        .with_max_response_size(
            usize::try_from(config.server.max_response_size).unwrap_or(usize::MAX),
        );
        // With the join off there is no index, no quality controller and no outcomes topic,
        // and the outcomes endpoint says so (404) instead of counting every record unknown.
        if config.outcomes.enabled {
            let outcomes = Outcomes::new(config.outcomes.clone(), log.clone());
            inference = inference.with_outcomes(Arc::new(outcomes));
        }
        let inference = Arc::new(inference);
        Ok(Core {
            router,
            models,
            inference,
            log,
        })
    }
}

/// What the listeners' handlers share.
struct Handlers<'a> {
    core: &'a Core,
    control: &'a Arc<dyn ModelControl>,
    guard: &'a Arc<Guard>,
    ready: &'a Arc<AtomicBool>,
    sources: &'a Arc<Sources>,
}

/// Starts the HTTP, metrics and gRPC listeners, each with the connection limits and the drain.
async fn serve_listeners(
    config: &Config,
    listeners: Listeners,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    handlers: Handlers<'_>,
    shutdown: &watch::Sender<bool>,
) -> anyhow::Result<(Vec<JoinHandle<()>>, tonic_health::server::HealthReporter)> {
    let Handlers {
        core,
        control,
        guard,
        ready,
        sources,
    } = handlers;
    let admin_auth =
        auth::AdminAuth::from_config(&config.admin).context("cannot read admin.token_file")?;
    let grpc = grpc::GrpcListener::new(grpc::GrpcState {
        inference: Arc::clone(&core.inference),
        models: Arc::clone(&core.models),
        ready: Arc::clone(ready),
        max_message_size: usize::try_from(config.server.max_body_size).unwrap_or(usize::MAX),
        auth: admin_auth.clone(),
        control: Arc::clone(control),
    })
    .await;
    let grpc_health = grpc.health();
    let app = http::HttpService::new(Arc::new(http::HttpState {
        inference: Arc::clone(&core.inference),
        models: Arc::clone(&core.models),
        ready: Arc::clone(ready),
        max_body_size: usize::try_from(config.server.max_body_size).unwrap_or(usize::MAX),
        max_response_size: usize::try_from(config.server.max_response_size).unwrap_or(usize::MAX),
        body_read_timeout: config.server.connections.body_read_timeout,
        auth: admin_auth,
        outcomes_auth: auth::AdminAuth::for_outcomes(&config.outcomes)
            .context("cannot read outcomes.token_file")?,
        guard: Arc::clone(guard),
        control: Arc::clone(control),
        sources: Arc::clone(sources),
    }));
    let drain = config.server.drain_timeout;
    let limits = &config.server.connections;
    let mut tasks = vec![
        tokio::spawn(serve_until_drained(
            listeners.http,
            Listener {
                name: "http",
                service: app,
                http2_only: false,
                config: limits.clone(),
            },
            shutdown.subscribe(),
            drain,
        )),
        tokio::spawn(serve_until_drained(
            listeners.metrics,
            Listener {
                name: "metrics",
                service: metrics_routes(metrics),
                http2_only: false,
                config: limits.clone(),
            },
            shutdown.subscribe(),
            drain,
        )),
    ];

    tasks.push(tokio::spawn(grpc.serve(
        listeners.grpc,
        limits.clone(),
        config.server.request_timeout,
        shutdown.subscribe(),
        drain,
    )));

    Ok((tasks, grpc_health))
}

/// The controllers that run beside the listeners: the repository poller (when polling is on),
/// the rollout guard and the drift evaluator (when drift is on).
fn start_controllers(
    config: &Config,
    models: &Arc<ModelManager>,
    control: Arc<dyn ModelControl>,
    guard: Arc<Guard>,
    inference: &Inference,
    shutdown: &watch::Sender<bool>,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let mut tasks = Vec::new();
    if let Some(interval) = config.repository.poll_interval {
        tasks.push(tokio::spawn(crate::controllers::poll(
            Arc::clone(models),
            control,
            interval,
            shutdown.subscribe(),
        )));
    }
    tasks.push(tokio::spawn(guard.run(shutdown.subscribe())));
    if let Some(outcomes) = inference.outcomes() {
        let quality = crate::controllers::quality::QualityController::new(
            Arc::clone(models.router()),
            Arc::clone(outcomes),
            models.events().clone(),
        );
        tasks.push(tokio::spawn(quality.run(shutdown.subscribe())));
        if !config.outcomes.kafka.topic.is_empty() {
            let brokers = match config.outcomes.kafka.brokers.as_str() {
                "" => config.prediction_log.kafka.brokers.as_str(),
                b => b,
            };
            let stop = Arc::new(AtomicBool::new(false));
            crate::outcomes::kafka::consume(Arc::clone(outcomes), brokers, Arc::clone(&stop))
                .map_err(|e| anyhow::anyhow!("outcomes topic: {e}"))?;
            let forwarder = crate::outcomes::kafka::Forwarder::connect(outcomes, brokers)
                .map_err(|e| anyhow::anyhow!("outcomes topic: {e}"))?;
            outcomes.forward_unknown(forwarder);
            let mut stopped = shutdown.subscribe();
            tasks.push(tokio::spawn(async move {
                let _ = stopped.wait_for(|s| *s).await;
                stop.store(true, Ordering::Relaxed);
            }));
        }
    }
    if config.drift.enabled {
        tasks.push(spawn_drift_evaluator(config, models, shutdown)?);
    }
    Ok(tasks)
}

/// Starts the drift evaluator. Alerts go to the log and to every sink here: the webhook when
/// one is configured (further sinks, e.g. the events topic, are added to this list).
fn spawn_drift_evaluator(
    config: &Config,
    models: &ModelManager,
    shutdown: &watch::Sender<bool>,
) -> anyhow::Result<JoinHandle<()>> {
    use crate::drift::{DriftAlertSink, WebhookSink};
    let mut sinks: Vec<Arc<dyn DriftAlertSink>> = vec![Arc::new(models.events().clone())];
    if let Some(url) = &config.drift.webhook_url {
        let webhook = WebhookSink::new(url, config.drift.webhook_timeout)
            .context("cannot build the drift webhook client")?;
        sinks.push(Arc::new(webhook));
    }
    let evaluator = DriftEvaluator::new(Arc::clone(models.router()), &config.drift, sinks);
    Ok(tokio::spawn(
        evaluator.run(config.drift.evaluate_interval, shutdown.subscribe()),
    ))
}
