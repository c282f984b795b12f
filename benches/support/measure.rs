//! What the interleaved-rounds benches measure beside wall-clock time: CPU
//! seconds from `/proc`, and the spread of per-round figures. Included with
//! `#[path = "support/measure.rs"] mod measure;` (each bench uses part of it).
#![allow(dead_code)]

/// Seconds of CPU (user + system) in a `/proc/…/stat` line: fields 14 and 15,
/// in clock ticks (`USER_HZ`, 100 on Linux). The command name, in parentheses,
/// may hold spaces: fields are counted after its closing one.
pub fn stat_cpu(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// CPU seconds of process `pid` (`"self"` for this one) so far, all its
/// threads, ended ones included; 0 when it cannot be read.
pub fn process_cpu(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat_cpu(&stat))
        .unwrap_or(0.0)
}

/// CPU seconds of this process's live threads named `name`.
pub fn threads_cpu(name: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.trim() == name)
        })
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .filter_map(|stat| stat_cpu(&stat))
        .sum()
}

/// The smallest and the largest of `values` (infinities when empty).
pub fn min_max(values: &[f64]) -> (f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

/// `min–max` of `values` with `decimals` decimals, `n/a` when empty.
pub fn fmt_range(values: &[f64], decimals: usize) -> String {
    if values.is_empty() {
        return "n/a".to_string();
    }
    let (min, max) = min_max(values);
    format!("{min:.decimals$}–{max:.decimals$}")
}
