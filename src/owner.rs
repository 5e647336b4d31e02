//! Who owns a test version, a lock or a lease: the process running it, as `host:pid:start`, so
//! the next command can tell a run still going from one left by a killed process. It sits at the
//! top of the crate and depends on nothing of ours, so `engine`, `store` and `testenv` can all ask.

/// The owner string of this process.
pub fn current() -> String {
    let pid = std::process::id();
    format!("{}:{pid}:{}", hostname(), start_time(pid).unwrap_or(0))
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The process's start time in clock ticks since boot (field 22 of /proc/PID/stat): a pid reused
/// by another process has another start time.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after its closing paren are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The host and pid of an owner string, `("?", "?")` where they are missing: for messages.
pub fn host_pid(owner: &str) -> (String, String) {
    let mut parts = owner.rsplitn(3, ':');
    let _start = parts.next();
    let pid = parts.next().unwrap_or("?").to_string();
    let host = parts.next().unwrap_or("?").to_string();
    (host, pid)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    Dead,
    /// Another host: only the TTL can tell.
    Unknown,
}

pub fn liveness(owner: &str) -> Liveness {
    let mut parts = owner.rsplitn(3, ':');
    let (Some(start), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        return Liveness::Unknown;
    };
    if host != hostname() {
        return Liveness::Unknown;
    }
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return Liveness::Unknown;
    };
    match start_time(pid) {
        Some(s) if s == start || start == 0 => Liveness::Alive,
        _ => Liveness::Dead,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_dead_one_is_not() {
        assert_eq!(liveness(&current()), Liveness::Alive);
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let pid = child.id();
        let owner = format!("{}:{pid}:{}", hostname(), start_time(pid).unwrap_or(1));
        child.wait().expect("wait");
        assert_eq!(liveness(&owner), Liveness::Dead);
        assert_eq!(liveness("elsewhere:1:1"), Liveness::Unknown);
        assert_eq!(liveness("garbage"), Liveness::Unknown);
    }
}
