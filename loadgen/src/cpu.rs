//! CPU time of this process and of the target's, from `/proc` (Linux).
//!
//! `/proc/PID/stat` fields 14 and 15 (`utime`, `stime`) count clock ticks of
//! `USER_HZ`, which the kernel fixes at 100 per second for user space on
//! every architecture reserva runs on.

use std::time::Instant;

/// Clock ticks per second of `/proc/PID/stat` times.
const USER_HZ: f64 = 100.0;

/// CPU seconds (user + system) a process has used; `None` if unreadable.
pub fn process_cpu_s(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces; fields resume after its ')'.
    let rest = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// Jiffies of the whole machine from `/proc/stat`: (busy, total).
pub fn machine_jiffies() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// Percent of all of the machine's CPUs busy between two `machine_jiffies` readings.
pub fn machine_busy_pct(from: (u64, u64), to: (u64, u64)) -> f64 {
    let total = to.1.saturating_sub(from.1);
    if total == 0 {
        return 0.0;
    }
    100.0 * to.0.saturating_sub(from.0) as f64 / total as f64
}

/// Measures a process's CPU use between two points in time.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    pid: Option<u32>,
    cpu_s: f64,
    at: Instant,
}

impl CpuMeter {
    /// Starts measuring this process (`None`) or `pid`.
    pub fn start(pid: Option<u32>) -> Option<Self> {
        Some(CpuMeter {
            pid,
            cpu_s: process_cpu_s(pid)?,
            at: Instant::now(),
        })
    }

    /// Percent of one core used since the start or the previous `lap`; restarts.
    pub fn lap(&mut self) -> Option<f64> {
        let now = Instant::now();
        let cpu = process_cpu_s(self.pid)?;
        let wall = now.duration_since(self.at).as_secs_f64();
        let pct = if wall > 0.0 {
            100.0 * (cpu - self.cpu_s) / wall
        } else {
            0.0
        };
        self.cpu_s = cpu;
        self.at = now;
        Some(pct)
    }

    /// Percent of one core used since the start, without restarting.
    pub fn since_start(&self) -> Option<f64> {
        let cpu = process_cpu_s(self.pid)?;
        let wall = self.at.elapsed().as_secs_f64();
        (wall > 0.0).then(|| 100.0 * (cpu - self.cpu_s) / wall)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_time() {
        let t = process_cpu_s(None).expect("/proc/self/stat is readable on Linux");
        assert!(t >= 0.0);
    }
}
