//! What one peer may use of the vault, so that no user, however hostile,
//! stops it from serving the others (DESIGN §2, "every peer is bounded").
//!
//! * [`WorkGate`]: CPU-heavy work a peer asks for (parsing its documents)
//!   runs off the async runtime, one job per uid at a time, under a
//!   deadline.
//! * [`InFlightLayer`]: a user uid has at most [`USER_IN_FLIGHT`] requests
//!   being handled at once, and starts at most its request rate a second
//!   ([`DEFAULT_USER_REQUEST_RATE`]); more wait their turn behind that uid's
//!   own, not in front of anyone else's. Without a rate, one user keeping
//!   its share of requests in flight back to back keeps every worker busy,
//!   and everyone else's requests wait for a worker.
//! * [`Streams`]: a user uid holds at most [`USER_STREAMS`] long-lived
//!   streams (config watches, audit tails), and every stream ends when the
//!   vault shuts down.
//! * [`AuditQuota`]: the audit records a user's proxies submit are bounded
//!   per uid in rate and in bytes per day; refusals are counted and
//!   reported at most once a minute per uid, never stored one by one.
//!
//! The socket's connection caps live in `conn`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_stream::Stream;

use crate::authz::{Caller, PeerInfo};
use crate::error::{Result, VaultError};

/// The longest name (tool, rule, server, scope) kept in an audit record.
pub const AUDIT_NAME: usize = 256;
/// The longest error text kept in an audit record.
pub const AUDIT_ERROR: usize = 1024;

/// Cuts `s` to at most `max` bytes (on a character boundary), marking the
/// cut.
pub fn cap_text(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("…[truncated]");
    }
    s
}

/// Requests one user uid may have in the vault's handlers at once.
pub const USER_IN_FLIGHT: usize = 32;

/// Requests a user uid may start per second by default, in bursts of as
/// many (`--user-request-rate`): a proxy makes two per tool call.
pub const DEFAULT_USER_REQUEST_RATE: u32 = 1000;

/// The shortest pause of a user past its request rate: its requests wait
/// in steps, not one timer each.
const RATE_STEP: Duration = Duration::from_millis(5);

/// Per-uid rations forgotten once whole again, checked when the map is
/// this large.
const RATES_KEPT: usize = 256;

/// Long-lived streams one user uid may hold open at once.
pub const USER_STREAMS: usize = 16;

/// How long the parse of one document may take, queueing included.
pub const PARSE_DEADLINE: Duration = Duration::from_secs(5);

/// Runs blocking jobs for peers: at most one per uid at a time, at most
/// `total` at a time in all, each under a deadline, each on a thread of its
/// own at the lowest CPU priority (nice 19), so that work a peer can ask
/// for in bulk (parsing its documents) takes only the CPU that requests
/// such as releases leave idle.
///
/// A job that passes its deadline is answered with RESOURCE_EXHAUSTED at
/// once; its thread runs on to the end (blocking work cannot be cancelled)
/// but keeps its uid's permit until then, so a uid never has more than one
/// job on a CPU. Jobs are bounded in size by their callers, so "runs on"
/// is bounded too.
pub struct WorkGate {
    per_uid: Mutex<HashMap<u32, Arc<Semaphore>>>,
    total: Arc<Semaphore>,
}

impl WorkGate {
    /// A gate running at most `total` jobs at once.
    pub fn new(total: usize) -> Self {
        Self {
            per_uid: Mutex::new(HashMap::new()),
            total: Arc::new(Semaphore::new(total.max(1))),
        }
    }

    /// A gate sized to the machine: one job per core, leaving the async
    /// runtime a core where there is more than one.
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self::new(cores.saturating_sub(1).max(1))
    }

    /// Runs `job` for `uid` on a blocking thread; `what` names it in the
    /// error when it is not done within `deadline`.
    pub async fn run<T, F>(&self, uid: u32, what: &str, deadline: Duration, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let mine = self.semaphore(uid);
        let result = tokio::time::timeout(deadline, async {
            let uid_permit = mine.clone().acquire_owned().await;
            let total_permit = self.total.clone().acquire_owned().await;
            let (Ok(uid_permit), Ok(total_permit)) = (uid_permit, total_permit) else {
                return Err(VaultError::Unavailable);
            };
            let (done, answer) = tokio::sync::oneshot::channel();
            std::thread::Builder::new()
                .name("vault-peer-job".into())
                .spawn(move || {
                    lower_this_threads_priority();
                    let out = job();
                    drop((uid_permit, total_permit));
                    let _ = done.send(out);
                })
                .map_err(|_| VaultError::Unavailable)?;
            answer.await.map_err(|_| VaultError::Unavailable)
        })
        .await;
        drop(mine);
        self.forget_idle(uid);
        match result {
            Ok(out) => out,
            Err(_elapsed) => Err(VaultError::limit(format!(
                "{what} took longer than {} s (counting the wait for your earlier requests); the vault stopped waiting for it",
                deadline.as_secs()
            ))),
        }
    }

    fn semaphore(&self, uid: u32) -> Arc<Semaphore> {
        let mut map = self.per_uid.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(uid)
            .or_insert_with(|| Arc::new(Semaphore::new(1)))
            .clone()
    }

    /// Drops `uid`'s entry when nothing holds or waits on it, so the map
    /// holds only uids with work in flight.
    fn forget_idle(&self, uid: u32) {
        let mut map = self.per_uid.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&uid).is_some_and(|s| Arc::strong_count(s) == 1) {
            map.remove(&uid);
        }
    }
}

