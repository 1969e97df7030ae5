//! Resource use of a process from `/proc`: resident memory and CPU time, sampled by pid so the
//! bench can watch a server it does not run in.

use serde::Serialize;

/// One sample of a process.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcSample {
    /// Resident set size, bytes.
    pub rss_bytes: u64,
    /// User + system CPU time, seconds.
    pub cpu_s: f64,
    /// Of it, the time in the kernel (system), seconds.
    pub system_s: f64,
}

/// Samples process `pid` (`None`: this process).
pub fn sample(pid: Option<i32>) -> Result<ProcSample, String> {
    let process = match pid {
        Some(pid) => procfs::process::Process::new(pid),
        None => procfs::process::Process::myself(),
    }
    .map_err(|e| format!("/proc of pid {pid:?}: {e}"))?;
    let stat = process
        .stat()
        .map_err(|e| format!("/proc/{}/stat: {e}", process.pid))?;
    let ticks = procfs::ticks_per_second() as f64;
    let status = process
        .status()
        .map_err(|e| format!("/proc/{}/status: {e}", process.pid))?;
    Ok(ProcSample {
        rss_bytes: status.vmrss.unwrap_or(0) * 1024,
        cpu_s: (stat.utime + stat.stime) as f64 / ticks,
        system_s: stat.stime as f64 / ticks,
    })
}

/// This process's open-file soft limit.
pub fn nofile_limit() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(0)
}

/// Raises this process's open-file soft limit to the hard limit; returns the new limit.
pub fn raise_nofile_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_uses_memory_and_cpu() {
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let s = sample(None).unwrap();
        assert!(s.rss_bytes > 1_000_000, "{s:?}");
        assert!(s.cpu_s > 0.0, "{s:?}");
        assert!(sample(Some(i32::MAX)).is_err());
    }
}
