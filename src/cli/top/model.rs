//! What `top` shows, computed from two successive scrapes of `/metrics` (rates are the
//! difference of counters over the time between the scrapes) or, when the gateway serves no
//! metrics, from the admin socket's `queue-stats` (no rates then). Pure: no I/O, so the figures
//! are tested here and the screen only lays them out.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use super::scrape::Exposition;
use crate::admin::QueueReport;

/// How many depth samples the sparkline keeps (two minutes at the default interval).
pub const HISTORY: usize = 120;

/// What the configuration file tells about the gateway (nothing when `top` runs without it).
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// `[gateway] id`.
    pub gateway: Option<String>,
    /// Source name → `mqtt` or `serial`.
    pub source_kinds: BTreeMap<String, &'static str>,
    /// `[queue] max_bytes` (the gateway also exports it).
    pub max_bytes: Option<u64>,
}

/// A counter's total and its rate per second over the last interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counter {
    /// The counter's value.
    pub total: f64,
    /// Per second since the previous scrape; `None` on the first one.
    pub rate: Option<f64>,
}

/// One source.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceView {
    /// Its name.
    pub name: String,
    /// `mqtt` or `serial`, when the configuration says.
    pub kind: Option<&'static str>,
    /// Connected (MQTT) or open (serial).
    pub up: Option<bool>,
    /// Readings received.
    pub readings: Counter,
    /// Connection or device losses.
    pub reconnects: f64,
}

/// The state of a link: Kafka, or a downlink's consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Working.
    Up,
    /// Reachable, but waiting out a backoff after failures (circuit open).
    Backoff,
    /// Unreachable.
    Down,
    /// Not reported.
    Unknown,
}

impl LinkState {
    fn of(up: Option<f64>, circuit_open: Option<f64>) -> Self {
        match (up, circuit_open) {
            (Some(0.0), _) => Self::Down,
            (_, Some(c)) if c != 0.0 => Self::Backoff,
            (Some(_), _) => Self::Up,
            (None, _) => Self::Unknown,
        }
    }

    /// As shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "UP",
            Self::Backoff => "BACKOFF",
            Self::Down => "DOWN",
            Self::Unknown => "?",
        }
    }
}

/// The outbox.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutboxView {
    /// Records waiting.
    pub records: Option<f64>,
    /// Bytes of its segment files.
    pub bytes: Option<f64>,
    /// Its bound.
    pub max_bytes: Option<f64>,
    /// Age of the oldest waiting record, seconds (0 when empty).
    pub oldest_seconds: Option<f64>,
    /// Records evicted under `drop-oldest`.
    pub dropped: Counter,
    /// The policy when full, from the drop counter's label.
    pub policy: Option<String>,
    /// Records lost to damaged segment files.
    pub corrupt: f64,
}

/// Kafka.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaView {
    /// Up, backing off or down.
    pub state: LinkState,
    /// The publisher waits out a backoff after failures.
    pub circuit_open: bool,
    /// Records Kafka confirmed.
    pub delivered: Counter,
    /// Transient delivery failures.
    pub failures: Counter,
    /// Retry rounds.
    pub retries: Counter,
    /// Seconds since Kafka last confirmed a record; `None` if never.
    pub last_delivery_ago: Option<f64>,
    /// Producers recreated after fatal errors.
    pub producer_restarts: f64,
}

/// One downlink (Kafka → MQTT commands).
#[derive(Debug, Clone, PartialEq)]
pub struct DownlinkView {
    /// Its name.
    pub name: String,
    /// Consuming, backing off (MQTT side failing) or down.
    pub state: LinkState,
    /// Commands delivered to MQTT.
    pub delivered: Counter,
    /// Commands that became dead letters (not JSON, schema, no target, expired).
    pub rejected: Counter,
    /// Consumer lag over every partition.
    pub lag: Option<f64>,
    /// Retries.
    pub retries: Counter,
}

