//! Measurements: latency percentiles, and CPU time and memory of a process from /proc.

use std::time::Duration;

/// Percentiles over durations, in milliseconds.
pub fn percentiles_ms(samples: &mut [Duration]) -> (f64, f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    samples.sort_unstable();
    let at =
        |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0;
    (at(0.50), at(0.99), at(1.0))
}

/// User plus system CPU time of a process (or of this one), from /proc/<pid>/stat.
pub fn cpu_time(pid: Option<u32>) -> Option<Duration> {
    let path = pid.map_or_else(
        || "/proc/self/stat".to_owned(),
        |p| format!("/proc/{p}/stat"),
    );
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the ")" that ends the command name: utime is the 12th, stime the 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / USER_HZ))
}

/// Resident memory of a process, KiB, from /proc/<pid>/status.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// /proc reports CPU time in USER_HZ ticks, which Linux fixes at 100 for user space whatever
/// the kernel's own tick rate.
const USER_HZ: f64 = 100.0;

/// Summed CPU time of several processes; `None` when there are none or one cannot be read.
fn total_cpu_time(pids: &[u32]) -> Option<Duration> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| cpu_time(Some(*p))).sum()
}

/// Summed resident memory of several processes, KiB.
pub fn total_rss_kib(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| rss_kib(*p)).sum()
}

/// A CPU-time stopwatch for the gateway processes (summed) and for this generator.
pub struct CpuWatch {
    gateway_pids: Vec<u32>,
    gateway: Option<Duration>,
    own: Option<Duration>,
}

impl CpuWatch {
    pub fn start(gateway_pids: &[u32]) -> Self {
        CpuWatch {
            gateway_pids: gateway_pids.to_vec(),
            gateway: total_cpu_time(gateway_pids),
            own: cpu_time(None),
        }
    }

    /// CPU seconds used since `start`: (gateways, generator).
    pub fn elapsed(&self) -> (Option<f64>, Option<f64>) {
        let gateway = match (self.gateway, total_cpu_time(&self.gateway_pids)) {
            (Some(before), Some(now)) => Some((now - before).as_secs_f64()),
            _ => None,
        };
        let own = match (self.own, cpu_time(None)) {
            (Some(before), Some(now)) => Some((now - before).as_secs_f64()),
            _ => None,
        };
        (gateway, own)
    }
}

/// CPU time of each of several processes since a start, one by one (a cluster's nodes and
/// its mongod, where a sum would hide which of them pays).
pub struct EachCpuWatch {
    pids: Vec<u32>,
    before: Vec<Option<Duration>>,
}

impl EachCpuWatch {
    pub fn start(pids: &[u32]) -> Self {
        EachCpuWatch {
            pids: pids.to_vec(),
            before: pids.iter().map(|p| cpu_time(Some(*p))).collect(),
        }
    }

    /// CPU seconds each process used since `start`, in the order given (None: unreadable).
    pub fn elapsed(&self) -> Vec<Option<f64>> {
        self.pids
            .iter()
            .zip(&self.before)
            .map(|(pid, before)| Some((cpu_time(Some(*pid))? - (*before)?).as_secs_f64()))
            .collect()
    }
}
