//! The monitoring that ships with the package, tested with Debian's `prometheus` package:
//! the alert rules pass `promtool check rules` and their unit tests (`promtool test rules`),
//! and a real Prometheus server scraping a running gateway returns data for every query of the
//! Grafana dashboard and evaluates every rule without error, so a renamed metric fails here
//! rather than on an operator's screen.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const LONG: Duration = Duration::from_secs(60);

/// Metrics only a gateway with a `[[downlink]]` exports (every downlink series is labelled with
/// its downlink: commands by result, consumer lag, retries, circuit, up): the Downlink row's.
const DOWNLINK_ONLY: &[&str] = &["sensorgate_downlink_"];

fn packaging(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging")
        .join(path)
}

fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(packaging("grafana/sensorgate.json")).unwrap();
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every panel, rows' nested panels included, with the title of the row it is under.
fn panels(dashboard: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    let mut row = String::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            row = panel["title"].as_str().unwrap_or("").to_owned();
            for nested in panel["panels"].as_array().into_iter().flatten() {
                out.push((row.clone(), nested.clone()));
            }
        }
        out.push((row.clone(), panel.clone()));
    }
    out
}

/// Every `(row, panel title, expr)` of the dashboard.
fn queries(dashboard: &serde_json::Value) -> Vec<(String, String, String)> {
    panels(dashboard)
        .into_iter()
        .flat_map(|(row, p)| {
            let title = p["title"].as_str().unwrap_or("").to_owned();
            p["targets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |t| {
                    (
                        row.clone(),
                        title.clone(),
                        t["expr"]
                            .as_str()
                            .expect("every target has an expr")
                            .to_owned(),
                    )
                })
        })
        .collect()
}

/// What Grafana puts in for its variables: every gateway and instance, a rate window of a few
/// scrape intervals (Prometheus scrapes every second here), the time range.
fn as_grafana_sends(expr: &str) -> String {
    expr.replace("$gateway", ".*")
        .replace("$instance", ".*")
        .replace("$__rate_interval", "10s")
        .replace("$__range", "5m")
}

/// The metric names of ours (`sensorgate_*`, `process_*`) an expression or file mentions.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let word_start = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let rest = &text[i..];
        if word_start
            && ["sensorgate_", "process_"]
                .iter()
                .any(|p| rest.starts_with(p))
        {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.insert(rest[..end].to_owned());
            i += end;
        } else {
            i += 1;
        }
    }
    names
}

fn downlink_only(expr: &str) -> bool {
    DOWNLINK_ONLY.iter().any(|m| expr.contains(m))
}

