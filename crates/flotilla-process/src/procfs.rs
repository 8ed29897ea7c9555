//! What flotilla reads about a process from `/proc/<pid>/stat`: its state, parent, process group
//! and start time. The start time (field 22, clock ticks since boot) never changes for a process
//! and differs for a later process that reuses its id, so a recorded `(pid, start time)` names one
//! process for good: the host supervisor adopts or stops a recorded instance only when both match.

/// The fields of `/proc/<pid>/stat` flotilla uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// The state letter (`R`, `S`, `Z`, ...).
    pub state: char,
    /// The parent process id.
    pub ppid: u32,
    /// The process group id.
    pub pgrp: u32,
    /// When it started, in clock ticks since boot.
    pub start_time: u64,
}

impl Stat {
    /// Whether it has exited and waits to be reaped.
    pub fn zombie(&self) -> bool {
        self.state == 'Z'
    }
}

/// Parses one `/proc/<pid>/stat` text. The command (field 2) is in parentheses and may itself hold
/// spaces and parentheses, so the fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // Field 3 onwards: state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt
    // utime stime cutime cstime priority nice num_threads itrealvalue starttime ...
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// The stat of `pid`, if it exists and this process can read it.
pub fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`): start times count from boot, so a start
/// time names a process only together with the boot it was read in.
pub fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_owned()).filter(|id| !id.is_empty())
}

/// Whether `pid` runs (exists and is not a zombie).
pub fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|s| !s.zombie())
}

/// Whether `pid` is still the live process that started at `start_time` and leads its own process
/// group: not gone, not a zombie, and not a newer process that reused the id.
pub fn same_group_leader(pid: u32, start_time: u64) -> bool {
    stat(pid).is_some_and(|s| !s.zombie() && s.start_time == start_time && s.pgrp == pid)
}

/// Whether any live (not zombie) process is in process group `pgid`.
pub fn group_alive(pgid: u32) -> bool {
    pids()
        .into_iter()
        .any(|pid| stat(pid).is_some_and(|s| s.pgrp == pgid && !s.zombie()))
}

/// Every process id in `/proc`.
pub fn pids() -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .collect()
}

/// This machine's host name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`), as deploy lock owners
/// name it: the CLI writes it, and the host daemon compares it to tell a holder on this machine.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_counted_from_the_last_parenthesis() {
        let text = "4242 (sh -c (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 \
                    2424832 200 18446744073709551615 1 1 0 0 0 0 0 0 65536 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                state: 'S',
                ppid: 1,
                pgrp: 4242,
                start_time: 987654
            })
        );
        assert_eq!(parse_stat("12 (cut short) R 1"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_reads_as_alive_with_a_stable_start_time() {
        let me = std::process::id();
        let first = stat(me).expect("own stat");
        assert!(alive(me));
        assert_eq!(stat(me).map(|s| s.start_time), Some(first.start_time));
    }
}