/// Sets the calling thread's nice value to 19, the lowest priority. On
/// Linux the nice value is per thread. A refusal (a seccomp filter without
/// setpriority) leaves the thread as it is: the job still runs.
fn lower_this_threads_priority() {
    let tid = nix::unistd::gettid().as_raw();
    // SAFETY: setpriority(2) on this thread's own id; no memory is passed.
    let set = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19) };
    if set != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower a peer job's priority");
    }
}

/// A rate with a burst, as a theoretical arrival time (GCRA): each event
/// moves it one interval on; once it is `step` past the burst, the caller
/// pauses until it is back within the burst. Pausing in steps rather than
/// per event saves a timer wake-up per event.
pub struct Ration {
    interval: Duration,
    tolerance: Duration,
    step: Duration,
    next: Instant,
}

impl Ration {
    /// `per_second` events, in bursts of `burst`, pausing in `step`s, from
    /// `now`.
    pub fn new(per_second: u32, burst: u32, step: Duration, now: Instant) -> Self {
        let interval = Duration::from_secs(1) / per_second.max(1);
        Self {
            interval,
            tolerance: interval * burst,
            step,
            next: now,
        }
    }

    /// Counts an event at `now`; how long to pause after it, if at all.
    pub fn take(&mut self, now: Instant) -> Option<Duration> {
        self.next = self.next.max(now) + self.interval;
        let over = (self.next - now).saturating_sub(self.tolerance);
        (!over.is_zero() && over >= self.step).then_some(over)
    }

    /// Whether the ration is whole again at `now` (nothing to remember).
    fn is_whole(&self, now: Instant) -> bool {
        self.next <= now
    }
}

/// Tells admins from users for the per-uid limits.
pub type IsAdmin = Arc<dyn Fn(&PeerInfo) -> bool + Send + Sync>;

/// Per-uid semaphores, created on first use and dropped when idle.
struct PerUid {
    permits: usize,
    map: Mutex<HashMap<u32, Arc<Semaphore>>>,
}

impl PerUid {
    fn new(permits: usize) -> Self {
        Self {
            permits,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, uid: u32) -> Arc<Semaphore> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(uid)
            .or_insert_with(|| Arc::new(Semaphore::new(self.permits)))
            .clone()
    }

    /// Drops `uid`'s semaphore when nothing holds or waits on it.
    fn forget_idle(&self, uid: u32) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&uid).is_some_and(|s| Arc::strong_count(s) == 1) {
            map.remove(&uid);
        }
    }
}

/// A tower layer bounding the requests each user uid has in the handlers
/// at once (admins are not bounded). A response that is a stream holds its
/// permit only until the stream starts; [`Streams`] bounds those.
#[derive(Clone)]
pub struct InFlightLayer {
    per_uid: Arc<PerUid>,
    rates: Arc<Rates>,
    is_admin: IsAdmin,
}

impl InFlightLayer {
    /// A layer letting each user uid have `permits` requests in flight and
    /// start `rate` a second (in bursts of as many).
    pub fn new(permits: usize, rate: u32, is_admin: IsAdmin) -> Self {
        Self {
            per_uid: Arc::new(PerUid::new(permits)),
            rates: Arc::new(Rates {
                rate,
                map: Mutex::new(HashMap::new()),
            }),
            is_admin,
        }
    }
}

/// Each user uid's request ration. Kept while not whole (a uid that goes
/// idle between bursts must not get a fresh burst each time).
struct Rates {
    rate: u32,
    map: Mutex<HashMap<u32, Ration>>,
}