#[test]
fn alert_rules_pass_promtool_and_every_alert_is_tested_firing_and_not_firing() {
    if !have_tool("promtool", "alert rules with promtool") {
        return;
    }
    let dir = packaging("prometheus");
    let (ok, out) = promtool(&dir, &["check", "rules", "sensorgate.rules.yml"]);
    eprintln!("{out}");
    assert!(ok, "promtool check rules:\n{out}");
    let (ok, out) = promtool(&dir, &["test", "rules", "sensorgate.rules.test.yml"]);
    eprintln!("{out}");
    assert!(ok, "promtool test rules:\n{out}");

    // Each alert has a case where it fires and one where it must not.
    let rules = std::fs::read_to_string(dir.join("sensorgate.rules.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("sensorgate.rules.test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 9, "{alerts:?}");
    let mut cases: Vec<(&str, bool)> = Vec::new();
    let mut lines = tests.lines().map(str::trim).peekable();
    while let Some(l) = lines.next() {
        if let Some(name) = l.strip_prefix("alertname: ") {
            let fires = lines.peek().is_some_and(|next| *next == "exp_alerts:");
            cases.push((name, fires));
        }
    }
    for alert in &alerts {
        for fires in [true, false] {
            assert!(
                cases.contains(&(alert, fires)),
                "{alert}: no case where it {}",
                if fires { "fires" } else { "stays quiet" }
            );
        }
        assert!(
            rules.contains(&format!("- alert: {alert}\n"))
                && rules
                    .split(&format!("- alert: {alert}\n"))
                    .nth(1)
                    .and_then(|rest| rest.split("- alert:").next())
                    .is_some_and(|r| r.contains("runbook: |")),
            "{alert} has a runbook"
        );
    }
}

#[test]
fn the_dashboard_is_a_grafana_model_with_the_rows_and_variables_an_operator_needs() {
    let d = dashboard();
    assert_eq!(d["uid"], "sensorgate");
    let variables: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(variables, ["datasource", "gateway", "instance"]);
    let rows: Vec<String> = panels(&d)
        .iter()
        .filter(|(_, p)| p["type"] == "row")
        .map(|(_, p)| p["title"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        rows,
        [
            "Overview",
            "Ingest",
            "Validation and dead letters",
            "Outbox",
            "Kafka",
            "Downlink",
            "Process"
        ]
    );
    let mut ids = BTreeSet::new();
    for (row, p) in panels(&d) {
        let title = p["title"].as_str().unwrap_or("");
        assert!(
            ids.insert(p["id"].as_u64().expect("an id")),
            "{title}: id unique"
        );
        let pos = &p["gridPos"];
        let (x, w) = (pos["x"].as_u64().unwrap(), pos["w"].as_u64().unwrap());
        assert!(
            x + w <= 24 && pos["h"].as_u64().unwrap() > 0,
            "{title}: {pos}"
        );
        if p["type"] == "row" {
            continue;
        }
        assert!(
            !p["description"].as_str().unwrap_or("").is_empty(),
            "{title}: a description"
        );
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: a query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            assert!(
                expr.contains("gateway=~\"$gateway\", instance=~\"$instance\""),
                "{row} / {title}: every selector follows the variables: {expr}"
            );
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
        }
        // The downlink's panels, and only they, need a gateway with a downlink.
        let needs_downlink = targets
            .iter()
            .any(|t| downlink_only(t["expr"].as_str().unwrap()));
        assert_eq!(needs_downlink, row == "Downlink", "{row} / {title}");
    }
}

#[test]
fn the_package_ships_the_dashboard_and_the_rules() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    for asset in [
        r#"["packaging/grafana/sensorgate.json", "usr/share/sensorgate/grafana/sensorgate.json", "644"]"#,
        r#"["packaging/prometheus/sensorgate.rules.yml", "usr/share/sensorgate/prometheus/sensorgate.rules.yml", "644"]"#,
    ] {
        assert!(
            manifest.contains(asset),
            "[package.metadata.deb] assets has {asset}"
        );
    }
}

