//! Who already listens on a TCP port: the listening sockets of `/proc/net/tcp{,6}` on that port,
//! matched by inode to the `/proc/<pid>/fd` entries this user can read. Used to refuse a router
//! port another process (another flotilla daemon included) listens on, naming that process.

use std::path::Path;

/// The inodes of the sockets listening on `port` in one `/proc/net/tcp` or `/proc/net/tcp6` text.
pub fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    let mut out = Vec::new();
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
        let (Some(local), Some(state), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9))
        else {
            continue;
        };
        // 0A is TCP_LISTEN.
        if *state != "0A" {
            continue;
        }
        let Some(local_port) = local
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
        else {
            continue;
        };
        if local_port == port
            && let Ok(inode) = inode.parse::<u64>()
            && inode != 0
        {
            out.push(inode);
        }
    }
    out
}

/// A description of what listens on `port`: `pid 123 (flotilla host serve)` for each process this
/// user can see, or a sentence saying that another user's process holds it.
pub fn describe(port: u16) -> String {
    describe_in(Path::new("/proc"), port)
}

fn describe_in(proc_root: &Path, port: u16) -> String {
    let mut inodes = Vec::new();
    for table in ["net/tcp", "net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(proc_root.join(table)) {
            inodes.extend(listening_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return format!("something already listens on port {port}");
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let mut holders: Vec<String> = Vec::new();
    let me = std::process::id();
    if let Ok(entries) = std::fs::read_dir(proc_root) {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
                continue;
            };
            let holds = fds.flatten().any(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|target| wanted.iter().any(|w| target.as_os_str() == w.as_str()))
            });
            if holds {
                let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                let cmd: Vec<String> = cmdline
                    .split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                let cmd = cmd.join(" ");
                let cmd: String = cmd.chars().take(120).collect();
                holders.push(format!("pid {pid} ({cmd})"));
            }
        }
    }
    if holders.is_empty() {
        format!(
            "another process already listens on port {port} (not one of this user's: \
             `ss -ltnp 'sport = :{port}'` as root names it)"
        )
    } else {
        format!(
            "another process already listens on port {port}: {}",
            holders.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 4343 1 0000000000000000 20 4 30 10 -1
   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn only_listening_sockets_on_the_port_are_found() {
        assert_eq!(listening_inodes(TCP, 8080), vec![4242]);
        assert_eq!(listening_inodes(TCP, 22), vec![99]);
        assert!(listening_inodes(TCP, 9090).is_empty());
        assert!(listening_inodes("garbage\nmore garbage", 8080).is_empty());
    }

    #[test]
    fn a_listener_of_this_user_is_named_with_its_pid_and_command() {
        // A `sleep` child inherits a listening socket (its close-on-exec flag cleared), so the
        // socket belongs to another process of this user, the way a second daemon's would.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        nix::fcntl::fcntl(
            &listener,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .expect("clear close-on-exec");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        drop(listener);
        let text = describe(port);
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            text.contains(&format!("port {port}: pid {} (sleep 30)", child.id())),
            "{text}"
        );
    }
}
