//! Logs: printed when `RUST_LOG` is set, captured for assertions.

/// Sends the gateway's logs to the test output when `RUST_LOG` is set.
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// What the gateway logged, captured for assertions (installed once per test binary by
/// [`capture_logs`]; `RUST_LOG` additionally prints the logs as [`init_logging`] does).
pub mod capture {
    use std::fmt::Debug;
    use std::sync::Mutex;

    use tracing::field::{Field, Visit};
    use tracing::{Event, Level, Subscriber};
    use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
    use tracing_subscriber::util::SubscriberInitExt;

    /// One log event at INFO or above.
    #[derive(Debug, Clone)]
    pub struct Logged {
        pub level: Level,
        pub source: Option<String>,
        pub message: String,
    }

    static EVENTS: Mutex<Vec<Logged>> = Mutex::new(Vec::new());

    #[derive(Default)]
    struct Fields {
        source: Option<String>,
        message: String,
    }

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
            match field.name() {
                "message" => self.message = format!("{value:?}"),
                "source" => self.source = Some(format!("{value:?}")),
                _ => {}
            }
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            match field.name() {
                "message" => self.message = value.to_owned(),
                "source" => self.source = Some(value.to_owned()),
                _ => {}
            }
        }
    }

    struct Capture;

    impl<S: Subscriber> Layer<S> for Capture {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            let mut fields = Fields::default();
            event.record(&mut fields);
            EVENTS.lock().unwrap().push(Logged {
                level: *event.metadata().level(),
                source: fields.source,
                message: fields.message,
            });
        }
    }

    /// Installs the capturing subscriber (once; later calls do nothing).
    pub fn capture_logs() {
        use tracing_subscriber::Layer as _;
        let print = std::env::var_os("RUST_LOG").is_some().then(|| {
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(tracing_subscriber::EnvFilter::from_default_env())
        });
        let _ = tracing_subscriber::registry()
            .with(Capture.with_filter(tracing_subscriber::filter::LevelFilter::INFO))
            .with(print)
            .try_init();
    }

    /// Every event logged for source `name` at WARN or ERROR.
    pub fn warnings_of(name: &str) -> Vec<Logged> {
        EVENTS
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.level <= Level::WARN && e.source.as_deref() == Some(name))
            .cloned()
            .collect()
    }

    /// Every event logged for source `name` at INFO or above.
    pub fn of(name: &str) -> Vec<Logged> {
        EVENTS
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.source.as_deref() == Some(name))
            .cloned()
            .collect()
    }
}
