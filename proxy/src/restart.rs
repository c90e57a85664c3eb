//! When a stdio downstream that stopped on its own may be started again:
//! its server's `restart_policy`, and a backoff for one that keeps failing.
//!
//! Children start lazily (on the first call or listing that needs them), so
//! "restart" means "start again on the next need". A failure is an exit the
//! proxy did not ask for (any status, or a signal), a child that closed its
//! output, or a start that did not get through `initialize`.
//!
//! * `always`: started again after any exit.
//! * `on-failure` (the default): started again after a non-zero status or a
//!   signal; a child that exits with status 0 on its own stays stopped.
//! * `never`: a child that exited stays stopped.
//!
//! A stopped child starts again when its server's configuration changes.
//! A start that fails is retried under the same backoff whatever the policy:
//! the server never ran, so there was nothing to not restart.
//!
//! Backoff: the first failure is retried at once; each further failure in a
//! row doubles the wait, from 2 s up to 60 s. A child that ran for 60 s or
//! more before failing starts a new row.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use mcplexer_proto::v1 as pb;

/// The longest wait between starts, and the uptime that forgives earlier
/// failures.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The wait after the second failure in a row; doubled for each further one.
const FIRST_BACKOFF: Duration = Duration::from_secs(2);

/// A server's `restart_policy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Never start again after an exit.
    Never,
    /// Start again after a failed exit (the default).
    OnFailure,
    /// Start again after any exit.
    Always,
}

impl Policy {
    /// The policy named in the server's configuration; the vault validates
    /// it, so anything else is the default.
    pub fn of(server: &pb::DownstreamServer) -> Self {
        match server.restart_policy.as_str() {
            "never" => Self::Never,
            "always" => Self::Always,
            _ => Self::OnFailure,
        }
    }

    /// Its configuration name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Never => "never",
            Self::OnFailure => "on-failure",
            Self::Always => "always",
        }
    }
}

/// How a child ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// It exited on its own (`None`: its status could not be read).
    Exited(Option<ExitStatus>),
    /// It never got through `initialize`.
    StartFailed(String),
}

impl Ending {
    /// Whether it counts as a failure: anything but a status-0 exit.
    fn failed(&self) -> bool {
        !matches!(self, Self::Exited(Some(status)) if status.success())
    }

    /// A short description for errors and logs.
    pub fn describe(&self) -> String {
        use std::os::unix::process::ExitStatusExt;
        match self {
            Self::Exited(Some(status)) => match (status.code(), status.signal()) {
                (Some(code), _) => format!("exited with status {code}"),
                (None, Some(signal)) => format!("was killed by signal {signal}"),
                (None, None) => format!("exited ({status})"),
            },
            Self::Exited(None) => "exited".to_owned(),
            Self::StartFailed(reason) => format!("could not be started: {reason}"),
        }
    }
}

/// What may happen now for a child that stopped on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It may be started.
    Start,
    /// Not before this instant.
    Wait(Instant),
    /// Not until its server's configuration changes; the policy that says
    /// so.
    Stay(Policy),
}

/// The failures of one (server, scope) child, for the server configuration
/// they happened under.
#[derive(Clone, Debug)]
pub struct History {
    server: pb::DownstreamServer,
    /// Failures in a row.
    pub failures: u32,
    /// The last ending.
    pub last: Ending,
    verdict: Verdict,
}

impl History {
    /// Records how a child of `server` ended after running for `uptime`,
    /// with `before` the history so far.
    pub fn record(
        before: Option<&Self>,
        server: &pb::DownstreamServer,
        ending: Ending,
        uptime: Duration,
        now: Instant,
    ) -> Self {
        let policy = Policy::of(server);
        let earlier = before
            .filter(|h| h.server == *server && uptime < MAX_BACKOFF)
            .map_or(0, |h| h.failures);
        let failures = if ending.failed() {
            earlier.saturating_add(1)
        } else {
            0
        };
        let restartable = match (&ending, policy) {
            (Ending::StartFailed(_), _) | (_, Policy::Always) => true,
            (Ending::Exited(_), Policy::Never) => false,
            (Ending::Exited(_), Policy::OnFailure) => ending.failed(),
        };
        let verdict = if !restartable {
            Verdict::Stay(policy)
        } else if failures <= 1 {
            Verdict::Start
        } else {
            let doublings = (failures - 2).min(16);
            Verdict::Wait(now + (FIRST_BACKOFF * (1 << doublings)).min(MAX_BACKOFF))
        };
        Self {
            server: server.clone(),
            failures,
            last: ending,
            verdict,
        }
    }

    /// What may happen at `now` for a child of `server` (as configured
    /// now: a changed configuration clears the history).
    pub fn verdict(&self, server: &pb::DownstreamServer, now: Instant) -> Verdict {
        if self.server != *server {
            return Verdict::Start;
        }
        match self.verdict {
            Verdict::Wait(at) if at <= now => Verdict::Start,
            ref verdict => verdict.clone(),
        }
    }

