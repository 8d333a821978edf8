//! The systemd notification protocol (`sd_notify(3)`), without libsystemd: one datagram per
//! state change, sent to the Unix socket named by `NOTIFY_SOCKET`.
//!
//! Used by the daemon under `Type=notify`: [`Notifier::ready`] after the first successful load
//! of the desired state, [`Notifier::watchdog`] from the reconcile loop every
//! [`Notifier::watchdog_ping_interval`], [`Notifier::status`] for `systemctl status`,
//! [`Notifier::stopping`] on SIGTERM. Outside systemd (`NOTIFY_SOCKET` unset) every call is a
//! no-op. Reads the environment once, never writes it.

use std::fmt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The variable naming the notification socket: a path, or `@name` for an abstract socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// The variable holding the watchdog interval in microseconds (`WatchdogSec=`).
pub const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
/// The variable naming the process the watchdog applies to.
pub const WATCHDOG_PID: &str = "WATCHDOG_PID";

/// Why a notification could not be set up or sent.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `NOTIFY_SOCKET` is set to something that is not a socket address.
    #[error(
        "NOTIFY_SOCKET={value:?} is not a notification socket ({reason}); it must be an absolute path or @name, as set by systemd for Type=notify services: unset it when not running under systemd"
    )]
    InvalidSocket {
        /// The variable's value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `WATCHDOG_USEC` is not a positive whole number.
    #[error(
        "WATCHDOG_USEC={value:?} is not a positive number of microseconds; it is set by systemd from WatchdogSec=: unset it when not running under systemd"
    )]
    InvalidWatchdog {
        /// The variable's value.
        value: String,
    },
    /// The datagram could not be sent.
    #[error("cannot notify systemd through {socket} ({state}): {source}")]
    Send {
        /// The socket as given in `NOTIFY_SOCKET`.
        socket: String,
        /// The first assignment of the message, e.g. `READY=1`.
        state: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

struct Target {
    /// As written in `NOTIFY_SOCKET`, for messages.
    name: String,
    addr: SocketAddr,
    socket: UnixDatagram,
}

/// Sends notifications to systemd; a no-op when not started by systemd with `Type=notify`.
pub struct Notifier {
    target: Option<Target>,
    watchdog: Option<Duration>,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("socket", &self.target.as_ref().map(|t| t.name.as_str()))
            .field("watchdog", &self.watchdog)
            .finish()
    }
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier {
            target: None,
            watchdog: None,
        }
    }

    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the process environment.
    pub fn from_env() -> Result<Notifier, NotifyError> {
        let env = |name: &str| std::env::var(name).ok();
        Notifier::from_env_with(&env, std::process::id())
    }

    /// [`Notifier::from_env`] with an injected environment and process id (tests).
    ///
    /// The watchdog applies when `WATCHDOG_USEC` is set and `WATCHDOG_PID` is unset or equals
    /// `pid`; an unset or empty `NOTIFY_SOCKET` gives a notifier that sends nothing.
    pub fn from_env_with(
        env: &dyn Fn(&str) -> Option<String>,
        pid: u32,
    ) -> Result<Notifier, NotifyError> {
        let target = match env(NOTIFY_SOCKET).filter(|v| !v.is_empty()) {
            None => None,
            Some(value) => Some(connect_target(&value)?),
        };
        let watchdog = match env(WATCHDOG_USEC).filter(|v| !v.is_empty()) {
            None => None,
            Some(value) => {
                let usec = value
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|usec| *usec > 0)
                    .ok_or_else(|| NotifyError::InvalidWatchdog {
                        value: value.clone(),
                    })?;
                let for_us = env(WATCHDOG_PID)
                    .filter(|v| !v.is_empty())
                    .is_none_or(|p| p.trim().parse::<u32>().is_ok_and(|p| p == pid));
                for_us.then(|| Duration::from_micros(usec))
            }
        };
        Ok(Notifier { target, watchdog })
    }

    /// Whether notifications go anywhere (the process runs under systemd with `Type=notify`).
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// The watchdog timeout systemd enforces (`WatchdogSec=`), if any applies to this process.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// How often to call [`Notifier::watchdog`]: half the watchdog timeout, as systemd
    /// recommends. `None` when there is no watchdog.
    pub fn watchdog_ping_interval(&self) -> Option<Duration> {
        self.watchdog.map(|interval| interval / 2)
    }

    /// `READY=1`: start-up finished (the desired state is loaded).
    pub fn ready(&self) -> Result<(), NotifyError> {
        self.notify("READY=1")
    }

    /// `STATUS=…`: a one-line status shown by `systemctl status` (line breaks become spaces).
    pub fn status(&self, status: &str) -> Result<(), NotifyError> {
        let line: String = status
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect();
        self.notify(&format!("STATUS={line}"))
    }

    /// `WATCHDOG=1`: the service is alive.
    pub fn watchdog(&self) -> Result<(), NotifyError> {
        self.notify("WATCHDOG=1")
    }

    /// `RELOADING=1`: reloading the configuration (on SIGHUP); send [`Notifier::ready`] when done.
    pub fn reloading(&self) -> Result<(), NotifyError> {
        self.notify("RELOADING=1")
    }

    /// `STOPPING=1`: shutting down.
    pub fn stopping(&self) -> Result<(), NotifyError> {
        self.notify("STOPPING=1")
    }

    /// Sends `state` (newline-separated `KEY=value` assignments) as one datagram; nothing when
    /// disabled.
    pub fn notify(&self, state: &str) -> Result<(), NotifyError> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        target
            .socket
            .send_to_addr(state.as_bytes(), &target.addr)
            .map(|_| ())
            .map_err(|source| NotifyError::Send {
                socket: target.name.clone(),
                state: state.lines().next().unwrap_or_default().to_owned(),
                source,
            })
    }
}

