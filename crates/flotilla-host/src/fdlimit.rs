//! File descriptors and the router's connection limit: the daemon raises its soft
//! `RLIMIT_NOFILE` to the hard limit at start ([`raise_nofile`], the edge), then derives one
//! connection cap shared by every router worker from it ([`connection_budget`], pure).
//!
//! Without this, a cap at (or above) the descriptor limit never fires: the process runs out of
//! descriptors first, `accept` fails, and every client waits in the backlog instead of getting a
//! prompt `503`.

use flotilla_proxy::DEFAULT_OVERFLOW;
use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors kept back from the router whatever the limit: the router and status-page
/// listeners and the status page's connections, the RPC socket and its clients, the state
/// database with its WAL and shared memory, the daemon's and the instances' log files, pipes to
/// instances, health-check connections, release snapshots being copied.
pub const MIN_RESERVE: u64 = 128;

/// What each proxied connection costs: the client's socket and the upstream's (pooled idle
/// upstream connections never outnumber the client connections that once used them).
pub const FDS_PER_CONNECTION: u64 = 2;

/// The router's share of the descriptor limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The descriptor limit the budget was derived from.
    pub fd_limit: u64,
    /// Descriptors kept back for everything but proxied connections.
    pub reserve: u64,
    /// Refusals (`503`s being written, one descriptor each) pending at once, at most.
    pub overflow: usize,
    /// Client connections open at once, across every router worker.
    pub max_connections: usize,
    /// The configured cap, when it was above what the descriptor limit allows and so lowered.
    pub clamped_from: Option<usize>,
}

/// The connection cap for a process allowed `fd_limit` descriptors, honouring `configured` when
/// the limit allows it.
///
/// A tenth of the limit (at least [`MIN_RESERVE`]) is kept back; of the rest, a sixteenth (at
/// most [`DEFAULT_OVERFLOW`]) goes to pending refusals, and what is left is divided by
/// [`FDS_PER_CONNECTION`]. The cap is at least 1, so a tiny limit still serves (and refuses).
pub fn connection_budget(fd_limit: u64, configured: Option<usize>) -> Budget {
    let reserve = MIN_RESERVE.max(fd_limit / 10).min(fd_limit);
    let usable = fd_limit - reserve;
    let overflow = (usable / 16).min(DEFAULT_OVERFLOW as u64);
    let derived = ((usable - overflow) / FDS_PER_CONNECTION).max(1);
    let derived = usize::try_from(derived).unwrap_or(usize::MAX);
    let (max_connections, clamped_from) = match configured {
        Some(wanted) if wanted > derived => (derived, Some(wanted)),
        Some(wanted) => (wanted.max(1), None),
        None => (derived, None),
    };
    Budget {
        fd_limit,
        reserve,
        overflow: usize::try_from(overflow).unwrap_or(DEFAULT_OVERFLOW),
        max_connections,
        clamped_from,
    }
}

/// What [`raise_nofile`] did.
#[derive(Debug)]
pub struct Raised {
    /// The soft limit found at start.
    pub before: u64,
    /// The soft limit now (the hard limit, unless raising failed).
    pub after: u64,
    /// The hard limit.
    pub hard: u64,
    /// Why the soft limit could not be raised, if it could not.
    pub error: Option<nix::Error>,
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit. Processes it starts afterwards
/// (the app's instances) inherit the raised limit.
pub fn raise_nofile() -> nix::Result<Raised> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= hard {
        return Ok(Raised {
            before: soft,
            after: soft,
            hard,
            error: None,
        });
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            let (now, _) = getrlimit(Resource::RLIMIT_NOFILE)?;
            Ok(Raised {
                before: soft,
                after: now,
                hard,
                error: None,
            })
        }
        Err(error) => Ok(Raised {
            before: soft,
            after: soft,
            hard,
            error: Some(error),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_budget_table() {
        // (fd limit, configured) -> (max connections, reserve, overflow, clamped from)
        fn check(
            fd_limit: u64,
            configured: Option<usize>,
            expected: (usize, u64, usize, Option<usize>),
        ) {
            let b = connection_budget(fd_limit, configured);
            assert_eq!(
                (b.max_connections, b.reserve, b.overflow, b.clamped_from),
                expected,
                "fd limit {fd_limit}, configured {configured:?}"
            );
            // Whatever the limit, the router's worst case fits in it beside the reserve.
            if fd_limit > MIN_RESERVE {
                let worst = b.max_connections as u64 * FDS_PER_CONNECTION + b.overflow as u64;
                assert!(worst + b.reserve <= fd_limit, "{b:?}");
            }
        }
        // The machine: 20 000 descriptors used to allow 2 x 10 000 connections.
        check(20_000, None, (8_936, 2_000, 128, None));
        check(1_024, None, (420, 128, 56, None));
        check(65_536, None, (29_427, 6_553, 128, None));
        check(1_048_576, None, (471_795, 104_857, 128, None));
        check(256, None, (60, 128, 8, None));
        // Tiny limits still allow one connection.
        check(128, None, (1, 128, 0, None));
        check(10, None, (1, 10, 0, None));
        // A configured cap below what the limit allows is kept; one above is lowered.
        check(20_000, Some(500), (500, 2_000, 128, None));
        check(20_000, Some(10_000), (8_936, 2_000, 128, Some(10_000)));
        check(20_000, Some(0), (1, 2_000, 128, None));
    }

    #[test]
    fn raising_the_soft_limit_reaches_the_hard_limit() {
        let raised = raise_nofile().expect("getrlimit works");
        assert!(raised.error.is_none(), "{raised:?}");
        assert_eq!(raised.after, raised.hard, "{raised:?}");
        assert!(raised.after >= raised.before);
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        assert_eq!((soft, hard), (raised.after, raised.hard));
    }
}
