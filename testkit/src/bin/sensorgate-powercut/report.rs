//! What a run found: one [`Cycle`] per cut, and the comparison of what mosquitto acknowledged
//! with what Kafka holds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::sensor::Acks;
use crate::tally::Tally;
use crate::vm::Console;
use crate::Args;

/// One boot and its cut.
#[derive(Debug, Default)]
pub(crate) struct Cycle {
    pub(crate) kafka_down: bool,
    /// Cut while the gateway was starting (not waiting for it to be ready).
    pub(crate) during_start: bool,
    /// `/readyz` answered 200 before the cut (only waited for when not `during_start`).
    pub(crate) ready: bool,
    pub(crate) ready_at: Option<Instant>,
    /// Outbox depth from the last `/readyz` before the cut, when its body reports it.
    pub(crate) depth: Option<u64>,
    /// qemu started to the guest's `/init` starting the gateway.
    pub(crate) boot_to_start: Option<Duration>,
    /// The gateway started to `/readyz` answering 200: its own start-up (opening the store,
    /// connecting to mosquitto).
    pub(crate) start_to_ready: Option<Duration>,
    pub(crate) cut_at: Option<Instant>,
    /// qemu started to qemu killed.
    pub(crate) cycle: Duration,
    pub(crate) console: Console,
    /// Readings acknowledged by mosquitto so far.
    pub(crate) acked: u64,
    /// Records read from Kafka so far.
    pub(crate) in_kafka: u64,
}

impl Cycle {
    pub(crate) fn line(&self, cut: usize, cuts: usize) -> String {
        let secs =
            |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.1}s", d.as_secs_f64()));
        let mut line = format!(
            "cut {cut:>3}/{cuts}  kafka {:<4}  {}  boot {:>6}  start-to-ready {:>6}  cycle {:>5.1}s  \
             depth {:>6}  acked {:>7}  in kafka {:>7}",
            if self.kafka_down { "down" } else { "up" },
            if self.during_start {
                "cut while starting"
            } else {
                "cut while running "
            },
            secs(self.boot_to_start),
            secs(self.start_to_ready),
            self.cycle.as_secs_f64(),
            self.depth.map_or("-".into(), |d| d.to_string()),
            self.acked,
            self.in_kafka,
        );
        let c = &self.console;
        for (n, what) in [
            (c.corrupt.len(), "CORRUPT"),
            (c.exits.len(), "gateway exited"),
            (usize::from(c.mount_failed), "mount failed"),
            (usize::from(c.panicked), "kernel panic"),
            (
                usize::from(!self.during_start && !self.ready),
                "never ready",
            ),
            (c.errors.len(), "errors"),
        ] {
            if n > 0 {
                let _ = write!(line, "  [{what}: {n}]");
            }
        }
        line
    }
}

/// The run's figures.
#[derive(Debug, Default)]
pub(crate) struct Report {
    seed: u64,
    pub(crate) cycles: Vec<Cycle>,
    published: u64,
    acked: u64,
    distinct: u64,
    records: u64,
    /// Acknowledged readings not in Kafka, by `seq`, with when they were acknowledged.
    lost: Vec<(u64, Option<Instant>)>,
    unacked_delivered: u64,
    dead_letters: u64,
    unreadable: u64,
    skipped: u64,
    rereads: u64,
    resent: u64,
    stored_again: u64,
    final_console: Console,
    final_ready: bool,
    drained: bool,
    /// The sensor stopped to the end of the drain.
    pub(crate) drain_time: Duration,
    /// Why the cuts stopped before the planned number, if they did.
    pub(crate) stopped: Option<String>,
    elapsed: Duration,
    mosquitto_dropped: usize,
}