/// Everything on the screen.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// `sensorgate_build_info{version}`.
    pub version: Option<String>,
    /// Per source, sorted by name.
    pub sources: Vec<SourceView>,
    /// Readings that passed validation.
    pub valid: Counter,
    /// Dead letters of every reason.
    pub dead_letters: Counter,
    /// Per reason, only reasons seen.
    pub dead_by_reason: Vec<(String, Counter)>,
    /// The outbox.
    pub outbox: OutboxView,
    /// Outbox depth, oldest first, one per scrape.
    pub depth_history: Vec<u64>,
    /// Kafka.
    pub kafka: KafkaView,
    /// Downlinks; empty when none is configured (the gateway exports no downlink metrics).
    pub downlinks: Vec<DownlinkView>,
    /// Entries in the local dead-letter store.
    pub dlq_entries: Option<f64>,
    /// Dead letters evicted by retention.
    pub dlq_evicted: Option<f64>,
    /// The process's resident memory, bytes.
    pub memory_bytes: Option<f64>,
    /// CPU use, in cores.
    pub cpu: Option<f64>,
    /// Whether rates are available (the metrics endpoint answered twice).
    pub from_metrics: bool,
}

/// A scrape and when it was taken.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// When.
    pub at: Instant,
    /// What the gateway served.
    pub metrics: Exposition,
}

/// Successive scrapes: the previous one (for rates) and the depth history.
#[derive(Debug, Default)]
pub struct Tracker {
    previous: Option<Scrape>,
    depth: VecDeque<u64>,
}

impl Tracker {
    /// The view for a new scrape, which becomes the previous one.
    pub fn update(&mut self, scrape: Scrape, known: &Known) -> View {
        let view = view(&scrape, self.previous.as_ref(), known, &mut self.depth);
        self.previous = Some(scrape);
        view
    }

    /// A view from the admin socket's `queue stats` (the gateway serves no metrics).
    pub fn update_from_queue(&mut self, report: &QueueReport, known: &Known, now_ms: u64) -> View {
        push(&mut self.depth, report.queue.depth);
        let q = &report.queue;
        View {
            version: None,
            sources: Vec::new(),
            valid: Counter::default(),
            dead_letters: Counter::default(),
            dead_by_reason: Vec::new(),
            outbox: OutboxView {
                records: Some(q.depth as f64),
                bytes: Some(q.bytes as f64),
                max_bytes: known.max_bytes.map(|b| b as f64),
                oldest_seconds: Some(
                    q.oldest_received_ms
                        .map_or(0.0, |ms| now_ms.saturating_sub(ms) as f64 / 1000.0),
                ),
                ..OutboxView::default()
            },
            depth_history: self.depth.iter().copied().collect(),
            kafka: KafkaView {
                state: report.kafka.as_ref().map_or(LinkState::Unknown, |k| {
                    if k.down {
                        LinkState::Down
                    } else if k.circuit_open {
                        LinkState::Backoff
                    } else {
                        LinkState::Up
                    }
                }),
                circuit_open: report.kafka.as_ref().is_some_and(|k| k.circuit_open),
                delivered: Counter::default(),
                failures: Counter::default(),
                retries: Counter::default(),
                last_delivery_ago: report
                    .kafka
                    .as_ref()
                    .and_then(|k| k.last_delivery_ms)
                    .map(|ms| now_ms.saturating_sub(ms) as f64 / 1000.0),
                producer_restarts: 0.0,
            },
            downlinks: Vec::new(),
            dlq_entries: Some(q.dead_letters as f64),
            dlq_evicted: report.dlq_evicted.map(|n| n as f64),
            memory_bytes: None,
            cpu: None,
            from_metrics: false,
        }
    }
}

fn push(history: &mut VecDeque<u64>, depth: u64) {
    if history.len() == HISTORY {
        history.pop_front();
    }
    history.push_back(depth);
}

/// A counter's total now and its rate since `previous`; a counter that went down (the gateway
/// restarted) counts from 0.
fn counter(now: Option<f64>, previous: Option<f64>, seconds: Option<f64>) -> Counter {
    let total = now.unwrap_or(0.0);
    let rate = seconds.filter(|s| *s > 0.0).map(|s| {
        let before = previous.unwrap_or(0.0);
        let delta = if total >= before {
            total - before
        } else {
            total
        };
        delta / s
    });
    Counter { total, rate }
}

