//! The [`View`] as text: titled sections of styled lines, which the terminal UI lays out in
//! boxes and `--once` prints as they are (so both show the same figures, formatted once), and
//! the one-line-per-interval form for a pipe. Every line fits 78 columns.

use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};

use super::model::{Counter, LinkState, View};

/// A titled block of lines.
#[derive(Debug, Clone)]
pub struct Section {
    /// Shown in the block's border.
    pub title: String,
    /// Its lines.
    pub lines: Vec<Line<'static>>,
}

/// Most sources listed; the rest are summed up in one line (down ones are listed first).
pub const MAX_SOURCES: usize = 4;

fn state_span(state: LinkState) -> Span<'static> {
    let style = match state {
        LinkState::Up => Style::new().fg(Color::Green),
        LinkState::Backoff => Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
        LinkState::Down => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        LinkState::Unknown => Style::new(),
    };
    Span::styled(format!("{:<7}", state.as_str()), style)
}

/// `12.3/s`, or `-/s` before the second scrape.
pub fn rate(c: &Counter) -> String {
    match c.rate {
        Some(r) if r >= 1000.0 => format!("{r:.0}/s"),
        Some(r) => format!("{r:.1}/s"),
        None => "-/s".to_owned(),
    }
}

/// A whole number with thousands separators: `1,234,567`.
pub fn count(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `512 B`, `3.4 KiB`, `12.0 MiB`, `1.5 GiB`.
pub fn bytes(n: f64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024.0 {
        return format!("{n:.0} B");
    }
    let mut value = n / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    format!("{value:.1} {unit}")
}

/// `0.4 s`, `42 s`, `12 min`, `3.5 h`, `2.0 d`.
pub fn age(seconds: f64) -> String {
    match seconds {
        s if s < 10.0 => format!("{s:.1} s"),
        s if s < 120.0 => format!("{s:.0} s"),
        s if s < 7200.0 => format!("{:.0} min", s / 60.0),
        s if s < 172_800.0 => format!("{:.1} h", s / 3600.0),
        s => format!("{:.1} d", s / 86_400.0),
    }
}

fn opt(value: Option<f64>, f: impl Fn(f64) -> String) -> String {
    value.map_or_else(|| "?".to_owned(), f)
}

fn plain(text: String) -> Line<'static> {
    Line::from(text)
}

/// The sections, in screen order. The downlink section appears only when the gateway exports
/// downlink metrics.
pub fn sections(view: &View) -> Vec<Section> {
    let mut out = vec![sources(view), validation(view), outbox(view), kafka(view)];
    if !view.downlinks.is_empty() {
        out.push(downlink(view));
    }
    out.push(dead_letters(view));
    out
}

fn sources(view: &View) -> Section {
    let mut lines = Vec::new();
    if !view.from_metrics {
        lines.push(plain(
            "per-source figures and rates need the metrics endpoint ([metrics] listen)".into(),
        ));
    }
    let mut sources: Vec<_> = view.sources.iter().collect();
    // Down first, then by name.
    sources.sort_by_key(|s| (s.up != Some(false), s.name.clone()));
    let shown = if sources.len() > MAX_SOURCES {
        MAX_SOURCES - 1
    } else {
        sources.len()
    };
    for s in &sources[..shown] {
        let state = match s.up {
            Some(true) => LinkState::Up,
            Some(false) => LinkState::Down,
            None => LinkState::Unknown,
        };
        let name: String = s.name.chars().take(16).collect();
        lines.push(Line::from(vec![
            Span::raw(format!("{name:<16} {:<6} ", s.kind.unwrap_or(""))),
            state_span(state),
            Span::raw(format!(
                "{:>10}   total {:<11} reconnects {}",
                rate(&s.readings),
                count(s.readings.total),
                count(s.reconnects)
            )),
        ]));
    }
    let rest = &sources[shown..];
    if !rest.is_empty() {
        let down = rest.iter().filter(|s| s.up == Some(false)).count();
        let sum: f64 = rest.iter().filter_map(|s| s.readings.rate).sum();
        lines.push(plain(format!(
            "… and {} more ({down} down), {sum:.1}/s together",
            rest.len()
        )));
    }
    if view.from_metrics && sources.is_empty() {
        lines.push(plain("no source has reported yet".into()));
    }
    Section {
        title: "Sources (readings)".into(),
        lines,
    }
}

fn validation(view: &View) -> Section {
    let mut lines = vec![
        plain(format!(
            "valid         {:>10}   total {}",
            rate(&view.valid),
            count(view.valid.total)
        )),
        plain(format!(
            "dead letters  {:>10}   total {}",
            rate(&view.dead_letters),
            count(view.dead_letters.total)
        )),
    ];
    if !view.dead_by_reason.is_empty() {
        let mut line = String::from("  ");
        for (reason, c) in &view.dead_by_reason {
            let part = format!("{reason} {} ({})   ", rate(c), count(c.total));
            if line.len() + part.trim_end().len() > 78 {
                lines.push(plain(line.trim_end().to_owned()));
                line = String::from("  ");
            }
            line.push_str(&part);
        }
        lines.push(plain(line.trim_end().to_owned()));
    }
    Section {
        title: "Validation".into(),
        lines,
    }
}

