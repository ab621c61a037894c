//! The open-files limit: raised from the soft limit to the hard limit at start-up, then
//! checked against what the run needs, so that a run too big for it fails before it
//! starts instead of with `EMFILE` halfway through.

use std::io;

/// Descriptors a run needs besides its clients' connections: the runtime's own, standard
/// streams, admin requests, the liveness probe.
pub const FD_HEADROOM: u64 = 64;

/// The open-files limit before and after [`raise_fd_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit found at start-up.
    pub before: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit (the most the soft limit can be raised to without privileges).
    pub hard: u64,
}

impl FdLimit {
    /// `open files limit: 1024 -> 20000`, or that it was already at the hard limit.
    pub fn describe(&self) -> String {
        if self.soft > self.before {
            format!("open files limit: {} -> {}", self.before, self.soft)
        } else if self.soft >= self.hard {
            format!("open files limit: {} (the hard limit)", self.soft)
        } else {
            format!(
                "open files limit: {} (could not raise it to the hard limit, {})",
                self.soft, self.hard
            )
        }
    }
}

/// Descriptors a run with `clients` concurrent connections needs.
pub fn fds_needed(clients: usize) -> u64 {
    clients as u64 + FD_HEADROOM
}

/// Fails, saying how to raise the limit, when `clients` connections plus headroom do not
/// fit in the (already raised) soft limit.
pub fn check_fd_limit(limit: &FdLimit, clients: usize) -> Result<(), String> {
    let needed = fds_needed(clients);
    if needed <= limit.soft {
        return Ok(());
    }
    let raise = if limit.soft < limit.hard {
        format!(
            "the hard limit is {} but the soft limit could not be raised above {}",
            limit.hard, limit.soft
        )
    } else {
        format!("the hard limit is {}", limit.hard)
    };
    Err(format!(
        "--clients {clients} needs about {needed} open files ({clients} connections + {FD_HEADROOM} headroom), \
         but {raise}. Raise the hard limit for the shell that starts tethernet-soak \
         (as root: `ulimit -Hn {needed}` then `ulimit -n {needed}`, or `prlimit --pid $$ --nofile={needed}:{needed}`; \
         permanently: `nofile` in /etc/security/limits.conf or `LimitNOFILE=` in a systemd unit) \
         and the server's too, or use fewer --clients"
    ))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (or as close as the system allows:
/// Linux refuses more than `fs.nr_open`, macOS more than `OPEN_MAX`, when the hard limit
/// is unlimited). Never lowers it.
#[cfg(unix)]
pub fn raise_fd_limit() -> io::Result<FdLimit> {
    let (before, hard) = nofile_limit(None)?;
    let mut soft = before;
    if before < hard {
        for target in [hard, hard.min(1 << 20), hard.min(10_240)] {
            if target <= before {
                break;
            }
            if let Ok((now, _)) = nofile_limit(Some((target, hard))) {
                soft = now;
                break;
            }
        }
    }
    Ok(FdLimit { before, soft, hard })
}

/// Not raised on this platform: reports an unknown limit as unlimited.
#[cfg(not(unix))]
pub fn raise_fd_limit() -> io::Result<FdLimit> {
    Ok(FdLimit {
        before: u64::MAX,
        soft: u64::MAX,
        hard: u64::MAX,
    })
}

/// Sets `RLIMIT_NOFILE` to `set` (soft, hard) when given, then returns it (soft, hard).
/// The only `unsafe` of the crate.
#[cfg(unix)]
#[allow(unsafe_code)]
// `rlim_t` is `u64` on Linux and macOS but not on every Unix.
#[allow(clippy::unnecessary_cast)]
fn nofile_limit(set: Option<(u64, u64)>) -> io::Result<(u64, u64)> {
    if let Some((soft, hard)) = set {
        let new = libc::rlimit {
            rlim_cur: soft as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: `new` is a valid, initialized `rlimit` that outlives the call;
        // setrlimit only reads it and keeps no pointer to it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let mut now = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `now` is a valid, writable `rlimit` that outlives the call; getrlimit only
    // writes into it and keeps no pointer to it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((now.rlim_cur as u64, now.rlim_max as u64))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_raised_to_at_least_the_old_soft_limit() {
        let (soft, hard) = nofile_limit(None).unwrap();
        // Lower the soft limit a little first (always allowed), so there is something to
        // raise; this test binary needs few descriptors.
        let lowered = soft.min(512);
        nofile_limit(Some((lowered, hard))).unwrap();
        let limit = raise_fd_limit().unwrap();
        assert_eq!(limit.before, lowered);
        assert!(limit.soft >= limit.before, "{limit:?}");
        assert!(
            limit.soft >= soft,
            "back to at least the old soft limit {soft}: {limit:?}"
        );
        assert_eq!(limit.hard, hard);
        assert_eq!(nofile_limit(None).unwrap(), (limit.soft, hard));
        assert!(limit.describe().starts_with("open files limit: "));
        // Raising again changes nothing and never lowers it.
        let again = raise_fd_limit().unwrap();
        assert_eq!(again.soft, limit.soft);
        assert!(again.soft >= again.before);
    }

    #[test]
    fn a_run_too_big_for_the_hard_limit_is_refused_with_how_to_raise_it() {
        let limit = FdLimit {
            before: 1024,
            soft: 20_000,
            hard: 20_000,
        };
        assert!(check_fd_limit(&limit, 1000).is_ok());
        assert!(check_fd_limit(&limit, 20_000 - FD_HEADROOM as usize).is_ok());
        let error = check_fd_limit(&limit, 30_000).unwrap_err();
        assert!(error.contains("--clients 30000"), "{error}");
        assert!(error.contains("hard limit is 20000"), "{error}");
        assert!(error.contains("ulimit -Hn 30064"), "{error}");
        assert_eq!(
            limit.describe(),
            "open files limit: 1024 -> 20000",
            "the start-up line"
        );
    }
}
