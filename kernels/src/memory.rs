//! How much host memory this process may still use, so that a movie too big for it is refused
//! with a message before anything its size is allocated (an allocation that fails aborts the
//! process, and the worker with it).
//!
//! [`host_available`] is the smallest of: the kernel's `MemAvailable` (`/proc/meminfo`), what
//! the process's cgroup (v2: `memory.max` − `memory.current`; v1: `memory.limit_in_bytes` −
//! `memory.usage_in_bytes`) still allows, the soft address-space limit (`ulimit -v`) less what
//! is mapped, and `WARP_MEMORY_LIMIT` (bytes, or with a `K`, `M`, `G` or `T` suffix) when set.
//! Linux only; elsewhere, or when none can be read, it says nothing and nothing is refused.

use std::path::Path;

/// The bytes this process may still allocate and which limit said so; `None` when no limit
/// could be read.
pub fn host_available() -> Option<(u64, &'static str)> {
    let mut best: Option<(u64, &'static str)> = None;
    let mut take = |v: Option<u64>, what: &'static str| {
        if let Some(v) = v
            && best.is_none_or(|(b, _)| v < b)
        {
            best = Some((v, what));
        }
    };
    take(env_limit(), "WARP_MEMORY_LIMIT");
    take(mem_available(), "MemAvailable in /proc/meminfo");
    take(cgroup_available(), "the cgroup's memory limit");
    take(address_space_left(), "the address-space limit (ulimit -v)");
    best
}

/// Parses `123`, `512M`, `4G`, `1.5T` (powers of 1024) into bytes.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        (i, 'T' | 't') => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some((v * mult as f64) as u64)
}

/// Bytes as a person reads them: `512 B`, `3.2 MiB`, `40.0 GiB`.
pub fn format_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn env_limit() -> Option<u64> {
    parse_bytes(&std::env::var("WARP_MEMORY_LIMIT").ok()?)
}

/// A `Key:   123 kB` line of a `/proc` file, in bytes.
fn proc_kb(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

fn mem_available() -> Option<u64> {
    proc_kb(
        &std::fs::read_to_string("/proc/meminfo").ok()?,
        "MemAvailable:",
    )
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn cgroup_available() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            // cgroup v2: "0::/path"; "max" means no limit.
            let dir = Path::new("/sys/fs/cgroup").join(rel);
            let max = read_u64(&dir.join("memory.max"))?;
            let used = read_u64(&dir.join("memory.current")).unwrap_or(0);
            return Some(max.saturating_sub(used));
        }
        if controllers.split(',').any(|c| c == "memory") {
            let dir = Path::new("/sys/fs/cgroup/memory").join(rel);
            let max = read_u64(&dir.join("memory.limit_in_bytes"))?;
            // v1 says "no limit" with a huge number.
            if max >= 1 << 60 {
                return None;
            }
            let used = read_u64(&dir.join("memory.usage_in_bytes")).unwrap_or(0);
            return Some(max.saturating_sub(used));
        }
    }
    None
}

fn address_space_left() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))?;
    let soft: u64 = line["Max address space".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let mapped = proc_kb(
        &std::fs::read_to_string("/proc/self/status").ok()?,
        "VmSize:",
    )?;
    Some(soft.saturating_sub(mapped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_bytes("123"), Some(123));
        assert_eq!(parse_bytes("4G"), Some(4 << 30));
        assert_eq!(parse_bytes(" 512m "), Some(512 << 20));
        assert_eq!(parse_bytes("1.5K"), Some(1536));
        assert_eq!(parse_bytes("-1G"), None);
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(40 << 30), "40.0 GiB");
    }

    #[test]
    fn this_machine_reports_some_limit_below_its_ram() {
        // Linux always has MemAvailable; the smallest limit is at most that.
        let (avail, what) = host_available().expect("a limit on Linux");
        let ram = proc_kb(
            &std::fs::read_to_string("/proc/meminfo").unwrap(),
            "MemTotal:",
        )
        .unwrap();
        assert!(avail > 0 && avail <= ram, "{avail} from {what}, RAM {ram}");
    }
}
