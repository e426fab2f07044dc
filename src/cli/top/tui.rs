//! The terminal view: a heading, the sections of [`super::render`] one under the other (each a
//! block with its title in the top border; the outbox's with a sparkline of its depth), and a
//! key line. `d` swaps the sections for a table of the latest dead letters; `q`, Esc (from the
//! overview) and Ctrl-C quit. Laid out for 80×24 and anything larger.

use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Padding, Paragraph, Row, Sparkline, Table};
use ratatui::Frame;

use super::model::View;
use super::render::{self, Section};
use super::{clock, Sampler, Status, TopError};
use crate::admin::DeadLetter;
use crate::record::now_ms;

/// How often the dead-letter table is fetched again while shown (it reads the daemon's store).
const DEAD_LETTERS_EVERY: Duration = Duration::from_secs(5);

/// What is on the screen.
#[derive(Debug, Default)]
pub struct Screen {
    /// The heading's text.
    pub heading: String,
    /// The latest view, if any scrape succeeded.
    pub view: Option<View>,
    /// When it was taken (ms since the epoch).
    pub view_ms: u64,
    /// Why the last scrape failed, if it did.
    pub error: Option<String>,
    /// The dead-letter table, when shown: the list or why it could not be fetched.
    pub dead_letters: Option<Result<Vec<DeadLetter>, String>>,
}

/// Runs the view until `q`.
pub fn run(sampler: &mut Sampler) -> Result<Status, TopError> {
    let mut terminal = ratatui::try_init().map_err(TopError::Terminal)?;
    let result = event_loop(&mut terminal, sampler);
    ratatui::restore();
    result
}

fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    sampler: &mut Sampler,
) -> Result<Status, TopError> {
    let interval = sampler.options().interval;
    let mut screen = Screen::default();
    let mut next = Instant::now();
    let mut dead_letters_at = Instant::now();
    loop {
        let now = Instant::now();
        if now >= next {
            match sampler.sample() {
                Ok(view) => {
                    screen.view = Some(view);
                    screen.view_ms = now_ms();
                    screen.error = None;
                }
                Err(e) => screen.error = Some(e.to_string()),
            }
            screen.heading = sampler.heading(screen.view.as_ref());
            if screen.dead_letters.is_some() && dead_letters_at.elapsed() >= DEAD_LETTERS_EVERY {
                screen.dead_letters = Some(sampler.dead_letters().map_err(|e| e.to_string()));
                dead_letters_at = Instant::now();
            }
            // Steady ticks, but never a burst of catch-up scrapes after a slow one.
            next = (next + interval).max(Instant::now());
        }
        terminal
            .draw(|frame| draw(frame, &screen))
            .map_err(TopError::Terminal)?;
        let wait = next.saturating_duration_since(Instant::now());
        if !event::poll(wait).map_err(TopError::Terminal)? {
            continue;
        }
        let Event::Key(key) = event::read().map_err(TopError::Terminal)? else {
            continue;
        };
        if key.kind != KeyEventKind::Press {
            continue;
        }
        match key.code {
            KeyCode::Char('q') => return Ok(Status::Ok),
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                return Ok(Status::Ok)
            }
            KeyCode::Esc if screen.dead_letters.is_some() => screen.dead_letters = None,
            KeyCode::Esc => return Ok(Status::Ok),
            KeyCode::Char('d') if screen.dead_letters.is_some() => screen.dead_letters = None,
            KeyCode::Char('d') => {
                screen.dead_letters = Some(sampler.dead_letters().map_err(|e| e.to_string()));
                dead_letters_at = Instant::now();
            }
            _ => {}
        }
    }
}

/// Draws the whole screen.
pub fn draw(frame: &mut Frame<'_>, screen: &Screen) {
    let [top, body, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(Paragraph::new(heading(screen)), top);
    match (&screen.dead_letters, &screen.view) {
        (Some(list), view) => draw_dead_letters(frame, body, list, view.as_ref()),
        (None, Some(view)) => draw_sections(frame, body, view),
        (None, None) => frame.render_widget(
            Paragraph::new("waiting for the gateway's first answer…"),
            body,
        ),
    }
    let keys = if screen.dead_letters.is_some() {
        " q quit   d/Esc back to the overview"
    } else {
        " q quit   d latest dead letters"
    };
    frame.render_widget(
        Paragraph::new(keys).style(Style::new().add_modifier(Modifier::REVERSED)),
        bottom,
    );
}

fn heading(screen: &Screen) -> Line<'static> {
    let mut spans = vec![Span::styled(
        screen.heading.clone(),
        Style::new().add_modifier(Modifier::BOLD),
    )];
    match &screen.error {
        Some(e) => {
            let since = if screen.view.is_some() {
                format!(" (figures of {})", clock(screen.view_ms))
            } else {
                String::new()
            };
            spans.push(Span::styled(
                format!("  {e}{since}"),
                Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
            ));
        }
        None => spans.push(Span::raw(format!("  {} UTC", clock(screen.view_ms)))),
    }
    Line::from(spans)
}

