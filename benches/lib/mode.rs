//! How a podcache consumer waits: [`PodMode`] pairs a publisher [`WakePolicy`] with a receive
//! call.

use podcache_reader::{Msg, RecvError, Subscriber};
use podcache_writer::WakePolicy;
use std::time::{Duration, Instant};

/// A podcache wait mode: the publisher's wake policy and the consumer's receive call.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PodMode {
    /// `WakePolicy::Never`, consumer in `recv_spin`.
    Spin,
    /// `WakePolicy::Never`, consumer polling `try_recv` in a loop (no clock reads).
    Poll,
    /// `WakePolicy::DEFAULT`, consumer in `recv_timeout` (spins, then sleeps on the futex).
    Adaptive,
    /// `WakePolicy::Always` (a `FUTEX_WAKE` per publish), consumer in `recv_timeout`.
    Always,
    /// A user's loop: the publisher's default policy, and the consumer calls `recv_spin` once
    /// per message (no `try_recv` drain in front of it).
    User,
}

impl PodMode {
    /// Every mode.
    pub const ALL: [PodMode; 5] = [PodMode::Spin, PodMode::Poll, PodMode::Adaptive, PodMode::Always, PodMode::User];

    /// Short name, used in bench ids and passed to child processes.
    pub fn name(self) -> &'static str {
        match self {
            PodMode::Spin => "spin",
            PodMode::Poll => "poll",
            PodMode::Adaptive => "adaptive",
            PodMode::Always => "always",
            PodMode::User => "user",
        }
    }

    /// The mode called `s` (panics on an unknown name).
    pub fn from_name(s: &str) -> PodMode {
        PodMode::ALL.into_iter().find(|m| m.name() == s).unwrap_or_else(|| panic!("unknown mode {s}"))
    }

    /// The publisher's wake policy in this mode.
    pub fn policy(self) -> WakePolicy {
        match self {
            PodMode::Spin | PodMode::Poll => WakePolicy::Never,
            PodMode::Adaptive | PodMode::User => WakePolicy::DEFAULT,
            PodMode::Always => WakePolicy::Always,
        }
    }

    /// Receive the next message the way this mode does, waiting at most `timeout`.
    pub fn recv(self, sub: &mut Subscriber, buf: &mut [u8], timeout: Duration) -> Result<Option<Msg>, RecvError> {
        match self {
            PodMode::Spin | PodMode::User => sub.recv_spin(buf, timeout),
            PodMode::Poll => {
                // Read the clock only every 4096 empty polls, so the hot path has none.
                let mut deadline = None;
                let mut polls = 0u32;
                loop {
                    if let Some(m) = sub.try_recv(buf)? {
                        return Ok(Some(m));
                    }
                    polls = polls.wrapping_add(1);
                    if polls.is_multiple_of(4096) && Instant::now() >= *deadline.get_or_insert(Instant::now() + timeout)
                    {
                        return Ok(None);
                    }
                    std::hint::spin_loop();
                }
            }
            PodMode::Adaptive | PodMode::Always => sub.recv_timeout(buf, timeout),
        }
    }
}