fn view(
    scrape: &Scrape,
    previous: Option<&Scrape>,
    known: &Known,
    depth: &mut VecDeque<u64>,
) -> View {
    let m = &scrape.metrics;
    let p = previous.map(|p| &p.metrics);
    let seconds = previous.map(|p| scrape.at.duration_since(p.at).as_secs_f64());
    let c = |now: Option<f64>, before: Option<f64>| counter(now, before, seconds);
    let total = |name: &str| c(m.sum(name), p.and_then(|p| p.sum(name)));

    let received = m.by("sensorgate_readings_received_total", "source");
    let received_before = p.map(|p| p.by("sensorgate_readings_received_total", "source"));
    let up = m.by("sensorgate_source_up", "source");
    let reconnects = m.by("sensorgate_source_reconnects_total", "source");
    let mut names: Vec<&String> = received.keys().chain(up.keys()).collect();
    names.sort();
    names.dedup();
    let sources = names
        .into_iter()
        .map(|name| SourceView {
            name: name.clone(),
            kind: known.source_kinds.get(name).copied(),
            up: up.get(name).map(|v| *v != 0.0),
            readings: c(
                received.get(name).copied(),
                received_before.as_ref().and_then(|b| b.get(name).copied()),
            ),
            reconnects: reconnects.get(name).copied().unwrap_or(0.0),
        })
        .collect();

    let reasons = m.by("sensorgate_dead_letters_total", "reason");
    let reasons_before = p.map(|p| p.by("sensorgate_dead_letters_total", "reason"));
    let dead_by_reason = reasons
        .iter()
        .filter(|(_, n)| **n > 0.0)
        .map(|(reason, n)| {
            let before = reasons_before.as_ref().and_then(|b| b.get(reason).copied());
            (reason.clone(), c(Some(*n), before))
        })
        .collect();

    let records = m.sum("sensorgate_outbox_records");
    if let Some(records) = records {
        push(depth, records as u64);
    }
    let outbox = OutboxView {
        records,
        bytes: m.sum("sensorgate_outbox_bytes"),
        max_bytes: m
            .sum("sensorgate_outbox_max_bytes")
            .or(known.max_bytes.map(|b| b as f64)),
        oldest_seconds: m.sum("sensorgate_outbox_oldest_record_age_seconds"),
        dropped: total("sensorgate_outbox_dropped_total"),
        policy: m.label_of("sensorgate_outbox_dropped_total", "policy"),
        corrupt: m
            .sum("sensorgate_outbox_corrupt_records_total")
            .unwrap_or(0.0),
    };

    let now_s = crate::record::now_ms() as f64 / 1000.0;
    let kafka = KafkaView {
        state: LinkState::of(
            m.sum("sensorgate_kafka_up"),
            m.sum("sensorgate_kafka_circuit_open"),
        ),
        circuit_open: m
            .sum("sensorgate_kafka_circuit_open")
            .is_some_and(|c| c != 0.0),
        delivered: total("sensorgate_kafka_deliveries_total"),
        failures: total("sensorgate_kafka_delivery_failures_total"),
        retries: total("sensorgate_kafka_retries_total"),
        last_delivery_ago: m
            .sum("sensorgate_kafka_last_delivery_timestamp_seconds")
            .filter(|t| *t > 0.0)
            .map(|t| (now_s - t).max(0.0)),
        producer_restarts: m
            .sum("sensorgate_kafka_producer_restarts_total")
            .unwrap_or(0.0),
    };

    View {
        version: m.label_of("sensorgate_build_info", "version"),
        sources,
        valid: total("sensorgate_readings_valid_total"),
        dead_letters: total("sensorgate_dead_letters_total"),
        dead_by_reason,
        outbox,
        depth_history: depth.iter().copied().collect(),
        kafka,
        downlinks: downlinks(m, p, seconds),
        dlq_entries: m.sum("sensorgate_dlq_entries"),
        dlq_evicted: m.sum("sensorgate_dlq_evicted_total"),
        memory_bytes: m.sum("process_resident_memory_bytes"),
        cpu: total("process_cpu_seconds_total").rate,
        from_metrics: true,
    }
}

