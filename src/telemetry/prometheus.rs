//! Every metric name, and the Prometheus text exposition (format 0.0.4) of a [`Snapshot`].
//! Names are prefixed `sensorgate_`, carry their unit, and counters end in `_total`; the
//! process's own figures use the `process_*` names every client library uses.
//!
//! Per-source and per-topic families list every source and topic the gateway knows of in each
//! of them (0 until the first event), so that `rate()` and alerts see a counter from its first
//! increment and a source that never reconnected still has a reconnect counter.
//!
//! `packaging/grafana/sensorgate.json`, `packaging/prometheus/sensorgate.rules.yml` and
//! `sensorgate top` read these names: `tests/monitoring.rs` evaluates every dashboard query
//! against a real Prometheus, so renaming one here fails the build.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::downlink::DownlinkSnapshot;
use super::process::ProcessStats;
use super::{Snapshot, LATENCY_BUCKETS};
use crate::outbox::QueueStats;

/// What the exposition needs besides the counters.
#[derive(Debug, Clone, Copy)]
pub struct Gauges {
    /// Outbox depth, bytes, oldest record, DLQ size.
    pub queue: QueueStats,
    /// The outbox's bound, `[queue] max_bytes`.
    pub max_bytes: u64,
    /// Now, in ms since the epoch (for ages).
    pub now_ms: u64,
    /// The outbox policy, for the drop counter's label.
    pub policy: &'static str,
    /// The process's memory, CPU, descriptors.
    pub process: ProcessStats,
}

struct Out(String);

impl Out {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn value(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.head(name, kind, help);
        self.value(name, &[], value);
    }
    fn map<'a>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (&'a String, u64)>,
    ) {
        self.head(name, kind, help);
        for (key, value) in values {
            self.value(name, &[(label, key)], value);
        }
    }
    fn optional(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        value: Option<impl std::fmt::Display>,
    ) {
        if let Some(value) = value {
            self.single(name, kind, help, value);
        }
    }
}

/// `values` for every key of `keys`, 0 where it has none.
fn every(keys: &[&String], values: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    keys.iter()
        .map(|k| ((*k).clone(), values.get(*k).copied().unwrap_or(0)))
        .collect()
}

