//! A whole gateway deployment for the operator-facing tests: mosquitto, librdkafka's mock
//! cluster, and `sensorgate run` as a process with its metrics endpoint on a free port.

use std::path::PathBuf;
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use super::*;

/// A running gateway with its MQTT broker and Kafka; all stopped on drop.
pub struct Deployment {
    pub gateway: GatewayProcess,
    pub metrics_port: u16,
    pub config: PathBuf,
    pub kafka: MockCluster<'static, DefaultProducerContext>,
    pub mqtt: Mosquitto,
    pub dir: tempfile::TempDir,
}

impl Deployment {
    /// Starts everything and waits until the gateway's MQTT source has subscribed.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Like [`Deployment::start`], with the downlink of [`write_downlink_config`] (commands from
    /// [`COMMANDS_TOPIC`] to the MQTT broker), and waits until it is connected too.
    pub fn start_with_downlink() -> Self {
        let deployment = Self::start_with(true);
        deployment.wait_metric("the downlink to connect", |m| {
            metric(m, "sensorgate_downlink_up", Some(("downlink", "commands"))) == 1.0
        });
        deployment
    }

    fn start_with(downlink: bool) -> Self {
        let mqtt = Mosquitto::start_with_inflight(0);
        let mut topics = vec!["sensors.readings", "sensors.readings.DLQ"];
        let commands_dlq = format!("{COMMANDS_TOPIC}.DLQ");
        if downlink {
            topics.extend([COMMANDS_TOPIC, commands_dlq.as_str()]);
        }
        let kafka = kafka(&topics);
        let dir = tempfile::tempdir().unwrap();
        let brokers = kafka.bootstrap_servers();
        let config = if downlink {
            write_downlink_config(dir.path(), &mqtt.url(), &brokers, "", "")
        } else {
            write_config(dir.path(), &mqtt.url(), &brokers, "")
        };
        let metrics_port = free_port();
        with_metrics(&config, metrics_port);
        let gateway = GatewayProcess::spawn(&config, &dir.path().join("gateway.log"), &[]);
        let deployment = Self {
            gateway,
            metrics_port,
            config,
            kafka,
            mqtt,
            dir,
        };
        deployment.wait_metric("the MQTT source to subscribe", |m| {
            metric(m, "sensorgate_source_up", Some(("source", "local"))) == 1.0
        });
        deployment
    }

    /// The gateway's `/metrics`, parsed.
    pub fn scrape(&self) -> prometheus_parse::Scrape {
        scrape(self.metrics_port)
    }

    /// Polls `/metrics` until `cond` holds (60 s at most).
    pub fn wait_metric(&self, what: &str, cond: impl Fn(&prometheus_parse::Scrape) -> bool) {
        wait_until(Duration::from_secs(60), what, || {
            std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).is_ok()
                && cond(&self.scrape())
        });
    }

    /// `host:port` of the metrics endpoint.
    pub fn metrics_address(&self) -> String {
        format!("127.0.0.1:{}", self.metrics_port)
    }
}
