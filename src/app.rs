//! Starts the pipeline's tasks, supervises them and shuts them down in order.
//!
//! Start: open the outbox, compile the rules, then spawn the committer, the publisher and one
//! task per source (MQTT broker or serial port; a serial device that is absent does not stop
//! the start, its task keeps trying to open it) and per downlink. The tasks are in three groups,
//! each stopped by its own token (every task gets a child of it, as in tansu's broker):
//! - ingest: the sources and the downlinks, in a `JoinSet`;
//! - the pipeline: the committer and the publisher, each on a thread of its own;
//! - services: the metrics endpoint, the admin API and the sd_notify watchdog, in a `JoinSet`.
//!
//! Stop (SIGTERM/SIGINT, or a task failing): ingest stops taking readings and flushes its
//! acknowledgements; the committer commits its last batch and ends when the last source dropped
//! its sender; the publisher gets [`DELIVERY_GRACE`] to see in-flight deliveries confirmed;
//! then the services stop and the outbox is flushed. Whatever was not confirmed stays in the
//! outbox for the next start.

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminError};
use crate::config::{Config, ConfigError};
use crate::downlink::{replay::Replayer, Downlink, DownlinkError};
use crate::ingest::mqtt::{MqttError, MqttSource};
use crate::ingest::serial::{SerialError, SerialSource};
use crate::outbox::committer::{AckReceiver, AckSinks, Committer, Handoff, Submitter};
use crate::outbox::{Outbox, OutboxError};
use crate::pipeline::{Classifier, Rules, RulesError};
use crate::publish::{PublishError, Publisher};
use crate::telemetry::events::{Event as _, Reloaded};
use crate::telemetry::http::{self, Endpoint};
use crate::telemetry::{notify, Stats};

/// How long in-flight Kafka deliveries may take to be confirmed at shutdown.
pub const DELIVERY_GRACE: Duration = Duration::from_secs(5);
/// Most bytes of committed frames waiting in memory for the publisher (beyond that it reads
/// them from disk).
const HANDOFF_BYTES: usize = 1 << 20;
/// How long sources and the committer may take to wind down.
const INGEST_GRACE: Duration = Duration::from_secs(10);

/// Why the gateway could not start or had to stop.
#[derive(Debug, Error)]
pub enum AppError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Routes or schemas failed to build.
    #[error("{path}: {source}")]
    Rules {
        /// The configuration file.
        path: std::path::PathBuf,
        /// What failed.
        source: RulesError,
    },
    /// The outbox failed.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The publisher failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// An MQTT source failed.
    #[error("MQTT source `{source_name}`: {error}")]
    Mqtt {
        /// The source.
        source_name: String,
        /// What failed.
        error: MqttError,
    },
    /// The metrics endpoint cannot listen.
    #[error("metrics.listen {addr}: {source}")]
    Metrics {
        /// The configured address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A serial source could not be set up (a device that is absent or goes away is retried,
    /// never an error).
    #[error("serial source `{source_name}`: {error}")]
    Serial {
        /// The source.
        source_name: String,
        /// What failed.
        error: SerialError,
    },
    /// The admin socket cannot be served.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// A downlink could not start or failed.
    #[error(transparent)]
    Downlink(#[from] DownlinkError),
    /// A task panicked or was aborted.
    #[error("task failed: {0}")]
    Task(String),
}

/// A running gateway.
#[derive(Debug)]
pub struct Handle {
    config_path: std::path::PathBuf,
    stop: CancellationToken,
    outbox: Arc<Outbox>,
    stats: Arc<Stats>,
    classifier: Arc<Classifier>,
    supervisor: tokio::sync::Mutex<Option<tokio::task::JoinHandle<Result<(), AppError>>>>,
}

impl Handle {
    /// The outbox (depth, dead letters).
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }
    /// Live counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }
    /// The classifier (for reloading rules).
    pub fn classifier(&self) -> &Arc<Classifier> {
        &self.classifier
    }
    /// Re-reads the configuration file and swaps in its routes and schemas (SIGHUP). The new set
    /// is compiled and checked first; on any error the old set stays, and the error is logged
    /// and counted. Other sections (sources, queue, Kafka) take effect at the next restart; the
    /// Kafka section is checked too (see below).
    pub fn reload(&self) -> Result<(), AppError> {
        notify::reloading();
        // The Kafka section takes effect at the next start, but is checked now (its property
        // files re-read, librdkafka's own checks), so a broken one is reported at the reload
        // that brought it, not at the next restart.
        let result = Config::load(&self.config_path)
            .map_err(AppError::from)
            .and_then(|config| {
                let rules = checked_rules(&config)?;
                crate::publish::kafka::producer_config_check(&config)
                    .map_err(|e| AppError::Publish(PublishError::Producer(e)))?;
                Ok(rules)
            });
        let outcome = match result {
            Ok(rules) => {
                let routes = rules.router.routes().len();
                self.classifier.replace_rules(rules);
                Reloaded::Done { routes }.emit(&self.stats);
                Ok(())
            }
            Err(e) => {
                Reloaded::Failed { error: &e }.emit(&self.stats);
                Err(e)
            }
        };
        notify::ready();
        outcome
    }
    /// A token that stops the gateway when cancelled (for signal handlers).
    pub fn stopper(&self) -> CancellationToken {
        self.stop.clone()
    }
    /// Whether the gateway has stopped (after [`Handle::stop`] or a failure).
    pub fn is_finished(&self) -> bool {
        match self.supervisor.try_lock() {
            Ok(task) => task.as_ref().is_none_or(|t| t.is_finished()),
            // Someone is waiting on it: it was running when they started.
            Err(_) => false,
        }
    }
    /// Asks the gateway to stop.
    pub fn stop(&self) {
        self.stop.cancel();
    }
    /// Stops and waits until everything is committed and the publisher finished.
    pub async fn shutdown(self) -> Result<(), AppError> {
        self.stop.cancel();
        self.wait().await
    }
    /// Waits until the gateway stopped (by [`Handle::stop`] or a failure).
    pub async fn wait(self) -> Result<(), AppError> {
        self.finished().await
    }
    /// Like [`Handle::wait`] for a shared handle; only the first caller gets the outcome.
    pub async fn finished(&self) -> Result<(), AppError> {
        let Some(task) = self.supervisor.lock().await.take() else {
            return Ok(());
        };
        task.await.map_err(|e| AppError::Task(e.to_string()))?
    }
}