    /// When a waiting child may start again.
    pub fn retry_at(&self) -> Option<Instant> {
        match self.verdict {
            Verdict::Wait(at) => Some(at),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    fn server(policy: &str) -> pb::DownstreamServer {
        pb::DownstreamServer {
            id: "s".into(),
            restart_policy: policy.into(),
            ..Default::default()
        }
    }

    fn exit(code: i32) -> Ending {
        Ending::Exited(Some(ExitStatus::from_raw(code << 8)))
    }

    fn killed() -> Ending {
        Ending::Exited(Some(ExitStatus::from_raw(9)))
    }

    /// Records `endings` one after another, each after `uptime`.
    fn run(server: &pb::DownstreamServer, endings: &[Ending], uptime: Duration) -> History {
        let now = Instant::now();
        let mut history: Option<History> = None;
        for ending in endings {
            history = Some(History::record(
                history.as_ref(),
                server,
                ending.clone(),
                uptime,
                now,
            ));
        }
        history.unwrap()
    }

    #[test]
    fn each_policy_decides_on_the_exit_status() {
        let now = Instant::now();
        let cases = [
            ("never", exit(1), Verdict::Stay(Policy::Never)),
            ("never", exit(0), Verdict::Stay(Policy::Never)),
            ("never", killed(), Verdict::Stay(Policy::Never)),
            ("on-failure", exit(1), Verdict::Start),
            ("on-failure", killed(), Verdict::Start),
            ("on-failure", Ending::Exited(None), Verdict::Start),
            ("on-failure", exit(0), Verdict::Stay(Policy::OnFailure)),
            ("", exit(0), Verdict::Stay(Policy::OnFailure)),
            ("always", exit(0), Verdict::Start),
            ("always", exit(2), Verdict::Start),
            ("never", Ending::StartFailed("x".into()), Verdict::Start),
        ];
        for (policy, ending, want) in cases {
            let server = server(policy);
            let history = History::record(None, &server, ending.clone(), Duration::ZERO, now);
            assert_eq!(history.verdict(&server, now), want, "{policy} {ending:?}");
        }
    }

    #[test]
    fn failures_in_a_row_double_the_wait_up_to_the_cap() {
        let server = server("always");
        let waits: Vec<u64> = (1..=9)
            .map(|n| {
                let now = Instant::now();
                let endings = vec![killed(); n];
                let history = run(&server, &endings, Duration::from_secs(1));
                assert_eq!(history.failures, n as u32);
                history
                    .retry_at()
                    .map_or(0, |at| at.saturating_duration_since(now).as_secs())
            })
            .collect();
        // Allow for the instants taken inside `run` being a little later.
        let want = [0, 2, 4, 8, 16, 32, 60, 60, 60];
        for (got, want) in waits.iter().zip(want) {
            assert!(*got == want || *got + 1 == want, "{waits:?}");
        }
    }

    #[test]
    fn a_wait_ends_and_a_long_run_or_a_clean_exit_forgives() {
        let server = server("always");
        let now = Instant::now();
        let history = run(&server, &[killed(), killed()], Duration::ZERO);
        let at = history.retry_at().unwrap();
        assert!(matches!(history.verdict(&server, now), Verdict::Wait(_)));
        assert_eq!(history.verdict(&server, at), Verdict::Start);

        let after_long_run = History::record(
            Some(&history),
            &server,
            killed(),
            MAX_BACKOFF,
            Instant::now(),
        );
        assert_eq!(after_long_run.failures, 1);
        assert_eq!(
            after_long_run.verdict(&server, Instant::now()),
            Verdict::Start
        );

        let clean = History::record(Some(&history), &server, exit(0), Duration::ZERO, now);
        assert_eq!(clean.failures, 0);
        assert_eq!(clean.verdict(&server, now), Verdict::Start);
    }

    #[test]
    fn a_changed_configuration_clears_the_history() {
        let server_a = server("never");
        let now = Instant::now();
        let history = History::record(None, &server_a, exit(3), Duration::ZERO, now);
        assert_eq!(
            history.verdict(&server_a, now),
            Verdict::Stay(Policy::Never)
        );
        let mut server_b = server_a.clone();
        server_b.args = vec!["--fixed".into()];
        assert_eq!(history.verdict(&server_b, now), Verdict::Start);
        // And failures under the old configuration do not count.
        let looping = run(&server_a, &[killed(), killed(), killed()], Duration::ZERO);
        let fresh = History::record(Some(&looping), &server_b, killed(), Duration::ZERO, now);
        assert_eq!(fresh.failures, 1);
    }

    #[test]
    fn endings_are_described() {
        assert_eq!(exit(3).describe(), "exited with status 3");
        assert_eq!(killed().describe(), "was killed by signal 9");
        assert_eq!(
            Ending::StartFailed("no such file".into()).describe(),
            "could not be started: no such file"
        );
    }
}