#[test]
fn every_dashboard_query_and_alert_rule_works_on_a_real_prometheus_scraping_the_gateway() {
    if !have_tool(
        "prometheus",
        "dashboard queries and rules on a real Prometheus",
    ) {
        return;
    }
    let deployment = Deployment::start_with_downlink();
    let _load = simulate(&deployment.mqtt.url(), 100, 5, 0.1);
    // Commands for the downlink's panels: delivered ones, and one that is not JSON.
    let mut commands: Vec<(String, Vec<u8>)> = (0..20)
        .map(|seq| ("dev-1".to_owned(), command("dev-1", seq)))
        .collect();
    commands.push(("dev-1".to_owned(), b"not json".to_vec()));
    tokio::runtime::Runtime::new().unwrap().block_on(produce(
        &deployment.kafka.bootstrap_servers(),
        COMMANDS_TOPIC,
        &commands,
    ));
    deployment.wait_metric("the commands delivered", |m| {
        metric(
            m,
            "sensorgate_downlink_commands_total",
            Some(("result", "delivered")),
        ) == 20.0
    });
    let prometheus = Prometheus::start(
        &[Target {
            address: deployment.metrics_address(),
            labels: &[("gateway", "test-gw")],
        }],
        &[packaging("prometheus/sensorgate.rules.yml")],
    );
    let up = format!(
        "up{{job=\"sensorgate\", instance=\"{}\"}}",
        deployment.metrics_address()
    );
    wait_until(LONG, "Prometheus to scrape the gateway", || {
        prometheus
            .query(&up)
            .first()
            .is_some_and(|s| s["value"][1] == "1")
    });

    // Every metric of ours the dashboard and the rules name is in the gateway's exposition.
    let d = dashboard();
    let rules = std::fs::read_to_string(packaging("prometheus/sensorgate.rules.yml")).unwrap();
    let exported: BTreeSet<String> = deployment
        .scrape()
        .samples
        .iter()
        .map(|s| s.metric.clone())
        .collect();
    let mut names = metric_names(&rules);
    for (_, _, expr) in queries(&d) {
        names.extend(metric_names(&expr));
    }
    for name in &names {
        let base = name
            .strip_suffix("_bucket")
            .filter(|b| exported.contains(*b))
            .unwrap_or(name);
        assert!(
            exported.contains(base),
            "{name} is not exported; exported: {exported:?}"
        );
    }

    // A Kafka outage, so the failure and retry series move too; then back.
    deployment.kafka.broker_down(-1).unwrap();
    deployment.wait_metric("Kafka down", |m| {
        metric(m, "sensorgate_kafka_up", None) == 0.0
    });
    // The rule's expression holds on real series: the alert is pending (it fires after 10 min).
    wait_until(LONG, "SensorgateKafkaUnreachable pending", || {
        prometheus.api("/api/v1/alerts")["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| {
                a["labels"]["alertname"] == "SensorgateKafkaUnreachable" && a["state"] == "pending"
            })
    });
    let alerts = prometheus.api("/api/v1/alerts");
    eprintln!("alerts during the outage: {alerts}");
    assert!(
        !alerts.to_string().contains("error expanding"),
        "annotations render: {alerts}"
    );
    deployment.kafka.broker_up(-1).unwrap();
    deployment.wait_metric("Kafka back", |m| {
        metric(m, "sensorgate_kafka_up", None) == 1.0
    });

    // The dashboard's variables find the gateway.
    for var in d["templating"]["list"].as_array().unwrap() {
        let Some(definition) = var["definition"].as_str() else {
            continue;
        };
        let (selector, label) = definition
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|r| r.rsplit_once(", "))
            .expect("label_values(selector, label)");
        let series = prometheus.query(&as_grafana_sends(selector));
        assert!(
            series.iter().any(|s| s["metric"][label].is_string()),
            "variable {}: {definition} finds no {label}",
            var["name"]
        );
    }

    // Every panel's every query returns data, the downlink's included.
    let started = Instant::now();
    let mut checked = 0;
    let mut downlink = 0;
    for (row, title, expr) in queries(&d) {
        let query = as_grafana_sends(&expr);
        downlink += usize::from(downlink_only(&expr));
        let mut last = Vec::new();
        wait_until(LONG, &format!("data for {row} / {title}: {query}"), || {
            last = prometheus.query(&query);
            !last.is_empty()
        });
        eprintln!(
            "ok: {row} / {title}: {} series, e.g. {}",
            last.len(),
            last[0]["value"]
        );
        checked += 1;
    }
    assert!(checked >= 44, "{checked} queries checked");
    assert!(downlink >= 4, "{downlink} downlink queries checked");
    eprintln!(
        "{checked} dashboard queries returned data, {downlink} of them the downlink's ({:.1} s)",
        started.elapsed().as_secs_f64()
    );

    // Every rule evaluates on real series without an error.
    let groups = prometheus.api("/api/v1/rules");
    let rules: Vec<&serde_json::Value> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    let in_file = std::fs::read_to_string(packaging("prometheus/sensorgate.rules.yml"))
        .unwrap()
        .matches("- alert: ")
        .count();
    assert_eq!(rules.len(), in_file, "{groups}");
    for rule in rules {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
}