impl Rates {
    /// Counts a request of `uid`; how long it waits first, if at all.
    fn take(&self, uid: u32) -> Option<Duration> {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= RATES_KEPT {
            map.retain(|_, ration| !ration.is_whole(now));
        }
        map.entry(uid)
            .or_insert_with(|| Ration::new(self.rate, self.rate, RATE_STEP, now))
            .take(now)
    }
}

impl<S> tower::Layer<S> for InFlightLayer {
    type Service = InFlight<S>;
    fn layer(&self, inner: S) -> InFlight<S> {
        InFlight {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`InFlightLayer`].
#[derive(Clone)]
pub struct InFlight<S> {
    inner: S,
    layer: InFlightLayer,
}

/// Releases a uid's permit (and forgets the uid when idle) when dropped.
struct InFlightPermit {
    permit: Option<OwnedSemaphorePermit>,
    per_uid: Arc<PerUid>,
    uid: u32,
}

impl Drop for InFlightPermit {
    fn drop(&mut self) {
        // The permit (and its hold on the semaphore) first, so that an
        // idle uid's entry is seen as idle.
        drop(self.permit.take());
        self.per_uid.forget_idle(self.uid);
    }
}

impl<S, B> tower::Service<tonic::codegen::http::Request<B>> for InFlight<S>
where
    S: tower::Service<tonic::codegen::http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = std::result::Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: tonic::codegen::http::Request<B>) -> Self::Future {
        // The service that was polled ready handles this request; a fresh
        // clone takes its place for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limited = request
            .extensions()
            .get::<PeerInfo>()
            .filter(|peer| !(self.layer.is_admin)(peer))
            .map(|peer| peer.uid);
        let per_uid = self.layer.per_uid.clone();
        let rates = self.layer.rates.clone();
        Box::pin(async move {
            let _held = match limited {
                None => None,
                Some(uid) => {
                    let semaphore = per_uid.get(uid);
                    let held = match semaphore.acquire_owned().await {
                        Ok(permit) => Some(InFlightPermit {
                            permit: Some(permit),
                            per_uid,
                            uid,
                        }),
                        // Never closed; handle it as unlimited.
                        Err(_) => None,
                    };
                    // Past its rate, the uid's request waits holding its
                    // permit, so its other requests wait behind it.
                    if let Some(pause) = rates.take(uid) {
                        tokio::time::sleep(pause).await;
                    }
                    held
                }
            };
            inner.call(request).await
        })
    }
}

/// Bounds long-lived streams per user uid and ends them all at shutdown.
pub struct Streams {
    per_user: usize,
    open: Arc<Mutex<HashMap<u32, usize>>>,
    shutdown: watch::Receiver<bool>,
}

/// One open stream's place; given back when the stream is dropped.
pub struct StreamTicket {
    open: Arc<Mutex<HashMap<u32, usize>>>,
    uid: u32,
}

impl Drop for StreamTicket {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.uid);
            }
        }
    }
}

impl Streams {
    /// Streams that end when `shutdown` turns true.
    pub fn new(per_user: usize, shutdown: watch::Receiver<bool>) -> Self {
        Self {
            per_user,
            open: Arc::new(Mutex::new(HashMap::new())),
            shutdown,
        }
    }

    /// Wraps `stream` for `caller`: refused (RESOURCE_EXHAUSTED) when a
    /// user already holds its share; ended at shutdown.
    pub fn open<S>(
        &self,
        caller: &Caller,
        what: &str,
        stream: S,
    ) -> Result<impl Stream<Item = S::Item> + Send + use<S>>
    where
        S: Stream + Send + 'static,
    {
        let ticket = self.reserve(caller, what)?;
        Ok(self.wrap(ticket, stream))
    }

    /// Takes a place for a stream of `caller`'s, before any work is done
    /// for it: refused (RESOURCE_EXHAUSTED) when a user already holds its
    /// share.
    pub fn reserve(&self, caller: &Caller, what: &str) -> Result<StreamTicket> {
        let uid = caller.uid();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let held = open.entry(uid).or_insert(0);
        if !caller.is_admin() && *held >= self.per_user {
            let message = format!(
                "uid {uid} already has {held} {what} streams open; the limit is {} per user (close some clients)",
                self.per_user
            );
            return Err(VaultError::limit(message));
        }
        *held += 1;
        Ok(StreamTicket {
            open: self.open.clone(),
            uid,
        })
    }