/// Rows the outbox's sparkline takes when there is room.
const SPARKLINE_ROWS: u16 = 2;

fn draw_sections(frame: &mut Frame<'_>, area: Rect, view: &View) {
    let sections = render::sections(view);
    let needed: u16 = sections.iter().map(|s| s.lines.len() as u16 + 1).sum();
    let spark = area.height >= needed + SPARKLINE_ROWS;
    let mut constraints: Vec<Constraint> = sections
        .iter()
        .map(|s| {
            let extra = if spark && s.title == "Outbox" {
                SPARKLINE_ROWS
            } else {
                0
            };
            Constraint::Length(s.lines.len() as u16 + 1 + extra)
        })
        .collect();
    constraints.push(Constraint::Min(0));
    let areas = Layout::vertical(constraints).split(area);
    for (section, area) in sections.iter().zip(areas.iter()) {
        draw_section(frame, *area, section, spark.then_some(&view.depth_history));
    }
}

fn draw_section(frame: &mut Frame<'_>, area: Rect, section: &Section, depth: Option<&Vec<u64>>) {
    let block = Block::new()
        .borders(Borders::TOP)
        .title(format!(" {} ", section.title))
        .title_style(Style::new().add_modifier(Modifier::BOLD))
        .padding(Padding::left(1));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let text_rows = section.lines.len() as u16;
    let [text, rest] =
        Layout::vertical([Constraint::Length(text_rows), Constraint::Min(0)]).areas(inner);
    frame.render_widget(Paragraph::new(section.lines.clone()), text);
    if let (Some(depth), "Outbox") = (depth, section.title.as_str()) {
        let label = "depth, 2 min ";
        let [label_area, spark_area] =
            Layout::horizontal([Constraint::Length(label.len() as u16), Constraint::Min(0)])
                .areas(rest);
        frame.render_widget(
            Paragraph::new(label).style(Style::new().fg(Color::DarkGray)),
            label_area,
        );
        let width = spark_area.width as usize;
        let latest = &depth[depth.len().saturating_sub(width)..];
        frame.render_widget(
            Sparkline::default()
                .data(latest.to_vec())
                .style(Style::new().fg(Color::Cyan)),
            spark_area,
        );
    }
}

