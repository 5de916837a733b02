//! CPU time and peak memory of processes, read from Linux's /proc.

use std::sync::OnceLock;

/// utime + stime of `pid` (all its threads), in microseconds; None once it is gone.
pub fn cpu_micros(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces; count from after it.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 counting from field 3.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 1_000_000 / ticks_per_second())
}

/// Peak resident set (VmHWM) of `pid`, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

fn ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .filter(|&ticks| ticks > 0)
            .unwrap_or(100)
    })
}

/// The RabbitMQ broker's Erlang VM processes (beam.smp) on this machine; with
/// `WALBOX_BENCH_BROKER_ROOT` only those running under that root directory (the chroot of one
/// private cluster, e.g. scripts/trixie-servers.sh's `$WALBOX_HA_ROOT/rootfs`, all its nodes),
/// so other brokers on the machine are not counted.
pub fn broker_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let root = std::env::var("WALBOX_BENCH_BROKER_ROOT")
        .ok()
        .filter(|root| !root.trim().is_empty())
        .map(|root| std::fs::canonicalize(&root).unwrap_or_else(|_| root.into()));
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "beam.smp")
        })
        .filter(|pid| {
            root.as_ref().is_none_or(|root| {
                std::fs::read_link(format!("/proc/{pid}/root")).is_ok_and(|dir| &dir == root)
            })
        })
        .collect()
}

/// Busy and total CPU time of the whole machine so far (all cores, clock ticks), from the
/// first line of /proc/stat; idle and iowait count as not busy.
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let values: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3)? + values.get(4)?;
    Some((total - idle, total))
}

/// Percent of the machine's CPU capacity (all cores) busy between two [`machine_ticks`].
pub fn machine_busy(start: Option<(u64, u64)>, end: Option<(u64, u64)>) -> Option<f64> {
    let ((busy0, total0), (busy1, total1)) = (start?, end?);
    let total = total1.checked_sub(total0).filter(|&t| t > 0)?;
    Some(busy1.saturating_sub(busy0) as f64 / total as f64 * 100.0)
}
