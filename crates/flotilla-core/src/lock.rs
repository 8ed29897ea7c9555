//! Who holds a deploy lock, and whether that holder is gone: a CLI killed with `kill -9` never
//! releases its lock. The owner string is `user@host (pid N)`; a lock whose holder ran on this
//! host and whose process no longer runs can be broken at once instead of waiting for it to lapse.
//! Whether a process runs is the edge's question; this module only decides.

/// The owner string of a lock taken by process `pid` of `user` on `host`.
pub fn owner(user: &str, host: &str, pid: u32) -> String {
    format!("{user}@{host} (pid {pid})")
}

/// The host and pid of an owner string written by [`owner`]; `None` for any other owner (a
/// reaper Lambda, a daemon, an older flotilla).
pub fn host_and_pid(owner: &str) -> Option<(&str, u32)> {
    let (who, rest) = owner.split_once(" (pid ")?;
    let pid = rest.strip_suffix(')')?.parse::<u32>().ok()?;
    let (_, host) = who.rsplit_once('@')?;
    (!host.is_empty()).then_some((host, pid))
}

/// Whether the lock held by `owner` can be broken: its holder ran on `this_host` and
/// `alive(pid)` says that process no longer runs. An owner of another host, or one this module
/// cannot read, is never judged gone.
pub fn holder_is_gone(owner: &str, this_host: &str, alive: impl FnOnce(u32) -> bool) -> bool {
    match host_and_pid(owner) {
        Some((host, pid)) => host == this_host && !alive(pid),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_strings_round_trip() {
        let o = owner("alice", "box.example", 4242);
        assert_eq!(o, "alice@box.example (pid 4242)");
        assert_eq!(host_and_pid(&o), Some(("box.example", 4242)));
        assert_eq!(host_and_pid("reaper lambda (request abc)"), None);
        assert_eq!(host_and_pid("alice@ (pid 1)"), None);
        assert_eq!(host_and_pid("alice@box (pid x)"), None);
    }

    #[test]
    fn only_a_dead_holder_on_this_host_is_gone() {
        let o = owner("alice", "box", 7);
        assert!(holder_is_gone(&o, "box", |pid| pid != 7));
        assert!(!holder_is_gone(&o, "box", |_| true), "still running");
        assert!(!holder_is_gone(&o, "other", |_| false), "another host");
        assert!(!holder_is_gone("reaper lambda (request r)", "box", |_| {
            false
        }));
    }
}
