//! `sensorgate top` against a real gateway process: in a tmux terminal of 80×24 under load (the
//! figures on the screen agree with `/metrics`, a Kafka outage shows as DOWN, `d` lists the
//! latest dead letters, `q` quits), and as plain text when stdout is not a terminal.

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const LONG: Duration = Duration::from_secs(60);

/// The first screen line that starts with `start` (after the block's padding).
fn line<'a>(screen: &'a str, start: &str) -> &'a str {
    screen
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(start))
        .unwrap_or("")
}

/// The first `N/s` figure of a line, `None` while it shows `-/s`.
fn rate_in(line: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_suffix("/s"))
        .and_then(|v| v.parse().ok())
}

/// The number after `word` in a line (thousands separators removed).
fn number_after(line: &str, word: &str) -> Option<f64> {
    let mut words = line.split_whitespace();
    words.find(|w| *w == word)?;
    words.next()?.replace(',', "").parse().ok()
}

/// The outbox's bytes as shown after `N records` (`300.3 KiB`): the figure and its unit.
fn bytes_in(line: &str) -> Option<(f64, f64)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "records")?;
    let unit = match *words.get(at + 2)? {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        _ => return None,
    };
    Some((words.get(at + 1)?.parse().ok()?, unit))
}

/// An age shown as `4.9 s` or `42 s` after `word`, in seconds.
fn seconds_after(line: &str, word: &str) -> Option<f64> {
    let mut words = line.split_whitespace();
    words.find(|w| *w == word)?;
    let value = words.next()?.parse().ok()?;
    (words.next()? == "s").then_some(value)
}

/// The Kafka section's first line.
fn kafka_line(screen: &str) -> &str {
    let mut lines = screen.lines();
    lines.find(|l| l.contains(" Kafka "));
    lines.next().map_or("", str::trim)
}

fn rate(
    m0: &prometheus_parse::Scrape,
    m1: &prometheus_parse::Scrape,
    seconds: f64,
    f: impl Fn(&prometheus_parse::Scrape) -> f64,
) -> f64 {
    (f(m1) - f(m0)) / seconds
}