fn draw_dead_letters(
    frame: &mut Frame<'_>,
    area: Rect,
    list: &Result<Vec<DeadLetter>, String>,
    view: Option<&View>,
) {
    let in_store = view
        .and_then(|v| v.dlq_entries)
        .map_or(String::new(), |n| format!(" of {}", render::count(n)));
    let list = match list {
        Ok(list) => list,
        Err(e) => {
            let block = Block::new()
                .borders(Borders::TOP)
                .title(" Latest dead letters ");
            frame.render_widget(
                Paragraph::new(vec![
                    Line::styled(e.clone(), Style::new().fg(Color::Red)),
                    Line::from(
                        "The admin socket answers root and members of the daemon's group \
                         (sensorgate under the packaged unit).",
                    ),
                ])
                .wrap(ratatui::widgets::Wrap { trim: true })
                .block(block),
                area,
            );
            return;
        }
    };
    let block = Block::new().borders(Borders::TOP).title(format!(
        " Latest dead letters, newest first ({}{in_store}) ",
        list.len()
    ));
    let rows = list.iter().map(|d| {
        Row::new(vec![
            Cell::from(d.id.to_string()),
            Cell::from(clock(d.meta.received_at_ms)),
            Cell::from(d.reason().map_or("?", |r| r.as_str())),
            Cell::from(d.meta.source.to_string()),
            Cell::from(first_error(d)),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(16),
            Constraint::Length(8),
            Constraint::Length(16),
            Constraint::Length(10),
            Constraint::Min(10),
        ],
    )
    .header(
        Row::new(vec!["id", "received", "reason", "source", "first error"])
            .style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .block(block);
    frame.render_widget(table, area);
}

fn first_error(d: &DeadLetter) -> String {
    d.errors().first().map_or(String::new(), |v| {
        let text = if v.instance_path.is_empty() {
            v.message.clone()
        } else {
            format!("{}: {}", v.instance_path, v.message)
        };
        text.replace('\n', " ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::top::model::{Known, Scrape, Tracker};
    use crate::cli::top::scrape::Exposition;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn view(extra: &str) -> View {
        let text = format!(
            "sensorgate_build_info{{version=\"0.1.0\"}} 1\n\
             sensorgate_readings_received_total{{source=\"local\"}} 100\n\
             sensorgate_readings_received_total{{source=\"uno\"}} 20\n\
             sensorgate_source_up{{source=\"local\"}} 1\n\
             sensorgate_source_up{{source=\"uno\"}} 0\n\
             sensorgate_readings_valid_total 110\n\
             sensorgate_dead_letters_total{{reason=\"schema\"}} 8\n\
             sensorgate_dead_letters_total{{reason=\"not-json\"}} 2\n\
             sensorgate_outbox_records 1234\n\
             sensorgate_outbox_bytes 1048576\n\
             sensorgate_outbox_max_bytes 67108864\n\
             sensorgate_outbox_oldest_record_age_seconds 42\n\
             sensorgate_outbox_dropped_total{{policy=\"drop-oldest\"}} 0\n\
             sensorgate_kafka_up 0\n\
             sensorgate_kafka_circuit_open 1\n\
             sensorgate_dlq_entries 10\n{extra}"
        );
        let known = Known {
            gateway: Some("pi-07".into()),
            source_kinds: [("local".to_owned(), "mqtt"), ("uno".to_owned(), "serial")].into(),
            max_bytes: None,
        };
        let mut tracker = Tracker::default();
        let t0 = Instant::now();
        let scrape = |at| Scrape {
            at,
            metrics: Exposition::parse(&text).unwrap(),
        };
        tracker.update(scrape(t0), &known);
        tracker.update(scrape(t0 + Duration::from_secs(1)), &known)
    }

    fn screen_text(screen: &Screen) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
        terminal.draw(|f| draw(f, screen)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        (0..24)
            .map(|y| (0..80).map(|x| buffer[(x, y)].symbol()).collect::<String>())
            .collect()
    }

    #[test]
    fn the_overview_fits_80_by_24_with_a_downlink() {
        let screen = Screen {
            heading: "sensorgate top: gateway pi-07 (0.1.0) via 127.0.0.1:9898".into(),
            view: Some(view(
                "sensorgate_downlink_up{downlink=\"commands\"} 1\n\
                 sensorgate_downlink_commands_total{downlink=\"commands\",result=\"delivered\"} 4\n",
            )),
            ..Screen::default()
        };
        let rows = screen_text(&screen);
        let all = rows.join("\n");
        for title in [
            "Sources (readings)",
            "Validation",
            "Outbox",
            "Kafka",
            "Downlink",
            "Dead letters",
        ] {
            assert!(all.contains(&format!(" {title} ")), "{title} in\n{all}");
        }
        let line = |needle: &str| {
            rows.iter()
                .find(|r| r.contains(needle))
                .unwrap_or_else(|| panic!("{needle} in\n{all}"))
                .clone()
        };
        assert!(line("uno ").contains("DOWN"), "{all}");
        assert!(line("local ").contains("UP"), "{all}");
        assert!(line("depth 1,234 records").contains("of 64.0 MiB (2%)"));
        assert!(
            line("failures").trim_start().starts_with("DOWN"),
            "Kafka down: {all}"
        );
        assert!(line("circuit").contains("circuit open"), "{all}");
        assert!(line("commands").contains("UP"));
        assert!(line("in the local store").trim_start().starts_with("10 "));
        assert!(line("uno ").contains("reconnects 0"), "not cut off: {all}");
        assert!(rows[23].contains("q quit"));
        assert!(
            all.contains("depth, 2 min"),
            "room for the sparkline: {all}"
        );
    }

    #[test]
    fn the_dead_letter_table_and_errors_show() {
        let mut screen = Screen {
            view: Some(view("")),
            error: Some("metrics endpoint 127.0.0.1:9: connection refused".into()),
            dead_letters: Some(Err("admin socket /x: permission denied".into())),
            ..Screen::default()
        };
        let all = screen_text(&screen).join("\n");
        assert!(all.contains("connection refused (figures of"), "{all}");
        assert!(all.contains("permission denied"), "{all}");
        screen.dead_letters = Some(Ok(Vec::new()));
        let all = screen_text(&screen).join("\n");
        assert!(
            all.contains("Latest dead letters, newest first (0 of 10)"),
            "{all}"
        );
        assert!(all.contains("first error"), "{all}");
    }
}