fn outbox(view: &View) -> Section {
    let o = &view.outbox;
    let of_max = match (o.bytes, o.max_bytes) {
        (Some(b), Some(m)) if m > 0.0 => format!(" of {} ({:.0}%)", bytes(m), 100.0 * b / m),
        _ => String::new(),
    };
    let mut lines = vec![plain(format!(
        "depth {} records   {}{of_max}   oldest {}",
        opt(o.records, count),
        opt(o.bytes, bytes),
        opt(o.oldest_seconds, age),
    ))];
    let dropped = format!(
        "dropped {} ({})",
        count(o.dropped.total),
        o.policy.as_deref().unwrap_or("policy ?")
    );
    let style = if o.dropped.total > 0.0 || o.corrupt > 0.0 {
        Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
    } else {
        Style::new()
    };
    lines.push(Line::from(vec![
        Span::styled(dropped, style),
        Span::styled(format!("   lost to damage {}", count(o.corrupt)), style),
    ]));
    Section {
        title: "Outbox".into(),
        lines,
    }
}

fn kafka(view: &View) -> Section {
    let k = &view.kafka;
    let last = match k.last_delivery_ago {
        Some(s) => format!("last delivery {} ago", age(s)),
        None => "no delivery yet".to_owned(),
    };
    let mut first = vec![
        state_span(k.state),
        Span::raw(format!(
            "delivered {}   failures {}   retries {}",
            rate(&k.delivered),
            rate(&k.failures),
            count(k.retries.total)
        )),
    ];
    if view.from_metrics {
        first.push(Span::raw(format!(" ({})", rate(&k.retries))));
    }
    Section {
        title: "Kafka".into(),
        lines: vec![
            Line::from(first),
            plain(format!(
                "circuit {}   {last}   producer restarts {}",
                if k.circuit_open { "open" } else { "closed" },
                count(k.producer_restarts)
            )),
        ],
    }
}

fn downlink(view: &View) -> Section {
    let lines = view
        .downlinks
        .iter()
        .map(|d| {
            let name: String = d.name.chars().take(14).collect();
            Line::from(vec![
                Span::raw(format!("{name:<14} ")),
                state_span(d.state),
                Span::raw(format!(
                    "delivered {:>7}  rejected {:>7}  lag {}  retries {}",
                    rate(&d.delivered),
                    rate(&d.rejected),
                    opt(d.lag, count),
                    count(d.retries.total)
                )),
            ])
        })
        .collect();
    Section {
        title: "Downlink".into(),
        lines,
    }
}

fn dead_letters(view: &View) -> Section {
    let mut text = format!(
        "{} in the local store   {} evicted by retention",
        opt(view.dlq_entries, count),
        opt(view.dlq_evicted, count)
    );
    if let (Some(mem), Some(cpu)) = (view.memory_bytes, view.cpu) {
        text.push_str(&format!(
            "   process {} RSS, {:.0}% CPU",
            bytes(mem),
            cpu * 100.0
        ));
    }
    Section {
        title: "Dead letters".into(),
        lines: vec![plain(text)],
    }
}

/// The text of a line, without its styles.
pub fn text(line: &Line<'_>) -> String {
    line.spans.iter().map(|s| s.content.as_ref()).collect()
}

/// `--once`: a heading, then each section's title and indented lines.
pub fn snapshot(heading: &str, view: &View) -> String {
    let mut out = format!("{heading}\n");
    for section in sections(view) {
        out.push_str(&section.title.to_lowercase());
        out.push('\n');
        for line in &section.lines {
            out.push_str("  ");
            out.push_str(text(line).trim_end());
            out.push('\n');
        }
    }
    out
}

fn columns(c: [&str; 10]) -> String {
    format!(
        "{:<8} {:>10} {:>8} {:>7} {:>8} {:>9} {:>7}  {:<7} {:>8} {:>6}",
        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9]
    )
}

/// The column heads of [`row`].
pub fn row_head() -> String {
    columns([
        "time",
        "readings/s",
        "valid/s",
        "dead/s",
        "outbox",
        "bytes",
        "oldest",
        "kafka",
        "sent/s",
        "dlq",
    ])
}

/// One line per interval, for a pipe or a log file: rates per second, outbox depth, bytes and
/// oldest record, Kafka's state, deliveries per second, dead letters in the local store.
pub fn row(time: &str, view: &View) -> String {
    let readings = Counter {
        total: view.sources.iter().map(|s| s.readings.total).sum(),
        rate: view
            .sources
            .iter()
            .map(|s| s.readings.rate)
            .sum::<Option<f64>>(),
    };
    let bare = |c: &Counter| rate(c).trim_end_matches("/s").to_owned();
    let whole = |n: f64| format!("{n:.0}");
    columns([
        time,
        &bare(&readings),
        &bare(&view.valid),
        &bare(&view.dead_letters),
        &opt(view.outbox.records, whole),
        &opt(view.outbox.bytes, bytes),
        &opt(view.outbox.oldest_seconds, age),
        view.kafka.state.as_str(),
        &bare(&view.kafka.delivered),
        &opt(view.dlq_entries, whole),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(count(0.0), "0");
        assert_eq!(count(999.0), "999");
        assert_eq!(count(1234.0), "1,234");
        assert_eq!(count(1234567.0), "1,234,567");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(3.5 * 1024.0), "3.5 KiB");
        assert_eq!(bytes(512.0 * 1048576.0), "512.0 MiB");
        assert_eq!(age(0.42), "0.4 s");
        assert_eq!(age(754.0), "13 min");
        assert_eq!(age(3.5 * 3600.0), "3.5 h");
        assert_eq!(
            rate(&Counter {
                total: 0.0,
                rate: Some(2500.4)
            }),
            "2500/s"
        );
        assert_eq!(rate(&Counter::default()), "-/s");
    }
}