#[test]
fn top_in_a_terminal_agrees_with_metrics_and_shows_a_kafka_outage() {
    if !have_tool("tmux", "sensorgate top in a terminal") {
        return;
    }
    let d = Deployment::start();
    let load = simulate(&d.mqtt.url(), 200, 10, 0.1);
    d.wait_metric("readings to flow to Kafka", |m| {
        metric_sum(m, "sensorgate_kafka_deliveries_total") >= 400.0
    });
    let config = d.config.to_str().unwrap();
    let tmux = Tmux::start(80, 24, &gateway_binary(), &["top", "--config", config]);
    assert_eq!(tmux.size(), (80, 24));
    let screen = tmux.wait_for(LONG, "rates on the screen", |s| {
        rate_in(line(s, "valid")).is_some_and(|r| r > 0.0)
    });
    for title in [
        " Sources ",
        " Validation ",
        " Outbox ",
        " Kafka ",
        " Dead letters ",
    ] {
        assert!(screen.contains(title), "{title} on the screen:\n{screen}");
    }
    assert!(line(&screen, "local").contains("mqtt"), "{screen}");
    assert!(
        !screen.contains(" Downlink "),
        "no downlink section without downlink metrics:\n{screen}"
    );

    // The rates shown are those of /metrics over the same seconds (the load is steady, so a
    // three-second window and top's one-second one agree within 30%).
    let received =
        |m: &prometheus_parse::Scrape| metric_sum(m, "sensorgate_readings_received_total");
    let valid = |m: &prometheus_parse::Scrape| metric(m, "sensorgate_readings_valid_total", None);
    let dead = |m: &prometheus_parse::Scrape| metric_sum(m, "sensorgate_dead_letters_total");
    let delivered =
        |m: &prometheus_parse::Scrape| metric_sum(m, "sensorgate_kafka_deliveries_total");
    let mut figures = String::new();
    let mut load_rate = 0.0;
    wait_until(LONG, "top's rates to agree with /metrics", || {
        let (m0, t0) = (d.scrape(), Instant::now());
        std::thread::sleep(Duration::from_millis(2500));
        let screen = tmux.capture();
        let (m1, t1) = (d.scrape(), Instant::now());
        let seconds = t1.duration_since(t0).as_secs_f64();
        let pairs = [
            (
                "local",
                rate_in(line(&screen, "local")),
                rate(&m0, &m1, seconds, received),
            ),
            (
                "valid",
                rate_in(line(&screen, "valid")),
                rate(&m0, &m1, seconds, valid),
            ),
            (
                "dead letters",
                rate_in(line(&screen, "dead letters")),
                rate(&m0, &m1, seconds, dead),
            ),
            (
                "kafka delivered",
                rate_in(kafka_line(&screen)),
                rate(&m0, &m1, seconds, delivered),
            ),
        ];
        load_rate = pairs[0].2;
        figures = format!("{pairs:?}\n{screen}");
        pairs.iter().all(|(_, shown, expected)| {
            shown.is_some_and(|s| (s - expected).abs() <= 0.3 * expected + 2.0)
        })
    });
    eprintln!(
        "rates (shown, from /metrics): {}",
        figures.lines().next().unwrap_or("")
    );

    // Kafka goes away: the screen shows DOWN. The condition is waited on with a deadline; how
    // long it took is a figure, printed (top scrapes every second, so about one interval after
    // /metrics says so), not asserted.
    let outage = Instant::now();
    d.kafka.broker_down(-1).unwrap();
    d.wait_metric("the gateway to report Kafka down", |m| {
        metric(m, "sensorgate_kafka_up", None) == 0.0
    });
    let reported = Instant::now();
    let screen = tmux.wait_for(LONG, "Kafka DOWN on the screen", |s| {
        kafka_line(s).starts_with("DOWN")
    });
    eprintln!(
        "Kafka down: in /metrics {:.2} s after the outage began, on the screen {:.2} s after that \
         ({:.2} s in all)",
        reported.duration_since(outage).as_secs_f64(),
        reported.elapsed().as_secs_f64(),
        outage.elapsed().as_secs_f64()
    );
    assert!(kafka_line(&screen).contains("delivered"), "{screen}");
    // The breaker and the retries on the screen are /metrics' (top is at most one scrape behind).
    tmux.wait_for(LONG, "the circuit and the retries of /metrics", |s| {
        let m = d.scrape();
        let open = metric(&m, "sensorgate_kafka_circuit_open", None) == 1.0;
        let retries = metric(&m, "sensorgate_kafka_retries_total", None);
        line(s, "circuit").starts_with(if open {
            "circuit open"
        } else {
            "circuit closed"
        }) && number_after(kafka_line(s), "retries") == Some(retries)
    });

    // The backlog grows; the depth shown trails /metrics by at most one interval's readings.
    d.wait_metric("a backlog", |m| {
        metric(m, "sensorgate_outbox_records", None) >= 400.0
    });
    let screen = tmux.capture();
    let actual = metric(&d.scrape(), "sensorgate_outbox_records", None);
    eprintln!("the screen during the outage:\n{screen}");
    let shown = number_after(line(&screen, "depth"), "depth").expect("a depth on the screen");
    assert!(
        shown <= actual && actual - shown <= 2.5 * load_rate + 50.0,
        "depth shown {shown}, /metrics {actual} (load {load_rate:.0}/s):\n{screen}"
    );

    assert!(
        screen.contains("depth, 2 min") && screen.contains('█'),
        "the depth sparkline, at its peak now:\n{screen}"
    );

    // Load stops: once the depth holds still, the screen shows exactly it and the bytes, an
    // oldest age close to /metrics' (top's figures are at most one interval old), and no
    // readings/s.
    drop(load);
    let mut still = 0.0;
    wait_until(LONG, "the outbox depth to hold still", || {
        let a = metric(&d.scrape(), "sensorgate_outbox_records", None);
        std::thread::sleep(Duration::from_millis(1500));
        still = metric(&d.scrape(), "sensorgate_outbox_records", None);
        a == still
    });
    let bytes = metric(&d.scrape(), "sensorgate_outbox_bytes", None);
    let screen = tmux.wait_for(LONG, "the exact depth and bytes, no readings", |s| {
        let depth = line(s, "depth");
        let oldest = metric(
            &d.scrape(),
            "sensorgate_outbox_oldest_record_age_seconds",
            None,
        );
        number_after(depth, "depth") == Some(still)
            && bytes_in(depth).is_some_and(|(shown, unit)| (shown - bytes / unit).abs() <= 0.051)
            && seconds_after(depth, "oldest").is_some_and(|shown| (shown - oldest).abs() <= 2.0)
            && rate_in(line(s, "local")) == Some(0.0)
    });
    eprintln!("the screen once the backlog holds still:\n{screen}");

    // Kafka back: UP, and the outbox drains to 0.
    d.kafka.broker_up(-1).unwrap();
    tmux.wait_for(LONG, "Kafka UP and the outbox empty", |s| {
        kafka_line(s).starts_with("UP") && number_after(line(s, "depth"), "depth") == Some(0.0)
    });

    // `d`: the latest dead letters, newest first, as the admin socket lists them.
    let newest = Command::new(gateway_binary())
        .args(["dlq", "list", "--limit", "1", "--json", "--config", config])
        .output()
        .unwrap();
    let newest: serde_json::Value = serde_json::from_slice(&newest.stdout).unwrap();
    let newest_id = newest[0]["id"].as_u64().expect("a dead letter").to_string();
    tmux.send_keys("d");
    let screen = tmux.wait_for(LONG, "the dead-letter table", |s| {
        s.contains("Latest dead letters")
    });
    let first_row = screen
        .lines()
        .skip_while(|l| !l.contains("first error"))
        .nth(1)
        .unwrap_or("");
    assert!(
        first_row.trim_start().starts_with(&newest_id),
        "newest dead letter {newest_id} first:\n{screen}"
    );
    assert!(
        first_row.contains("schema") || first_row.contains("not-json"),
        "{screen}"
    );
    tmux.send_keys("d");
    tmux.wait_for(LONG, "the overview again", |s| s.contains(" Outbox "));

    // `q` quits with status 0 and leaves the alternate screen.
    tmux.send_keys("q");
    assert_eq!(tmux.wait_exit(Duration::from_secs(10)), 0);
    assert!(!tmux.capture().contains(" Outbox "), "{}", tmux.capture());
}