/// Checks the configuration and compiles its routes and schemas (at start and on reload).
fn checked_rules(config: &Config) -> Result<Rules, AppError> {
    let problems = config.problems();
    if !problems.is_empty() {
        return Err(ConfigError::Invalid {
            path: config.path.clone(),
            problems,
        }
        .into());
    }
    Rules::build(config).map_err(|source| AppError::Rules {
        path: config.path.clone(),
        source,
    })
}

/// A checked configuration with its routes and schemas compiled: [`prepare`]d, ready to
/// [`start_prepared`].
#[derive(Debug)]
pub struct Prepared {
    config: Config,
    rules: Rules,
    downlink_rules: Vec<crate::downlink::rules::Rules>,
}

/// Validates the configuration and compiles its routes and schemas, the downlinks' too.
///
/// The daemon calls this before its runtime starts any thread: checking a schema against its
/// meta-schema takes about 10 MiB for a moment, on a thread of its own
/// (`vendor/jsonschema/PATCHES.md`), and while no other thread exists that thread gets a malloc
/// arena of its own, which gives the memory back when it ends. Later (a reload) it may share
/// an arena with long-lived allocations, which then keeps the freed memory for the next check.
pub fn prepare(config: Config) -> Result<Prepared, AppError> {
    let rules = checked_rules(&config)?;
    let downlink_rules = (0..config.downlinks.len())
        .map(|i| Downlink::rules(&config, i))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Prepared {
        config,
        rules,
        downlink_rules,
    })
}

/// Validates the configuration, opens the outbox, compiles the rules and starts every task.
pub fn start(config: Config) -> Result<Handle, AppError> {
    start_prepared(prepare(config)?)
}