/// The downlink metrics (issue 14): `sensorgate_downlink_up{downlink}`,
/// `sensorgate_downlink_circuit_open{downlink}`,
/// `sensorgate_downlink_commands_total{downlink,result}` (result `delivered`, `not-json`,
/// `schema`, `no-target`, `expired`), `sensorgate_downlink_consumer_lag{downlink,partition}`,
/// `sensorgate_downlink_retries_total{downlink}`. A gateway without downlinks exports none.
fn downlinks(m: &Exposition, p: Option<&Exposition>, seconds: Option<f64>) -> Vec<DownlinkView> {
    const UP: &str = "sensorgate_downlink_up";
    const CIRCUIT: &str = "sensorgate_downlink_circuit_open";
    const COMMANDS: &str = "sensorgate_downlink_commands_total";
    const LAG: &str = "sensorgate_downlink_consumer_lag";
    const RETRIES: &str = "sensorgate_downlink_retries_total";
    let mut names: Vec<String> = [UP, COMMANDS, LAG]
        .iter()
        .flat_map(|name| m.by(name, "downlink").into_keys())
        .collect();
    names.sort();
    names.dedup();
    let delivered =
        |e: &Exposition, d: &str| e.with(COMMANDS, &[("downlink", d), ("result", "delivered")]);
    let rejected = |e: &Exposition, d: &str| {
        e.with(COMMANDS, &[("downlink", d)])
            .map(|all| all - delivered(e, d).unwrap_or(0.0))
    };
    names
        .into_iter()
        .map(|d| {
            let one = |e: &Exposition, name: &str| e.with(name, &[("downlink", &d)]);
            DownlinkView {
                state: LinkState::of(one(m, UP), one(m, CIRCUIT)),
                delivered: counter(delivered(m, &d), p.and_then(|p| delivered(p, &d)), seconds),
                rejected: counter(rejected(m, &d), p.and_then(|p| rejected(p, &d)), seconds),
                lag: one(m, LAG),
                retries: counter(one(m, RETRIES), p.and_then(|p| one(p, RETRIES)), seconds),
                name: d,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn scrape(at: Instant, text: &str) -> Scrape {
        Scrape {
            at,
            metrics: Exposition::parse(text).unwrap(),
        }
    }

    #[test]
    fn rates_are_counter_differences_over_the_interval() {
        let t0 = Instant::now();
        let known = Known {
            source_kinds: [("local".to_owned(), "mqtt")].into(),
            ..Known::default()
        };
        let mut tracker = Tracker::default();
        let first = tracker.update(
            scrape(
                t0,
                "sensorgate_readings_received_total{source=\"local\"} 100\n\
                 sensorgate_source_up{source=\"local\"} 1\n\
                 sensorgate_readings_valid_total 90\n\
                 sensorgate_dead_letters_total{reason=\"schema\"} 10\n\
                 sensorgate_dead_letters_total{reason=\"not-json\"} 0\n\
                 sensorgate_outbox_records 5\n\
                 sensorgate_kafka_up 1\nsensorgate_kafka_circuit_open 0\n",
            ),
            &known,
        );
        assert_eq!(first.valid.rate, None, "no rate from one scrape");
        let second = tracker.update(
            scrape(
                t0 + Duration::from_secs(2),
                "sensorgate_readings_received_total{source=\"local\"} 500\n\
                 sensorgate_source_up{source=\"local\"} 0\n\
                 sensorgate_readings_valid_total 450\n\
                 sensorgate_dead_letters_total{reason=\"schema\"} 50\n\
                 sensorgate_dead_letters_total{reason=\"not-json\"} 0\n\
                 sensorgate_outbox_records 7\n\
                 sensorgate_kafka_up 0\nsensorgate_kafka_circuit_open 1\n",
            ),
            &known,
        );
        assert_eq!(
            second.sources,
            vec![SourceView {
                name: "local".into(),
                kind: Some("mqtt"),
                up: Some(false),
                readings: Counter {
                    total: 500.0,
                    rate: Some(200.0)
                },
                reconnects: 0.0,
            }]
        );
        assert_eq!(second.valid.rate, Some(180.0));
        assert_eq!(second.dead_letters.rate, Some(20.0));
        assert_eq!(
            second.dead_by_reason,
            vec![(
                "schema".to_owned(),
                Counter {
                    total: 50.0,
                    rate: Some(20.0)
                }
            )],
            "only reasons seen"
        );
        assert_eq!(second.depth_history, vec![5, 7]);
        assert_eq!(
            second.kafka.state,
            LinkState::Down,
            "down wins over backoff"
        );
        assert!(second.kafka.circuit_open);
    }

    #[test]
    fn a_counter_that_went_down_counts_from_zero() {
        assert_eq!(
            counter(Some(30.0), Some(1000.0), Some(1.0)),
            Counter {
                total: 30.0,
                rate: Some(30.0)
            }
        );
        assert_eq!(counter(Some(5.0), None, Some(0.0)).rate, None);
    }

    #[test]
    fn depth_history_is_bounded() {
        let mut tracker = Tracker::default();
        let t0 = Instant::now();
        let mut view = None;
        for i in 0..(HISTORY as u64 + 10) {
            view = Some(tracker.update(
                scrape(
                    t0 + Duration::from_secs(i),
                    &format!("sensorgate_outbox_records {i}\n"),
                ),
                &Known::default(),
            ));
        }
        let history = view.unwrap().depth_history;
        assert_eq!(history.len(), HISTORY);
        assert_eq!(history.last(), Some(&(HISTORY as u64 + 9)));
    }

    #[test]
    fn downlinks_appear_with_their_metrics() {
        let t0 = Instant::now();
        let text = |delivered: u64, schema: u64, retries: u64| {
            format!(
                "sensorgate_downlink_up{{downlink=\"commands\"}} 1\n\
                 sensorgate_downlink_circuit_open{{downlink=\"commands\"}} 0\n\
                 sensorgate_downlink_commands_total{{downlink=\"commands\",result=\"delivered\"}} {delivered}\n\
                 sensorgate_downlink_commands_total{{downlink=\"commands\",result=\"schema\"}} {schema}\n\
                 sensorgate_downlink_commands_total{{downlink=\"commands\",result=\"expired\"}} 1\n\
                 sensorgate_downlink_consumer_lag{{downlink=\"commands\",partition=\"0\"}} 3\n\
                 sensorgate_downlink_consumer_lag{{downlink=\"commands\",partition=\"1\"}} 4\n\
                 sensorgate_downlink_retries_total{{downlink=\"commands\"}} {retries}\n\
                 sensorgate_downlink_up{{downlink=\"alarms\"}} 0\n"
            )
        };
        let mut tracker = Tracker::default();
        assert!(tracker
            .update(scrape(t0, "sensorgate_kafka_up 1\n"), &Known::default())
            .downlinks
            .is_empty());
        let mut tracker = Tracker::default();
        tracker.update(scrape(t0, &text(10, 1, 0)), &Known::default());
        let view = tracker.update(
            scrape(t0 + Duration::from_secs(1), &text(15, 3, 2)),
            &Known::default(),
        );
        let [alarms, commands] = &view.downlinks[..] else {
            panic!("{:?}", view.downlinks)
        };
        assert_eq!(alarms.name, "alarms");
        assert_eq!(alarms.state, LinkState::Down);
        assert_eq!(commands.state, LinkState::Up);
        assert_eq!(commands.delivered.rate, Some(5.0));
        assert_eq!(
            commands.rejected,
            Counter {
                total: 4.0,
                rate: Some(2.0)
            }
        );
        assert_eq!(commands.lag, Some(7.0));
        assert_eq!(commands.retries.total, 2.0);
    }
}