impl Report {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            seed,
            ..Self::default()
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn finish(
        &mut self,
        published: u64,
        acks: &Acks,
        tally: &Tally,
        final_console: Console,
        final_ready: Option<Instant>,
        drained: bool,
        elapsed: Duration,
        mosquitto_dropped: usize,
    ) {
        self.published = published;
        self.acked = acks.acked();
        for (seq, acked_at) in acks.acked_at.iter().enumerate() {
            let seq = seq as u64;
            match (acked_at, tally.has(seq)) {
                (Some(_), false) => self.lost.push((seq, *acked_at)),
                (None, true) => self.unacked_delivered += 1,
                _ => {}
            }
        }
        self.distinct = tally.count.iter().filter(|c| **c > 0).count() as u64;
        self.records = tally.records();
        self.dead_letters = tally.dead_letters;
        self.unreadable = tally.unreadable;
        self.skipped = tally.skipped;
        self.rereads = tally.rereads;
        self.resent = tally.resent;
        self.stored_again = tally.stored_again;
        self.final_console = final_console;
        self.final_ready = final_ready.is_some();
        self.drained = drained;
        self.elapsed = elapsed;
        self.mosquitto_dropped = mosquitto_dropped;
    }

    pub(crate) fn lost(&self) -> usize {
        self.lost.len()
    }

    fn consoles(&self) -> impl Iterator<Item = &Console> {
        self.cycles
            .iter()
            .map(|c| &c.console)
            .chain(std::iter::once(&self.final_console))
    }

    fn corrupt(&self) -> usize {
        self.consoles().map(|c| c.corrupt.len()).sum()
    }

    fn exits(&self) -> usize {
        self.consoles().map(|c| c.exits.len()).sum()
    }

    fn never_ready(&self) -> usize {
        self.cycles
            .iter()
            .filter(|c| !c.during_start && !c.ready)
            .count()
            + usize::from(!self.final_ready)
    }

    fn machine_failures(&self) -> usize {
        self.consoles()
            .filter(|c| c.mount_failed || c.panicked)
            .count()
    }

    /// No acknowledged reading lost, every start of the gateway succeeded (no exit, no corrupt
    /// store, ready every time it was waited for), and the count is trustworthy (nothing
    /// dropped by the broker unread).
    pub(crate) fn passed(&self) -> bool {
        self.lost.is_empty()
            && self.corrupt() == 0
            && self.exits() == 0
            && self.never_ready() == 0
            && self.machine_failures() == 0
            && self.skipped == 0
            && self.mosquitto_dropped == 0
            && self.drained
            && self.stopped.is_none()
    }