/// Opens the outbox and starts every task of a [`prepare`]d configuration.
pub fn start_prepared(prepared: Prepared) -> Result<Handle, AppError> {
    let Prepared {
        config,
        rules,
        downlink_rules,
    } = prepared;
    let stats = Arc::new(Stats::default());
    let outbox = Arc::new(Outbox::open(
        &config.gateway.state_dir,
        &config.queue,
        &config.dlq,
        stats.clone(),
    )?);
    let classifier = Arc::new(Classifier::new(&config, rules, stats.clone()));
    let handoff = Arc::new(Handoff::new(HANDOFF_BYTES));
    let publisher = Publisher::new(
        outbox.clone(),
        handoff.clone(),
        config.kafka.clone(),
        config.retry.clone(),
        config.gateway.id.clone(),
        stats.clone(),
    );
    for warning in config.kafka.security_warnings() {
        tracing::warn!("INSECURE: {warning}");
    }
    // Fail fast on a producer configuration librdkafka rejects.
    publisher.create_producer()?;
    let mut sinks = AckSinks::default();
    let mqtt_sinks: Vec<_> = config.mqtt.iter().map(|_| sinks.register()).collect();
    let downlink_sinks: Vec<_> = config.downlinks.iter().map(|_| sinks.register()).collect();
    let (committer, submit) = Committer::new(outbox.clone(), &config.queue, sinks, handoff.clone());
    // Downlinks (commands from Kafka to devices): their dead letters go through the committer.
    let downlinks = (downlink_sinks.into_iter().zip(downlink_rules).enumerate())
        .map(|(i, (sink, rules))| Downlink::new(&config, i, rules, submit.clone(), sink, &stats))
        .collect::<Result<Vec<_>, _>>()?;
    let replayer = Replayer::daemon(downlinks.iter().map(|d| (d.name().to_owned(), d.replays())));

    let metrics = if config.metrics.listen.is_empty() {
        None
    } else {
        let bind = std::net::TcpListener::bind(&config.metrics.listen)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(tokio::net::TcpListener::from_std);
        Some(bind.map_err(|source| AppError::Metrics {
            addr: config.metrics.listen.clone(),
            source,
        })?)
    };
    let admin_path = config.gateway.admin_socket_path();
    let admin_listener = admin::server::bind(&admin_path)?;
    let stop = CancellationToken::new();
    let queued = outbox.stats();
    tracing::info!(
        gateway = %config.gateway.id,
        state_dir = %config.gateway.state_dir.display(),
        outbox_depth = queued.depth,
        dead_letters = queued.dead_letters,
        mqtt_sources = config.mqtt.len(),
        serial_sources = config.serial.len(),
        routes = config.routes.len(),
        "Starting sensorgate"
    );
    // The services beside the pipeline: one JoinSet, one token, stopped last (the admin API
    // and the metrics stay up while the outbox drains at shutdown).
    let services_stop = CancellationToken::new();
    let mut services = JoinSet::new();
    if let Some(listener) = metrics {
        let endpoint = Arc::new(Endpoint {
            stats: stats.clone(),
            outbox: outbox.clone(),
            policy: config.queue.when_full.as_str(),
        });
        tracing::info!(listen = %config.metrics.listen, "Serving /metrics, /healthz and /readyz");
        services.spawn(http::serve(listener, endpoint, services_stop.child_token()));
    }
    tracing::info!(path = %admin_path.display(), "Serving the admin API");
    let backend = Arc::new(
        admin::Backend::daemon(
            outbox.clone(),
            classifier.clone(),
            stats.clone(),
            submit.clone(),
        )
        .with_downlinks(replayer),
    );
    services.spawn(admin::server::serve(
        admin_listener,
        admin_path,
        backend.clone(),
        services_stop.child_token(),
    ));
    let config_path = config.path.clone();
    let tasks = Tasks {
        committer,
        submit,
        mqtt_sinks,
        publisher,
        handoff,
        admin: backend,
        services: (services, services_stop),
        downlinks,
    };
    let supervisor = tokio::spawn(supervise(
        config,
        outbox.clone(),
        classifier.clone(),
        stats.clone(),
        tasks,
        stop.clone(),
    ));
    Ok(Handle {
        config_path,
        stop,
        outbox,
        stats,
        classifier,
        supervisor: tokio::sync::Mutex::new(Some(supervisor)),
    })
}

/// Runs `f` on a thread of its own (the committer and the publisher block on I/O and on
/// librdkafka); the future resolves with its result, or an error if it panicked.
fn thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> impl std::future::Future<Output = Result<T, AppError>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _ = tx.send(f());
        });
    let name = name.to_owned();
    async move {
        spawned.map_err(|e| AppError::Task(format!("cannot start thread {name}: {e}")))?;
        rx.await
            .map_err(|_| AppError::Task(format!("thread {name} panicked")))
    }
}

/// What [`start`] prepared for the supervisor.
struct Tasks {
    committer: Committer,
    submit: Submitter,
    mqtt_sinks: Vec<(u16, AckReceiver)>,
    publisher: Publisher,
    handoff: Arc<Handoff>,
    admin: Arc<admin::Backend>,
    /// The metrics endpoint, the admin API and (once ready) the sd_notify watchdog.
    services: (JoinSet<()>, CancellationToken),
    downlinks: Vec<Downlink>,
}