fn connect_target(value: &str) -> Result<Target, NotifyError> {
    let invalid = |reason: String| NotifyError::InvalidSocket {
        value: value.to_owned(),
        reason,
    };
    let addr = if let Some(name) = value.strip_prefix('@') {
        abstract_addr(name.as_bytes()).map_err(|e| invalid(e.to_string()))?
    } else if value.starts_with('/') {
        SocketAddr::from_pathname(value).map_err(|e| invalid(e.to_string()))?
    } else {
        return Err(invalid(
            "neither an absolute path nor an abstract @name".to_owned(),
        ));
    };
    let socket = UnixDatagram::unbound().map_err(|e| invalid(e.to_string()))?;
    // Never block the reconcile loop on a stalled reader: a full queue is a failed (logged)
    // notification, not a hung daemon.
    socket
        .set_nonblocking(true)
        .map_err(|e| invalid(e.to_string()))?;
    Ok(Target {
        name: value.to_owned(),
        addr,
        socket,
    })
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_addr(name: &[u8]) -> std::io::Result<SocketAddr> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_addr(_name: &[u8]) -> std::io::Result<SocketAddr> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract sockets exist only on Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn without_systemd_everything_is_a_no_op() {
        let notifier = Notifier::from_env_with(&env_of(&[]), 42).expect("no variables is fine");
        assert!(!notifier.is_enabled());
        assert_eq!(notifier.watchdog_interval(), None);
        notifier.ready().expect("no-op");
        notifier.watchdog().expect("no-op");
    }

    #[test]
    fn watchdog_applies_only_to_its_pid() {
        let env = env_of(&[(WATCHDOG_USEC, "30000000"), (WATCHDOG_PID, "42")]);
        let ours = Notifier::from_env_with(&env, 42).expect("valid");
        assert_eq!(ours.watchdog_interval(), Some(Duration::from_secs(30)));
        assert_eq!(ours.watchdog_ping_interval(), Some(Duration::from_secs(15)));
        let other = Notifier::from_env_with(&env, 43).expect("valid");
        assert_eq!(other.watchdog_interval(), None);
        let no_pid =
            Notifier::from_env_with(&env_of(&[(WATCHDOG_USEC, "1000000")]), 7).expect("valid");
        assert_eq!(no_pid.watchdog_interval(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn bad_variables_are_named() {
        let err = Notifier::from_env_with(&env_of(&[(NOTIFY_SOCKET, "relative/sock")]), 1)
            .expect_err("relative path");
        assert!(
            err.to_string().contains("NOTIFY_SOCKET=\"relative/sock\""),
            "{err}"
        );
        let err = Notifier::from_env_with(&env_of(&[(WATCHDOG_USEC, "0")]), 1)
            .expect_err("zero watchdog");
        assert!(err.to_string().contains("WATCHDOG_USEC"), "{err}");
    }
}