    /// `stream`, holding `ticket` while it lasts and ending at shutdown.
    pub fn wrap<S>(
        &self,
        ticket: StreamTicket,
        stream: S,
    ) -> impl Stream<Item = S::Item> + Send + use<S>
    where
        S: Stream + Send + 'static,
    {
        let mut shutdown = self.shutdown.clone();
        UntilStop {
            inner: Box::pin(stream),
            stop: Box::pin(async move {
                let _ = shutdown.wait_for(|stopping| *stopping).await;
            }),
            done: false,
            _ticket: ticket,
        }
    }
}

/// A stream that ends when the vault stops, holding its ticket meanwhile.
struct UntilStop<S> {
    inner: Pin<Box<S>>,
    stop: Pin<Box<dyn Future<Output = ()> + Send>>,
    done: bool,
    _ticket: StreamTicket,
}

impl<S: Stream> Stream for UntilStop<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        if self.done || self.stop.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(None);
        }
        self.inner.as_mut().poll_next(cx)
    }
}

/// The per-uid bounds of submitted audit records.
#[derive(Clone, Copy, Debug)]
pub struct AuditLimits {
    /// Records per second, sustained.
    pub rate: f64,
    /// Records at once after a quiet spell.
    pub burst: f64,
    /// Bytes of records per day (a day begins with a uid's first record
    /// after the last day ended).
    pub daily_bytes: u64,
}

impl AuditLimits {
    /// The default sustained rate: far above one agent's tool calls.
    pub const DEFAULT_RATE: u32 = 50;
    /// The default daily volume, in MiB.
    pub const DEFAULT_DAILY_MIB: u32 = 128;
}

const DAY: Duration = Duration::from_secs(86_400);
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// One uid's audit budget.
struct AuditBudget {
    tokens: f64,
    refilled: std::time::Instant,
    day_began: std::time::Instant,
    day_bytes: u64,
    /// Refusals not yet reported.
    refused: u64,
    reported: Option<std::time::Instant>,
}

/// A refused record: why, and whether to record a report now.
#[derive(Debug, PartialEq)]
pub struct AuditRefusal {
    /// Names the limit.
    pub message: String,
    /// `Some(n)` when the refusals (n, this one included, since the last
    /// report) should be recorded now.
    pub report: Option<u64>,
}

/// Bounds submitted audit records per uid.
pub struct AuditQuota {
    limits: AuditLimits,
    per_uid: Mutex<HashMap<u32, AuditBudget>>,
}