#[test]
fn top_prints_plain_text_when_stdout_is_not_a_terminal() {
    let d = Deployment::start();
    let mut messages: Vec<_> = (0..30)
        .map(|s| ("sensors/d1/reading".to_owned(), reading("d1", s)))
        .collect();
    messages.extend((0..5).map(|_| ("sensors/d1/reading".to_owned(), b"not json".to_vec())));
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(publish_all(d.mqtt.port, "sensor-top", messages));
    d.wait_metric("every record delivered", |m| {
        metric_sum(m, "sensorgate_kafka_deliveries_total") == 35.0
    });
    let config = d.config.to_str().unwrap();
    let top = |args: &[&str]| {
        let out = Command::new(gateway_binary())
            .arg("top")
            .args(args)
            .args(["--interval", "300ms"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // --once: the snapshot, every figure from /metrics.
    let (code, text, err) = top(&["--once", "--config", config]);
    assert_eq!(code, Some(0), "{err}");
    eprintln!("{text}");
    assert!(
        text.starts_with("sensorgate top: gateway test-gw (0.1.0) via 127.0.0.1:"),
        "{text}"
    );
    let local = line(&text, "local");
    assert!(local.contains("mqtt") && local.contains("UP"), "{text}");
    assert_eq!(number_after(local, "total"), Some(35.0), "{text}");
    assert_eq!(rate_in(local), Some(0.0), "nothing arrives now: {text}");
    assert_eq!(number_after(line(&text, "valid "), "total"), Some(30.0));
    assert_eq!(
        number_after(line(&text, "dead letters"), "total"),
        Some(5.0)
    );
    assert!(text.contains("not-json 0.0/s (5)"), "{text}");
    assert_eq!(number_after(line(&text, "depth"), "depth"), Some(0.0));
    assert!(line(&text, "depth").contains("of 64.0 MiB (0%)"), "{text}");
    assert!(line(&text, "UP").contains("delivered"), "Kafka up: {text}");
    assert!(
        line(&text, "5 in the local store").contains("RSS"),
        "{text}"
    );

    // On a pipe: a heading, the column heads, then one line per interval.
    let mut child = ChildGuard(
        clean_command(gateway_binary())
            .args(["top", "--interval", "300ms", "--config", config])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = std::io::BufReader::new(child.0.stdout.take().unwrap()).lines();
    let mut next = || lines.next().unwrap().unwrap();
    assert!(next().starts_with("sensorgate top: gateway test-gw via 127.0.0.1:"));
    let head = next();
    assert!(
        head.starts_with("time") && head.contains("readings/s"),
        "{head}"
    );
    for _ in 0..2 {
        let row = next();
        let columns: Vec<&str> = row.split_whitespace().collect();
        // bytes is two words ("12.0 KiB"), oldest too ("0.0 s").
        assert_eq!(columns.len(), 12, "{row}");
        assert_eq!(
            columns[1..4],
            ["0.0", "0.0", "0.0"],
            "no readings now: {row}"
        );
        assert_eq!(columns[4], "0", "outbox depth: {row}");
        assert_eq!(columns[9], "UP", "{row}");
        assert_eq!(columns[11], "5", "dead letters in the store: {row}");
    }
    drop(child);

    // A configuration without a metrics endpoint: the admin socket's figures, no rates.
    let no_metrics = d.dir.path().join("no-metrics.toml");
    let text = std::fs::read_to_string(&d.config).unwrap().replace(
        &format!("listen = \"{}\"", d.metrics_address()),
        "listen = \"\"",
    );
    std::fs::write(&no_metrics, text).unwrap();
    let (code, text, err) = top(&["--once", "--config", no_metrics.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(text.contains("rates need the metrics endpoint"), "{text}");
    assert!(
        text.contains("admin.sock"),
        "read through the admin socket: {text}"
    );
    assert_eq!(
        number_after(line(&text, "depth"), "depth"),
        Some(0.0),
        "{text}"
    );
    assert!(line(&text, "UP").contains("delivered"), "Kafka up: {text}");
    assert!(text.contains("5 in the local store"), "{text}");

    // Nobody answers: exit 1 naming the endpoint; no configuration and no --metrics: exit 2.
    let port = free_port();
    let (code, _, err) = top(&[
        "--once",
        "--metrics",
        &format!("127.0.0.1:{port}"),
        "--config",
        "/nonexistent.toml",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("metrics endpoint 127.0.0.1:{port}:")),
        "{err}"
    );
    let (code, _, err) = top(&["--once", "--config", "/nonexistent.toml"]);
    assert_eq!(code, Some(2), "{err}");
}

#[test]
fn top_shows_a_configured_downlink_as_its_metrics_have_it() {
    let d = Deployment::start_with_downlink();
    let mut commands: Vec<(String, Vec<u8>)> = (0..20)
        .map(|seq| ("dev-1".to_owned(), command("dev-1", seq)))
        .collect();
    commands.push(("dev-1".to_owned(), b"not json".to_vec()));
    tokio::runtime::Runtime::new().unwrap().block_on(produce(
        &d.kafka.bootstrap_servers(),
        COMMANDS_TOPIC,
        &commands,
    ));
    d.wait_metric("the commands done and committed", |m| {
        metric_sum(m, "sensorgate_downlink_commands_total") == 21.0
            && metric_sum(m, "sensorgate_downlink_consumer_lag") == 0.0
    });
    let out = Command::new(gateway_binary())
        .args(["top", "--once", "--interval", "300ms", "--config"])
        .arg(&d.config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    eprintln!("{text}");
    let mut lines = text.lines().map(str::trim);
    assert!(lines.any(|l| l == "downlink"), "a downlink section: {text}");
    let row = lines.next().unwrap_or("");
    assert!(row.starts_with("commands") && row.contains("UP"), "{text}");
    assert_eq!(rate_in(row), Some(0.0), "nothing is sent now: {text}");
    assert_eq!(number_after(row, "lag"), Some(0.0), "{text}");
    assert_eq!(number_after(row, "retries"), Some(0.0), "{text}");
}
