//! Helpers shared by the benchmarks in `tests/benches/`: readings from
//! `/proc` (memory of a process, CPU of the machine, load) and the pieces of
//! the markdown reports that both print.

use std::fmt::Write as _;
use std::time::Duration;

/// Clock ticks per second (`_SC_CLK_TCK`), the unit of `/proc` CPU times.
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions; it only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100)
}

/// `ticks` clock ticks as a duration.
pub fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_nanos(ticks * 1_000_000_000 / clock_ticks())
}

/// A `/proc/PID/status` field in kB (`VmRSS`, `VmHWM`, ...).
pub fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} missing from /proc/{pid}/status"))
}

/// Busy and stolen CPU time of the whole machine, from /proc/stat.
pub struct MachineCpu {
    /// user + nice + system + irq + softirq.
    pub busy: Duration,
    /// Time the hypervisor gave to others.
    pub steal: Duration,
}

/// The machine's CPU time so far.
pub fn machine_cpu() -> MachineCpu {
    let stat = std::fs::read_to_string("/proc/stat").expect("read /proc/stat");
    let line = stat.lines().next().expect("cpu line");
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().expect("cpu field"))
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice
    // (guest time is already counted in user).
    MachineCpu {
        busy: ticks_to_duration(f[0] + f[1] + f[2] + f[5] + f[6]),
        steal: ticks_to_duration(f.get(7).copied().unwrap_or(0)),
    }
}

/// The first three fields of /proc/loadavg.
pub fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// "met" or "not met".
pub fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "not met" }
}

/// One row of a per-thread table: its label cells, and (thread name, CPU
/// µs, runs or switches) per thread name.
pub type ThreadRow<'a> = (Vec<String>, &'a [(String, f64, f64)]);

/// Writes a markdown table of CPU µs / count per thread name: `heading`,
/// then one column per label and one per thread name seen in any row.
pub fn thread_table(
    w: &mut String,
    heading: &str,
    labels: &[(&str, &str)],
    rows: &[ThreadRow<'_>],
) {
    let mut names: Vec<&str> = rows
        .iter()
        .flat_map(|(_, threads)| threads.iter().map(|(n, _, _)| n.as_str()))
        .collect();
    names.sort_unstable();
    names.dedup();
    write!(w, "\n{heading}\n\n|").unwrap();
    for (label, _) in labels {
        write!(w, " {label} |").unwrap();
    }
    for name in &names {
        write!(w, " {name} |").unwrap();
    }
    write!(w, "\n|").unwrap();
    for (_, align) in labels {
        write!(w, "{align}|").unwrap();
    }
    for _ in &names {
        write!(w, "---:|").unwrap();
    }
    writeln!(w).unwrap();
    for (cells, threads) in rows {
        write!(w, "|").unwrap();
        for cell in cells {
            write!(w, " {cell} |").unwrap();
        }
        for name in &names {
            let (t, n) = threads
                .iter()
                .find(|(n, _, _)| n == name)
                .map_or((0.0, 0.0), |(_, t, n)| (*t, *n));
            write!(w, " {t:.1} / {n:.2} |").unwrap();
        }
        writeln!(w).unwrap();
    }
}