/// The union of some maps' keys, sorted.
fn union<'a, V: 'a>(maps: impl IntoIterator<Item = &'a BTreeMap<String, V>>) -> Vec<&'a String> {
    let mut all: Vec<&String> = maps.into_iter().flat_map(|m| m.keys()).collect();
    all.sort();
    all.dedup();
    all
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders every metric.
pub fn render(s: &Snapshot, g: &Gauges) -> String {
    let mut o = Out(String::with_capacity(8192));
    // Serial sources keep their own counters: they join the per-source families here.
    let mut sources_up = s.sources_up.clone();
    let mut reconnects = s.reconnects_by_source.clone();
    for (name, port) in &s.serial {
        sources_up.insert(name.clone(), port.open);
        *reconnects.entry(name.clone()).or_default() += port.reconnects;
    }
    let mut sources = union([&s.received, &reconnects]);
    sources.extend(sources_up.keys());
    sources.sort();
    sources.dedup();
    let topics = union([&s.deliveries_by_topic, &s.failures_by_topic]);
    o.head("sensorgate_build_info", "gauge", "Build information.");
    o.value(
        "sensorgate_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );

    o.map(
        "sensorgate_readings_received_total",
        "counter",
        "Readings received, by source.",
        "source",
        every(&sources, &s.received).iter().map(|(k, v)| (k, *v)),
    );
    o.single(
        "sensorgate_readings_valid_total",
        "counter",
        "Readings that passed validation.",
        s.valid,
    );
    o.map(
        "sensorgate_dead_letters_total",
        "counter",
        "Dead letters, by reason.",
        "reason",
        s.dead_letters.iter().map(|(k, v)| (k, *v)),
    );

    o.single(
        "sensorgate_outbox_records",
        "gauge",
        "Records waiting in the outbox.",
        g.queue.depth,
    );
    o.single(
        "sensorgate_outbox_bytes",
        "gauge",
        "Bytes of the outbox's segment files.",
        g.queue.bytes,
    );
    o.single(
        "sensorgate_outbox_max_bytes",
        "gauge",
        "The outbox's bound ([queue] max_bytes); when reached, the policy applies.",
        g.max_bytes,
    );
    let age = g
        .queue
        .oldest_received_ms
        .map_or(0.0, |ms| g.now_ms.saturating_sub(ms) as f64 / 1000.0);
    o.single(
        "sensorgate_outbox_oldest_record_age_seconds",
        "gauge",
        "Age of the oldest record waiting in the outbox (0 when empty).",
        age,
    );
    o.head(
        "sensorgate_outbox_dropped_total",
        "counter",
        "Records evicted from a full outbox, by policy.",
    );
    o.value(
        "sensorgate_outbox_dropped_total",
        &[("policy", g.policy)],
        s.dropped,
    );
    o.single(
        "sensorgate_outbox_dead_letters_dropped_total",
        "counter",
        "New dead letters dropped, not stored, because dead letters filled their share of the outbox (queue.dead_letter_share, drop-oldest).",
        s.dead_letters_dropped,
    );
    o.single(
        "sensorgate_dlq_evicted_total",
        "counter",
        "Dead letters evicted from the local store by [dlq] retention (oldest first).",
        s.dlq_evicted,
    );
    o.single(
        "sensorgate_outbox_commits_total",
        "counter",
        "Group commits of the outbox.",
        s.commits,
    );
    o.single(
        "sensorgate_outbox_committed_records_total",
        "counter",
        "Records made durable by group commits.",
        s.committed,
    );
    o.single(
        "sensorgate_outbox_corrupt_records_total",
        "counter",
        "Records lost to damage found in the outbox's segment files (each damage is logged).",
        s.outbox_corrupt_records,
    );
    o.single(
        "sensorgate_outbox_write_failing",
        "gauge",
        "1 while the outbox cannot be written (disk full or failing): readings are not acknowledged.",
        u8::from(s.outbox_write_failing),
    );
    o.single(
        "sensorgate_outbox_write_errors_total",
        "counter",
        "Group commits that failed to write or sync (each retried; none acknowledged).",
        s.outbox_write_errors,
    );
    o.single(
        "sensorgate_dlq_entries",
        "gauge",
        "Entries in the local dead-letter store.",
        g.queue.dead_letters,
    );

    o.map(
        "sensorgate_kafka_deliveries_total",
        "counter",
        "Records Kafka confirmed, by topic.",
        "topic",
        every(&topics, &s.deliveries_by_topic)
            .iter()
            .map(|(k, v)| (k, *v)),
    );
    o.map(
        "sensorgate_kafka_delivery_failures_total",
        "counter",
        "Transient delivery failures (retried from the outbox), by topic.",
        "topic",
        every(&topics, &s.failures_by_topic)
            .iter()
            .map(|(k, v)| (k, *v)),
    );
    o.head(
        "sensorgate_kafka_publish_latency_seconds",
        "histogram",
        "Time from handing a record to librdkafka to Kafka's confirmation.",
    );
    let h = &s.publish_latency;
    for (bound, count) in LATENCY_BUCKETS.iter().zip(&h.cumulative) {
        o.value(
            "sensorgate_kafka_publish_latency_seconds_bucket",
            &[("le", &bound.to_string())],
            count,
        );
    }
    o.value(
        "sensorgate_kafka_publish_latency_seconds_bucket",
        &[("le", "+Inf")],
        h.count,
    );
    o.value(
        "sensorgate_kafka_publish_latency_seconds_sum",
        &[],
        h.sum_seconds,
    );
    o.value(
        "sensorgate_kafka_publish_latency_seconds_count",
        &[],
        h.count,
    );
    o.single(
        "sensorgate_kafka_retries_total",
        "counter",
        "Retry rounds after a backoff.",
        s.retries,
    );
    o.single(
        "sensorgate_kafka_circuit_open",
        "gauge",
        "1 while the publisher waits out a backoff after failures.",
        u8::from(s.circuit_open),
    );
    o.single(
        "sensorgate_kafka_up",
        "gauge",
        "0 while librdkafka reports every broker down.",
        u8::from(!s.kafka_down),
    );
    o.single(
        "sensorgate_kafka_producer_restarts_total",
        "counter",
        "Producers recreated after a fatal error.",
        s.producer_restarts,
    );
    o.single(
        "sensorgate_kafka_last_delivery_timestamp_seconds",
        "gauge",
        "When Kafka last confirmed a record (0 = never).",
        s.last_delivery_ms as f64 / 1000.0,
    );

    o.map(
        "sensorgate_source_reconnects_total",
        "counter",
        "Connection (MQTT) or device (serial) losses, by source.",
        "source",
        every(&sources, &reconnects).iter().map(|(k, v)| (k, *v)),
    );
    o.map(
        "sensorgate_mqtt_oversize_packets_total",
        "counter",
        "Packets an MQTT broker sent over the source's packet limit (max_payload plus header room); each dropped the connection.",
        "source",
        every(&sources, &s.oversize_by_source).iter().map(|(k, v)| (k, *v)),
    );
    o.map(
        "sensorgate_source_up",
        "gauge",
        "1 while a source is connected or its device is open.",
        "source",
        sources
            .iter()
            .map(|k| (*k, u64::from(sources_up.get(*k).copied().unwrap_or(false)))),
    );
    downlinks(&mut o, s);
    o.head(
        "sensorgate_schema_reloads_total",
        "counter",
        "SIGHUP reloads of routes and schemas, by result.",
    );
    o.value(
        "sensorgate_schema_reloads_total",
        &[("result", "ok")],
        s.reloads_ok,
    );
    o.value(
        "sensorgate_schema_reloads_total",
        &[("result", "failed")],
        s.reloads_failed,
    );

    let p = &g.process;
    o.optional(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        p.resident_bytes,
    );
    o.optional(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        p.virtual_bytes,
    );
    o.optional(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        p.cpu_seconds,
    );
    o.optional(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        p.open_fds,
    );
    o.optional(
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        p.max_fds,
    );
    o.optional(
        "process_threads",
        "gauge",
        "Number of OS threads.",
        p.threads,
    );
    o.optional(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        p.start_time_seconds,
    );
    o.0
}

/// A per-downlink family: name, type, help, and its value in a snapshot.
type DownlinkFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&DownlinkSnapshot) -> u64,
);

/// The downlinks' families (none when no downlink is configured).
fn downlinks(o: &mut Out, s: &Snapshot) {
    if s.downlinks.is_empty() {
        return;
    }
    o.head(
        "sensorgate_downlink_commands_total",
        "counter",
        "Downlink commands, by downlink and result: delivered (acknowledged by the MQTT broker), not-json, schema, no-target, expired (dead letters).",
    );
    for (name, d) in &s.downlinks {
        for (result, n) in &d.commands {
            o.value(
                "sensorgate_downlink_commands_total",
                &[("downlink", name), ("result", result)],
                n,
            );
        }
    }
    o.head(
        "sensorgate_downlink_consumer_lag",
        "gauge",
        "Commands in Kafka not yet committed by the downlink (high watermark minus committed offset), by partition.",
    );
    for (name, d) in &s.downlinks {
        for (partition, lag) in &d.lag {
            o.value(
                "sensorgate_downlink_consumer_lag",
                &[("downlink", name), ("partition", &partition.to_string())],
                lag,
            );
        }
    }
    let per_downlink: [DownlinkFamily; 5] = [
        (
            "sensorgate_downlink_retries_total",
            "counter",
            "Reconnects and probes of the MQTT broker after a backoff.",
            |d| d.retries,
        ),
        (
            "sensorgate_downlink_circuit_open",
            "gauge",
            "1 while the downlink's breaker is open or half-open (consumption paused or probing).",
            |d| u64::from(d.circuit_open),
        ),
        (
            "sensorgate_downlink_up",
            "gauge",
            "1 while the downlink's MQTT connection is up.",
            |d| u64::from(d.up),
        ),
        (
            "sensorgate_downlink_paused",
            "gauge",
            "1 while the downlink's partitions are paused (breaker open: nothing is fetched).",
            |d| u64::from(d.paused),
        ),
        (
            "sensorgate_downlink_held_commands",
            "gauge",
            "Commands taken from Kafka and not yet committed (at most max_in_flight).",
            |d| d.held,
        ),
    ];
    for (metric, kind, help, value) in per_downlink {
        o.head(metric, kind, help);
        for (name, d) in &s.downlinks {
            o.value(metric, &[("downlink", name)], value(d));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Reason;
    use crate::telemetry::Stats;
    use std::time::Duration;

    #[test]
    fn exposition_has_every_family_once_with_labels() {
        let stats = Stats::default();
        stats.received("local");
        stats.valid();
        stats.dead_letter(Reason::Schema);
        stats.delivered("sensors.readings", false, Duration::from_millis(3));
        stats.source_up("local", true);
        stats.dlq_evicted(3);
        let downlink = stats.downlink("commands");
        downlink.command(crate::telemetry::downlink::CommandResult::Delivered);
        downlink.command(crate::telemetry::downlink::CommandResult::NoTarget);
        downlink.set_lag([(2, 17)].into_iter().collect());
        downlink.set_up(true);
        let text = render(&stats.snapshot(), &gauges());
        assert!(text.contains("sensorgate_readings_received_total{source=\"local\"} 1\n"));
        assert!(text.contains("sensorgate_dead_letters_total{reason=\"schema\"} 1\n"));
        assert!(text.contains("sensorgate_dlq_evicted_total 3\n"));
        for line in [
            "sensorgate_downlink_commands_total{downlink=\"commands\",result=\"delivered\"} 1\n",
            "sensorgate_downlink_commands_total{downlink=\"commands\",result=\"no-target\"} 1\n",
            "sensorgate_downlink_commands_total{downlink=\"commands\",result=\"expired\"} 0\n",
            "sensorgate_downlink_consumer_lag{downlink=\"commands\",partition=\"2\"} 17\n",
            "sensorgate_downlink_retries_total{downlink=\"commands\"} 0\n",
            "sensorgate_downlink_circuit_open{downlink=\"commands\"} 0\n",
            "sensorgate_downlink_up{downlink=\"commands\"} 1\n",
        ] {
            assert!(text.contains(line), "{line}");
        }
        assert!(text.contains("sensorgate_kafka_deliveries_total{topic=\"sensors.readings\"} 1\n"));
        assert!(text.contains("sensorgate_kafka_publish_latency_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("sensorgate_kafka_publish_latency_seconds_bucket{le=\"0.0025\"} 0\n"));
        let mut families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        let total = families.len();
        families.sort();
        families.dedup();
        assert_eq!(families.len(), total, "each family declared once");
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split(' ').nth(2).unwrap();
            let kind = line.split(' ').nth(3).unwrap();
            assert!(
                name.starts_with("sensorgate_") || name.starts_with("process_"),
                "{name}"
            );
            assert_eq!(kind == "counter", name.ends_with("_total"), "{name}");
        }
        assert!(text.contains("sensorgate_outbox_max_bytes 67108864\n"));
        assert!(text.contains("process_resident_memory_bytes 4096\n"));
        assert!(text.contains("process_start_time_seconds 1700000000.5\n"));
        assert!(
            !text.contains("process_max_fds"),
            "a figure /proc did not give is left out"
        );
    }

    fn gauges() -> Gauges {
        Gauges {
            queue: QueueStats::default(),
            max_bytes: 64 << 20,
            now_ms: 0,
            policy: "drop-oldest",
            process: ProcessStats {
                resident_bytes: Some(4096),
                start_time_seconds: Some(1_700_000_000.5),
                ..ProcessStats::default()
            },
        }
    }

    #[test]
    fn every_known_source_and_topic_has_each_per_source_and_per_topic_series() {
        let stats = Stats::default();
        stats.source_up("local", true);
        stats.mqtt_reconnect("flaky");
        stats.delivered("sensors.readings", false, Duration::from_millis(3));
        stats.delivery_failed("sensors.readings.DLQ");
        let port = stats.serial_port("uno");
        port.set_open(true);
        port.reconnected();
        let text = render(&stats.snapshot(), &gauges());
        for line in [
            "sensorgate_readings_received_total{source=\"flaky\"} 0",
            "sensorgate_readings_received_total{source=\"local\"} 0",
            "sensorgate_readings_received_total{source=\"uno\"} 0",
            "sensorgate_source_reconnects_total{source=\"local\"} 0",
            "sensorgate_source_reconnects_total{source=\"flaky\"} 1",
            "sensorgate_source_reconnects_total{source=\"uno\"} 1",
            "sensorgate_source_up{source=\"local\"} 1",
            "sensorgate_source_up{source=\"flaky\"} 0",
            "sensorgate_source_up{source=\"uno\"} 1",
            "sensorgate_kafka_deliveries_total{topic=\"sensors.readings.DLQ\"} 0",
            "sensorgate_kafka_delivery_failures_total{topic=\"sensors.readings\"} 0",
            "sensorgate_kafka_delivery_failures_total{topic=\"sensors.readings.DLQ\"} 1",
        ] {
            assert!(text.contains(&format!("{line}\n")), "{line} in:\n{text}");
        }
        port.set_open(false);
        let text = render(&stats.snapshot(), &gauges());
        assert!(text.contains("sensorgate_source_up{source=\"uno\"} 0\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