    pub(crate) fn render(&self, args: &Args) -> String {
        let mut out = String::new();
        let w = &mut out;
        let cuts = self.cycles.len();
        let down = self.cycles.iter().filter(|c| c.kafka_down).count();
        let starting = self.cycles.iter().filter(|c| c.during_start).count();
        let starts: usize = self.consoles().map(|c| c.gateway_starts.len()).sum();
        let _ = writeln!(w, "\nPower-cut test report");
        let _ = writeln!(
            w,
            "  run                        queue.fsync = {}, {} readings/s, seed {}, {} MiB guest (qemu TCG), total {:.1} min",
            !args.no_fsync,
            args.rate,
            self.seed,
            args.memory,
            self.elapsed.as_secs_f64() / 60.0
        );
        let _ = writeln!(
            w,
            "  cuts                       {cuts} ({down} while Kafka was down, {starting} while the gateway was starting), then a final boot to drain"
        );
        if let Some(why) = &self.stopped {
            let _ = writeln!(w, "  CUTS STOPPED EARLY         {why}");
        }
        let _ = writeln!(w, "  readings published         {}", self.published);
        let _ = writeln!(w, "  acknowledged by mosquitto  {}", self.acked);
        let _ = writeln!(
            w,
            "  in Kafka                   {} distinct readings, {} records",
            self.distinct, self.records
        );
        let _ = writeln!(
            w,
            "  LOST                       {} (acknowledged to the sensor, not in Kafka)",
            self.lost.len()
        );
        let _ = writeln!(
            w,
            "  duplicates                 {} (records beyond the first of each reading): {} sent again under the same sensorgate.seq, {} stored again under a new one",
            self.records - self.distinct,
            self.resent,
            self.stored_again
        );
        let _ = writeln!(
            w,
            "  in Kafka, never acked      {} (published, no PUBACK seen; not a loss either way)",
            self.unacked_delivered
        );
        let _ = writeln!(
            w,
            "  dead letters               {} (sensors.readings.DLQ); unreadable records {}",
            self.dead_letters, self.unreadable
        );
        let _ = writeln!(
            w,
            "  gateway starts             {starts}; exited by itself {}; boots not ready within the deadline {}; mount failures or kernel panics {}",
            self.exits(),
            self.never_ready(),
            self.machine_failures()
        );
        let _ = writeln!(
            w,
            "  store found corrupt        {} opens (ERROR lines containing \"corrupt\")",
            self.corrupt()
        );
        let aside = self.moved_aside();
        if aside.is_empty() {
            let _ = writeln!(
                w,
                "  moved-aside stores         none in the state directory"
            );
        } else {
            let _ = writeln!(
                w,
                "  moved-aside stores         {} in the state directory: {}",
                aside.len(),
                aside
                    .iter()
                    .map(|(boot, name)| format!("{name} (first listed at boot {boot})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let deepest = self.cycles.iter().filter_map(|c| c.depth).max();
        let _ = writeln!(
            w,
            "  deepest outbox seen        {}",
            deepest.map_or("not reported by /readyz".into(), |d| format!(
                "{d} records (from /readyz before a cut)"
            ))
        );
        let _ = writeln!(
            w,
            "  time per cut               {} (qemu start to SIGKILL)",
            stats(self.cycles.iter().map(|c| Some(c.cycle)))
        );
        let _ = writeln!(
            w,
            "  boot to gateway start      {}",
            stats(self.cycles.iter().map(|c| c.boot_to_start))
        );
        let _ = writeln!(
            w,
            "  gateway start to ready     {} (opening the store, connecting)",
            stats(self.cycles.iter().map(|c| c.start_to_ready))
        );
        let _ = writeln!(
            w,
            "  mosquitto dropped messages {} log lines; Kafka reader: {} offsets skipped, {} fetched twice (not counted)",
            self.mosquitto_dropped, self.skipped, self.rereads
        );
        let _ = writeln!(
            w,
            "  drained                    {}",
            if self.drained {
                format!(
                    "yes, in {:.0} s: every acknowledged reading arrived and Kafka was quiet for 5 s",
                    self.drain_time.as_secs_f64()
                )
            } else {
                format!(
                    "NO: gave up after {:.0} s before every acknowledged reading arrived",
                    self.drain_time.as_secs_f64()
                )
            }
        );
        self.render_logged(w, "errors logged", |c| &c.errors);
        self.render_logged(w, "warnings logged", |c| &c.warnings);
        self.render_lost(w);
        let verdict = if args.expect_loss {
            if self.lost.is_empty() {
                "INCONCLUSIVE: the control run lost nothing, so it did not show that this test bed can fail".to_owned()
            } else {
                format!(
                    "as expected for the control run: {} acknowledged readings lost",
                    self.lost.len()
                )
            }
        } else if self.passed() {
            "PASS: every acknowledged reading is in Kafka, and every start of the gateway succeeded"
                .to_owned()
        } else {
            "FAIL: see LOST, starts and corrupt opens above".to_owned()
        };
        let _ = writeln!(w, "  verdict                    {verdict}");
        let _ = writeln!(
            w,
            "  logs                       {}/console/boot-NNN.log",
            args.work.display()
        );
        out
    }

    /// State-directory entries with "corrupt" in their name, with the boot that first listed them.
    fn moved_aside(&self) -> Vec<(usize, String)> {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for (boot, console) in self.consoles().enumerate() {
            // `ls -la` entry lines (not the `dir:` headers), by the entry's name.
            for entry in &console.state_listing {
                if entry.ends_with(':') {
                    continue;
                }
                let name = entry.split_whitespace().last().unwrap_or_default();
                if name.contains("corrupt") {
                    seen.entry(name.to_owned()).or_insert(boot + 1);
                }
            }
        }
        let mut v: Vec<_> = seen.into_iter().map(|(n, b)| (b, n)).collect();
        v.sort();
        v
    }

    fn render_logged(&self, w: &mut String, title: &str, lines: impl Fn(&Console) -> &Vec<String>) {
        let mut groups: BTreeMap<String, usize> = BTreeMap::new();
        for console in self.consoles() {
            for line in lines(console) {
                *groups.entry(pattern(line)).or_default() += 1;
            }
        }
        let total: usize = groups.values().sum();
        let _ = writeln!(w, "  {title:<26} {total} lines");
        let mut by_count: Vec<_> = groups.into_iter().collect();
        by_count.sort_by_key(|b| std::cmp::Reverse(b.1));
        for (pattern, n) in by_count.iter().take(8) {
            let _ = writeln!(w, "      {n:>6} × {pattern}");
        }
    }

    fn render_lost(&self, w: &mut String) {
        if self.lost.is_empty() {
            return;
        }
        // Which cut followed each lost reading's acknowledgement, and how long before it.
        let mut by_cut: BTreeMap<usize, (usize, f64, f64)> = BTreeMap::new();
        for (_, acked_at) in &self.lost {
            let Some(t) = acked_at else { continue };
            let (cut, before) = self
                .cycles
                .iter()
                .enumerate()
                .find_map(|(i, c)| {
                    let cut_at = c.cut_at?;
                    (cut_at >= *t).then(|| (i + 1, (cut_at - *t).as_secs_f64()))
                })
                .unwrap_or((self.cycles.len() + 1, 0.0));
            let e = by_cut.entry(cut).or_insert((0, f64::MAX, 0.0));
            e.0 += 1;
            e.1 = e.1.min(before);
            e.2 = e.2.max(before);
        }
        let first: Vec<String> = self
            .lost
            .iter()
            .take(10)
            .map(|(s, _)| s.to_string())
            .collect();
        let _ = writeln!(
            w,
            "  lost readings              seq {}{}",
            first.join(", "),
            if self.lost.len() > 10 { ", …" } else { "" }
        );
        let _ = writeln!(
            w,
            "  lost, by the cut that followed their acknowledgement ({} cuts lost readings):",
            by_cut.len()
        );
        for (cut, (n, min, max)) in &by_cut {
            let what = if *cut > self.cycles.len() {
                "final boot".to_owned()
            } else {
                format!(
                    "cut {cut} (Kafka {})",
                    if self.cycles[cut - 1].kafka_down {
                        "down"
                    } else {
                        "up"
                    }
                )
            };
            let _ = writeln!(
                w,
                "      {what}: {n} readings, acknowledged by mosquitto {min:.2}–{max:.2} s before the cut"
            );
        }
    }
}

/// A log line without its timestamp, digits folded, cut to a readable length.
fn pattern(line: &str) -> String {
    let rest = line.split_once(' ').map_or(line, |(_, r)| r).trim();
    let folded: String = rest
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect();
    folded.chars().take(150).collect()
}

/// "mean X s (min Y s, max Z s, n N)" over the values that are there.
fn stats(values: impl Iterator<Item = Option<Duration>>) -> String {
    let v: Vec<f64> = values.flatten().map(|d| d.as_secs_f64()).collect();
    if v.is_empty() {
        return "-".into();
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let min = v.iter().copied().fold(f64::MAX, f64::min);
    let max = v.iter().copied().fold(0.0, f64::max);
    format!(
        "mean {mean:.1} s (min {min:.1} s, max {max:.1} s, n {})",
        v.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_moved_aside_is_listed_once_with_the_boot_that_first_showed_it() {
        let listing = |entries: &[&str]| Console {
            state_listing: entries.iter().map(|e| (*e).to_owned()).collect(),
            ..Console::default()
        };
        let mut report = Report::new(1);
        report.cycles.push(Cycle {
            console: listing(&["drwxr-xr-x 3 0 0 1024 Dec  1 23:01 outbox"]),
            ..Cycle::default()
        });
        report.final_console = listing(&[
            "drwxr-xr-x 3 0 0 1024 Dec  1 23:01 outbox",
            "drwxr-xr-x 3 0 0 1024 Dec  1 23:01 outbox.corrupt-1796170106",
            "/var/lib/sensorgate/outbox.corrupt-1796170106/:",
        ]);
        assert_eq!(
            report.moved_aside(),
            [(2, "outbox.corrupt-1796170106".to_owned())]
        );
    }
}