async fn supervise(
    config: Config,
    outbox: Arc<Outbox>,
    classifier: Arc<Classifier>,
    stats: Arc<Stats>,
    tasks: Tasks,
    stop: CancellationToken,
) -> Result<(), AppError> {
    let Tasks {
        committer,
        submit,
        mqtt_sinks,
        publisher,
        handoff,
        admin,
        services: (mut services, services_stop),
        downlinks,
    } = tasks;
    let ingest_stop = CancellationToken::new();
    let publish_stop = CancellationToken::new();
    let mut committer = Box::pin(thread("sg-committer", move || committer.run()));
    let mut publisher = {
        let stop = publish_stop.clone();
        Box::pin(thread("sg-publisher", move || {
            publisher.run(stop, DELIVERY_GRACE)
        }))
    };

    let mut sources = JoinSet::new();
    for (mqtt, sink) in config.mqtt.iter().zip(mqtt_sinks) {
        let name = mqtt.name.clone();
        let source = MqttSource::new(
            mqtt.clone(),
            &config.gateway.id,
            classifier.clone(),
            submit.clone(),
            sink,
            stats.clone(),
        );
        let token = ingest_stop.child_token();
        sources.spawn(async move {
            source.run(token).await.map_err(|error| AppError::Mqtt {
                source_name: name,
                error,
            })
        });
    }
    for serial in &config.serial {
        let name = serial.name.clone();
        let source = SerialSource::new(serial.clone(), classifier.clone(), submit.clone(), &stats);
        let token = ingest_stop.child_token();
        sources.spawn(async move {
            match source {
                Ok(source) => {
                    source.run(token).await;
                    Ok(())
                }
                Err(error) => Err(AppError::Serial {
                    source_name: name,
                    error,
                }),
            }
        });
    }
    // Downlinks stop with the sources: they hold a submitter for their dead letters.
    for downlink in downlinks {
        let token = ingest_stop.child_token();
        sources.spawn(async move { downlink.run(token).await.map_err(AppError::from) });
    }
    drop(submit);
    // The publisher thread beats once it runs; until then it counts as alive.
    stats.heartbeats.publisher_beat();
    // The outbox is open and every source has started.
    notify::ready();
    services.spawn(notify::run(
        stats.clone(),
        outbox.clone(),
        services_stop.child_token(),
    ));

    let mut failure: Option<AppError> = None;
    let mut publisher_done = false;
    let mut committer_done = false;
    tokio::select! {
        _ = stop.cancelled() => tracing::info!("Stopping: no new readings, committing the outbox"),
        Some(result) = sources.join_next() => {
            failure = Some(match result {
                Ok(Ok(())) => AppError::Task("a source stopped unexpectedly".into()),
                Ok(Err(e)) => e,
                Err(e) => AppError::Task(e.to_string()),
            });
        }
        result = &mut committer => {
            // Only a write error that needs the database reopened ends it early: stop, and
            // let systemd start the service again (nothing it held was acknowledged).
            committer_done = true;
            failure = Some(match result {
                Ok(Ok(())) => AppError::Task("the committer stopped unexpectedly".into()),
                Ok(Err(e)) => e.into(),
                Err(e) => e,
            });
        }
        result = &mut publisher => {
            publisher_done = true;
            failure = Some(match result {
                Ok(Ok(())) => AppError::Task("the publisher stopped unexpectedly".into()),
                Ok(Err(e)) => e.into(),
                Err(e) => AppError::Task(e.to_string()),
            });
        }
    }
    if let Some(e) = &failure {
        tracing::error!(error = %e, "A pipeline task failed; shutting down");
    }
    notify::stopping();

    ingest_stop.cancel();
    // Replays from the admin API go through the committer too: no new ones from here on.
    admin.close();
    let ingest_done = async {
        while let Some(result) = sources.join_next().await {
            if let Ok(Err(e)) = result {
                tracing::error!(error = %e, "Source failed while stopping");
            }
        }
        if !committer_done {
            match committer.await {
                Ok(Err(e)) => tracing::error!(error = %e, "Committer failed"),
                Err(e) => tracing::error!(error = %e, "Committer thread failed"),
                Ok(Ok(())) => {}
            }
        }
    };
    if tokio::time::timeout(INGEST_GRACE, ingest_done)
        .await
        .is_err()
    {
        tracing::warn!("Sources or the committer did not stop in time; unacknowledged readings will be redelivered");
    }
    publish_stop.cancel();
    handoff.wake();
    if !publisher_done {
        match publisher.await {
            Ok(Err(e)) => tracing::error!(error = %e, "Publisher failed while stopping"),
            Err(e) => tracing::error!(error = %e, "Publisher task failed"),
            Ok(Ok(())) => {}
        }
    }
    // The admin API stays up while the outbox drains; it removes its socket file when it ends.
    services_stop.cancel();
    while let Some(result) = services.join_next().await {
        if let Err(e) = result {
            tracing::error!(error = %e, "A service task failed while stopping");
        }
    }
    outbox.flush()?;
    let left = outbox.stats();
    tracing::info!(outbox_depth = left.depth, "Stopped");
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
