//! The daemon's own process figures for the `process_*` metrics (the names every Prometheus
//! client library uses, so generic dashboards work too): resident and virtual memory, CPU time,
//! open and allowed file descriptors, threads and start time. Read from `/proc/self` at each
//! scrape; a field that cannot be read is left out rather than reported as 0.

/// Clock ticks per second of the times in `/proc/<pid>/stat`: `USER_HZ`, which Linux fixes at
/// 100 in its user-space ABI on every architecture we ship for.
const USER_HZ: f64 = 100.0;

/// What `/proc/self` says about this process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    /// Resident set size, bytes.
    pub resident_bytes: Option<u64>,
    /// Virtual memory size, bytes.
    pub virtual_bytes: Option<u64>,
    /// User plus system CPU time, seconds.
    pub cpu_seconds: Option<f64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The soft limit on file descriptors.
    pub max_fds: Option<u64>,
    /// Threads.
    pub threads: Option<u64>,
    /// When the process started, seconds since the epoch.
    pub start_time_seconds: Option<f64>,
}

impl ProcessStats {
    /// Reads the figures of this process (all `None` where `/proc` is missing).
    pub fn read() -> Self {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| field_after(&s, "btime").and_then(|v| v.parse::<f64>().ok()));
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64);
        Self::parse(&stat, &status, &limits, boot_time, open_fds)
    }

    fn parse(
        stat: &str,
        status: &str,
        limits: &str,
        boot_time: Option<f64>,
        open_fds: Option<u64>,
    ) -> Self {
        // The fields after the parenthesised command name (which may hold spaces): state is
        // field 3, utime 14, stime 15, starttime 22; here at indexes 0, 11, 12 and 19.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let number = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
        let cpu_seconds = match (number(11), number(12)) {
            (Some(user), Some(system)) => Some((user + system) as f64 / USER_HZ),
            _ => None,
        };
        let start_time_seconds = match (boot_time, number(19)) {
            (Some(boot), Some(ticks)) => Some(boot + ticks as f64 / USER_HZ),
            _ => None,
        };
        let kib = |key: &str| {
            field_after(status, key)
                .and_then(|v| v.parse::<u64>().ok())
                .map(|v| v * 1024)
        };
        let max_fds = limits
            .lines()
            .find_map(|l| l.strip_prefix("Max open files"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok());
        Self {
            resident_bytes: kib("VmRSS:"),
            virtual_bytes: kib("VmSize:"),
            cpu_seconds,
            open_fds,
            max_fds,
            threads: field_after(status, "Threads:").and_then(|v| v.parse().ok()),
            start_time_seconds,
        }
    }
}

/// The first word after `key` on the line that starts with it.
fn field_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files_and_leaves_out_what_is_missing() {
        let stat = "4242 (sensor gate) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 \
                    9 0 12345 1000000 500";
        let status = "Name:\tsensorgate\nVmSize:\t  20480 kB\nVmRSS:\t    8192 kB\nThreads:\t9\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        let p = ProcessStats::parse(stat, status, limits, Some(1_700_000_000.0), Some(17));
        assert_eq!(p.resident_bytes, Some(8192 * 1024));
        assert_eq!(p.virtual_bytes, Some(20480 * 1024));
        assert_eq!(p.cpu_seconds, Some(3.0));
        assert_eq!(p.threads, Some(9));
        assert_eq!(p.max_fds, Some(1024));
        assert_eq!(p.open_fds, Some(17));
        assert_eq!(p.start_time_seconds, Some(1_700_000_123.45));

        assert_eq!(
            ProcessStats::parse("", "", "", None, None),
            ProcessStats::default()
        );
    }

    #[test]
    fn reads_this_process() {
        let p = ProcessStats::read();
        assert!(p.resident_bytes.unwrap() > 0);
        assert!(p.threads.unwrap() >= 1);
        assert!(p.open_fds.unwrap() >= 3);
        let now = crate::record::now_ms() as f64 / 1000.0;
        let started = p.start_time_seconds.unwrap();
        assert!(
            started <= now + 1.0 && started > now - 86_400.0,
            "{started}"
        );
    }
}