impl AuditQuota {
    /// A quota with `limits`.
    pub fn new(limits: AuditLimits) -> Self {
        Self {
            limits,
            per_uid: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one record of `bytes` for `uid` at `now`.
    pub fn take(&self, uid: u32, bytes: u64, now: std::time::Instant) -> Result<(), AuditRefusal> {
        let l = self.limits;
        let mut map = self.per_uid.lock().unwrap_or_else(|e| e.into_inner());
        let b = map.entry(uid).or_insert(AuditBudget {
            tokens: l.burst,
            refilled: now,
            day_began: now,
            day_bytes: 0,
            refused: 0,
            reported: None,
        });
        let elapsed = now.saturating_duration_since(b.refilled).as_secs_f64();
        b.tokens = (b.tokens + elapsed * l.rate).min(l.burst);
        b.refilled = now;
        if now.saturating_duration_since(b.day_began) >= DAY {
            b.day_began = now;
            b.day_bytes = 0;
        }
        let why = if b.tokens < 1.0 {
            format!(
                "uid {uid} is submitting audit records faster than {} a second (bursts of {}); this record was not stored",
                l.rate, l.burst
            )
        } else if b.day_bytes.saturating_add(bytes) > l.daily_bytes {
            format!(
                "uid {uid} has submitted its {} MiB of audit records for the day; records are refused until {} s from now",
                l.daily_bytes / (1024 * 1024),
                DAY.saturating_sub(now.saturating_duration_since(b.day_began))
                    .as_secs()
            )
        } else {
            b.tokens -= 1.0;
            b.day_bytes += bytes;
            return Ok(());
        };
        b.refused += 1;
        let report = if b
            .reported
            .is_none_or(|t| now.saturating_duration_since(t) >= REPORT_EVERY)
        {
            b.reported = Some(now);
            Some(std::mem::take(&mut b.refused))
        } else {
            None
        };
        Err(AuditRefusal {
            message: why,
            report,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rations_pause_only_past_the_burst_and_at_the_rate() {
        // 1000 a second (1 ms apart), bursts of 3.
        let start = Instant::now();
        let mut ration = Ration::new(1000, 3, Duration::ZERO, start);
        for _ in 0..3 {
            assert_eq!(ration.take(start), None);
        }
        // The fourth at the same instant waits one interval.
        assert_eq!(ration.take(start), Some(Duration::from_millis(1)));
        // After a quiet second the burst is whole again.
        let later = start + Duration::from_secs(1);
        for _ in 0..3 {
            assert_eq!(ration.take(later), None);
        }
        assert!(ration.take(later).is_some());
        // Events spaced at the rate never pause.
        let mut spaced = Ration::new(1000, 1, Duration::ZERO, start);
        for ms in 0..100 {
            assert_eq!(spaced.take(start + Duration::from_millis(ms)), None);
        }
        // With a 5 ms step, five events past the burst go through, and the
        // fifth pauses for all five.
        let mut stepped = Ration::new(1000, 3, Duration::from_millis(5), start);
        for _ in 0..7 {
            assert_eq!(stepped.take(start), None);
        }
        assert_eq!(stepped.take(start), Some(Duration::from_millis(5)));
        // After that pause, at the rate, again none.
        assert_eq!(stepped.take(start + Duration::from_millis(6)), None);
    }

    #[test]
    fn audit_records_are_bounded_in_rate_and_bytes_per_uid() {
        let quota = AuditQuota::new(AuditLimits {
            rate: 10.0,
            burst: 20.0,
            daily_bytes: 1000,
        });
        let t0 = std::time::Instant::now();
        for _ in 0..20 {
            assert_eq!(quota.take(1, 10, t0), Ok(()));
        }
        let first = quota.take(1, 10, t0).err();
        assert!(
            first
                .as_ref()
                .is_some_and(|r| r.message.contains("faster than 10 a second"))
        );
        assert_eq!(first.map(|r| r.report), Some(Some(1)));
        // Further refusals within the minute are counted, not reported.
        assert_eq!(quota.take(1, 10, t0).err().map(|r| r.report), Some(None));
        // Another uid is not affected.
        assert_eq!(quota.take(2, 10, t0), Ok(()));
        // A second later ten more are allowed.
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..10 {
            assert_eq!(quota.take(1, 10, t1), Ok(()));
        }
        assert!(quota.take(1, 10, t1).is_err());
        // The daily bytes: 300 taken so far; 700 more fit, then no more.
        let t2 = t1 + Duration::from_secs(120);
        assert_eq!(quota.take(1, 700, t2), Ok(()));
        let over = quota.take(1, 1, t2).err();
        assert!(
            over.as_ref()
                .is_some_and(|r| r.message.contains("for the day"))
        );
        // Reported: the two held-back refusals and this one.
        assert_eq!(over.map(|r| r.report), Some(Some(3)));
        assert_eq!(quota.take(1, 1, t2 + DAY), Ok(()));
    }

    #[test]
    fn each_user_has_its_own_request_rate_and_idling_does_not_refill_it() {
        let rates = Rates {
            rate: 100,
            map: Mutex::new(HashMap::new()),
        };
        // A burst of 100 passes; past it plus a step, requests wait.
        for _ in 0..100 {
            assert_eq!(rates.take(1), None);
        }
        let waits = (0..10).filter_map(|_| rates.take(1)).count();
        assert!(waits > 0, "uid 1 never waited");
        // Another uid has its own burst.
        assert_eq!(rates.take(2), None);
        // The spent ration is remembered, even with many other uids seen.
        for uid in 100..100 + RATES_KEPT as u32 {
            rates.take(uid);
        }
        assert!(rates.take(1).is_some(), "uid 1 got a fresh burst");
    }

    #[tokio::test]
    async fn one_job_per_uid_and_a_deadline() {
        let gate = Arc::new(WorkGate::new(2));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        // uid 1's first job blocks until told; its second waits behind it
        // and passes its deadline, while uid 2 is served at once.
        let blocked = {
            let gate = gate.clone();
            tokio::spawn(async move {
                gate.run(1, "job", Duration::from_secs(30), move || rx.recv().is_ok())
                    .await
            })
        };
        let held = |gate: &WorkGate| {
            let map = gate.per_uid.lock().unwrap_or_else(|e| e.into_inner());
            map.get(&1).is_some_and(|s| s.available_permits() == 0)
        };
        while !held(&gate) {
            tokio::task::yield_now().await;
        }
        let second = gate
            .run(1, "second job", Duration::from_millis(50), || ())
            .await;
        match second {
            Err(VaultError::LimitExceeded { message }) => {
                assert!(message.contains("second job took longer"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            gate.run(2, "job", Duration::from_secs(30), || 7).await.ok(),
            Some(7)
        );
        tx.send(()).ok();
        assert!(matches!(blocked.await, Ok(Ok(true))));
        assert!(gate.per_uid.lock().map(|m| m.is_empty()).unwrap_or(false));
    }
}
