//! Redis Cluster (`redis+cluster://`): discover the slot map, run one tracking connection per
//! master (each a [`conn::Task`], so a master's fills and invalidations stay in wire order),
//! route every request by its key's slot, follow `MOVED` and `ASK`, and treat any topology
//! change as a loss (`docs/design.md` §10).

use super::conn::{self, Reply, Request, UpstreamError};
use super::resp::{self, Frame, Limits};
use super::slot::SLOTS;
use super::{flush, send, Addr, Closed, Guard, Mirror, NearStats, UpstreamConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// A slot range and the master that serves it (`host:port`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Range {
    start: u16,
    end: u16,
    master: String,
}

/// The slot map one node reported (`CLUSTER SLOTS`), sorted by slot.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Topology {
    ranges: Vec<Range>,
}

impl Topology {
    /// Every master, once, sorted.
    fn masters(&self) -> Vec<String> {
        let mut m: Vec<String> = self.ranges.iter().map(|r| r.master.clone()).collect();
        m.sort();
        m.dedup();
        m
    }
}

/// No master serves the slot.
const NONE: u16 = u16::MAX;

/// What requests follow while one topology is in force.
pub(crate) struct Routes {
    /// Bumped at every rebuild; a redirection names the routes it contradicts.
    id: u64,
    /// Per slot, the index in `conns` of its master (or [`NONE`]).
    slots: Vec<u16>,
    conns: Vec<(String, mpsc::Sender<Request>)>,
}

impl Routes {
    fn by_slot(&self, slot: u16) -> Option<&mpsc::Sender<Request>> {
        let i = *self.slots.get(usize::from(slot))?;
        self.conns.get(usize::from(i)).map(|(_, tx)| tx)
    }

    fn by_addr(&self, addr: &str) -> Option<&mpsc::Sender<Request>> {
        self.conns.iter().find(|(a, _)| a == addr).map(|(_, tx)| tx)
    }
}

/// "The routes `id` were contradicted" (a `MOVED`, an unknown node), with the node to ask
/// about the new slot map first.
struct Refresh {
    id: u64,
    hint: Option<String>,
}

/// Most times one request is routed (a `MOVED` or a closed connection re-routes it; an `ASK`
/// adds one attempt at the node it names).
const MAX_ROUTES: usize = 4;

/// The request side: what [`super::Near`] routes with.
pub(crate) struct Handle {
    routes: watch::Receiver<Option<Arc<Routes>>>,
    refresh: mpsc::Sender<Refresh>,
    /// Longest a request waits for a topology (while connecting or rebuilding).
    wait: Duration,
}

/// A redirection named in a Redis error reply.
#[derive(Debug, PartialEq, Eq)]
enum Redirect {
    Moved(String),
    Ask(String),
}

/// `MOVED <slot> <host:port>` or `ASK <slot> <host:port>`.
fn redirect(msg: &str) -> Option<Redirect> {
    let mut w = msg.split_whitespace();
    let kind = w.next()?;
    let _slot: u16 = w.next()?.parse().ok()?;
    let addr = w.next()?.to_string();
    match kind {
        "MOVED" => Some(Redirect::Moved(addr)),
        "ASK" => Some(Redirect::Ask(addr)),
        _ => None,
    }
}

impl Handle {
    /// The routes in force that are not `stale` (waits up to `wait` for a rebuild).
    async fn routes(&self, stale: Option<u64>) -> Result<Arc<Routes>, UpstreamError> {
        let mut rx = self.routes.clone();
        let got = tokio::time::timeout(self.wait, async {
            let r = rx.wait_for(|r| r.as_ref().is_some_and(|r| Some(r.id) != stale)).await;
            r.map(|g| g.clone())
        })
        .await;
        match got {
            Ok(Ok(Some(r))) => Ok(r),
            Ok(Ok(None)) | Ok(Err(_)) => Err(UpstreamError::ShuttingDown),
            Err(_) => Err(UpstreamError::Unavailable("no Redis Cluster topology (connecting to the masters)".into())),
        }
    }

    fn refresh(&self, routes: &Routes, hint: Option<String>) {
        // Full: a refresh is already asked for, which is all this one would do.
        let _ = self.refresh.try_send(Refresh { id: routes.id, hint });
    }

    /// Send the request `make` builds (given whether it follows an `ASK`) to the master of
    /// `slot`, following redirections: `MOVED` (or a connection that closed before sending it)
    /// asks for a new slot map and routes the request again; `ASK` sends it once to the node
    /// named, after `ASKING`.
    pub(crate) async fn ask<T>(&self, slot: u16, make: impl Fn(bool, Reply<T>) -> Request) -> Result<T, UpstreamError> {
        let mut stale = None;
        let mut last = String::new();
        for _ in 0..MAX_ROUTES {
            let routes = self.routes(stale).await?;
            let mut asking: Option<String> = None;
            // Why the routes are wrong, and the node to ask for the new ones first.
            let (why, hint) = loop {
                let to = match &asking {
                    Some(a) => routes.by_addr(a),
                    None => routes.by_slot(slot),
                };
                let Some(to) = to else {
                    // An ASK to a node that is no master we know, or a slot nobody serves.
                    break (format!("no known master for slot {slot} ({asking:?})"), asking.take());
                };
                match send(to, |reply| make(asking.is_some(), reply)).await {
                    Err(Closed) => break ("the master's connection closed".into(), None),
                    Ok(Err(UpstreamError::Redis(msg))) => match redirect(&msg) {
                        Some(Redirect::Moved(addr)) => break (msg, Some(addr)),
                        Some(Redirect::Ask(addr)) if asking.is_none() => asking = Some(addr),
                        _ => return Err(UpstreamError::Redis(msg)),
                    },
                    Ok(r) => return r,
                }
            };
            self.refresh(&routes, hint);
            stale = Some(routes.id);
            last = why;
        }
        Err(UpstreamError::Unavailable(format!("Redis Cluster: still redirected after {MAX_ROUTES} routes ({last})")))
    }
}

/// The cluster task: discovers the topology, runs the masters' connections, rebuilds them on a
/// topology change.
pub(crate) struct Task {
    cfg: UpstreamConfig,
    seeds: Vec<String>,
    password: Option<String>,
    mirrors: Vec<Arc<Mirror>>,
    stats: Arc<NearStats>,
    guard: Arc<Guard>,
    routes: watch::Sender<Option<Arc<Routes>>>,
    refresh: mpsc::Receiver<Refresh>,
    limits: Limits,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Why the connections of one topology were ended.
enum Rebuild {
    /// The slot map changed or a node redirected: rebuild at once.
    Changed(String),
    /// A master's connection ended (it may be down): rebuild after a backoff.
    Lost(String),
    Shutdown,
}

impl Task {
    pub(crate) fn new(
        cfg: UpstreamConfig,
        seeds: Vec<String>,
        password: Option<String>,
        mirrors: Vec<Arc<Mirror>>,
        stats: Arc<NearStats>,
        guard: Arc<Guard>,
    ) -> (Task, Handle) {
        let (routes_tx, routes_rx) = watch::channel(None);
        let (refresh_tx, refresh_rx) = mpsc::channel(64);
        let wait = cfg.ping_timeout;
        let task = Task {
            cfg,
            seeds,
            password,
            mirrors,
            stats,
            guard,
            routes: routes_tx,
            refresh: refresh_rx,
            limits: Limits::default(),
        };
        (task, Handle { routes: routes_rx, refresh: refresh_tx, wait })
    }

    /// Discover, connect to every master, serve; on any topology change or loss clear the
    /// tables and start over, until `shutdown` turns true.
    pub(crate) async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        // As for one Redis: what an earlier sidecar filled is not tracked by anyone now.
        flush(&self.guard, &self.mirrors, &self.stats);
        let mut backoff = BACKOFF_MIN;
        let mut known: Vec<String> = Vec::new();
        let mut hint: Option<String> = None;
        let mut id = 0u64;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let candidates = candidates(hint.take(), &known, &self.seeds);
            let found = tokio::select! {
                t = self.discover(&candidates) => t,
                _ = stopped(&mut shutdown) => return,
            };
            let topology = match found {
                Ok(t) => t,
                Err(why) => {
                    tracing::warn!(retry_in = ?backoff, "near cache: no Redis Cluster slot map: {why}");
                    if sleep_or_stop(backoff, &mut shutdown).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            id += 1;
            known = topology.masters();
            let started = Instant::now();
            let end = self.serve(id, &topology, &mut shutdown).await;
            // serve ended every connection (each cleared the tables and failed its callers);
            // clear once more for what the routes may have stored meanwhile.
            flush(&self.guard, &self.mirrors, &self.stats);
            match end {
                Rebuild::Shutdown => return,
                Rebuild::Changed(why) => {
                    NearStats::inc(&self.stats.topology_changes);
                    tracing::warn!("near cache: Redis Cluster topology change ({why}); tables cleared, reconnecting");
                    if let Some(h) = why.strip_prefix("redirected to ") {
                        hint = Some(h.to_string());
                    }
                }
                Rebuild::Lost(why) => {
                    NearStats::inc(&self.stats.topology_changes);
                    if started.elapsed() > BACKOFF_MAX {
                        backoff = BACKOFF_MIN;
                    }
                    tracing::warn!(retry_in = ?backoff, "near cache: {why}; tables cleared, rediscovering the cluster");
                    if sleep_or_stop(backoff, &mut shutdown).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Run one connection per master of `topology` and route to them until something says the
    /// topology changed; then stop routing and end every connection.
    async fn serve(&mut self, id: u64, topology: &Topology, shutdown: &mut watch::Receiver<bool>) -> Rebuild {
        let masters = topology.masters();
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut set = tokio::task::JoinSet::new();
        let mut conns = Vec::new();
        for m in &masters {
            let (tx, rx) = mpsc::channel(4096);
            let task = conn::Task::new(
                self.cfg.clone(),
                Addr::Tcp(m.clone()),
                false,
                Arc::clone(&self.guard),
                self.password.clone(),
                self.mirrors.clone(),
                rx,
                Arc::clone(&self.stats),
            );
            set.spawn(task.run(stop_rx.clone()));
            conns.push((m.clone(), tx));
        }
        let mut slots = vec![NONE; SLOTS];
        for r in &topology.ranges {
            let i = masters.iter().position(|m| *m == r.master).unwrap_or(usize::from(NONE)) as u16;
            slots[usize::from(r.start)..=usize::from(r.end)].fill(i);
        }
        let served: usize = topology.ranges.iter().map(|r| usize::from(r.end - r.start) + 1).sum();
        tracing::info!(masters = ?masters, slots_served = served, "near cache: Redis Cluster topology");
        self.routes.send_replace(Some(Arc::new(Routes { id, slots, conns })));
        let mut poll = tokio::time::interval(self.cfg.ping_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        let end = loop {
            tokio::select! {
                _ = stopped(shutdown) => break Rebuild::Shutdown,
                r = self.refresh.recv() => match r {
                    Some(r) if r.id == id => {
                        break Rebuild::Changed(match r.hint {
                            Some(h) => format!("redirected to {h}"),
                            None => "a request could not be routed".into(),
                        });
                    }
                    Some(_) => {}
                    None => break Rebuild::Shutdown,
                },
                _ = set.join_next() => break Rebuild::Lost("a master's connection ended".into()),
                _ = poll.tick() => {
                    let candidates = candidates(None, &masters, &self.seeds);
                    match self.discover(&candidates).await {
                        Ok(t) if t != *topology => break Rebuild::Changed("the slot map changed".into()),
                        Ok(_) => {}
                        Err(why) => tracing::debug!("near cache: Redis Cluster slot map poll: {why}"),
                    }
                }
            }
        };
        self.routes.send_replace(None);
        let _ = stop_tx.send(true);
        while set.join_next().await.is_some() {}
        end
    }

    /// Ask the candidates in turn for the slot map; the first answer wins.
    async fn discover(&self, candidates: &[String]) -> Result<Topology, String> {
        let mut errors = Vec::new();
        for c in candidates {
            match tokio::time::timeout(self.cfg.ping_timeout, self.slots_of(c)).await {
                Ok(Ok(t)) => return Ok(t),
                Ok(Err(e)) => errors.push(format!("{c}: {e}")),
                Err(_) => errors.push(format!("{c}: timed out")),
            }
        }
        Err(errors.join("; "))
    }

    /// `CLUSTER SLOTS` of one node.
    async fn slots_of(&self, node: &str) -> Result<Topology, String> {
        let mut s = tokio::net::TcpStream::connect(node).await.map_err(|e| e.to_string())?;
        let _ = s.set_nodelay(true);
        let mut out = Vec::new();
        let mut hello: Vec<&[u8]> = vec![b"HELLO", b"3"];
        if let Some(pw) = &self.password {
            hello.extend([b"AUTH".as_slice(), self.cfg.user.as_deref().unwrap_or("default").as_bytes(), pw.as_bytes()]);
        }
        resp::encode(&mut out, &hello);
        resp::encode(&mut out, &[b"CLUSTER", b"SLOTS"]);
        s.write_all(&out).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut answers = Vec::new();
        while answers.len() < 2 {
            match resp::parse(&buf, &self.limits).map_err(|e| e.to_string())? {
                Some((f, used)) => {
                    buf.drain(..used);
                    if !matches!(f, Frame::Push(_)) {
                        answers.push(f);
                    }
                }
                None => {
                    if s.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                        return Err("connection closed".into());
                    }
                }
            }
        }
        if let Frame::Error(e) = &answers[0] {
            return Err(format!("HELLO: {}", String::from_utf8_lossy(e)));
        }
        let host = node.rsplit_once(':').map_or(node, |(h, _)| h);
        parse_slots(answers.pop().unwrap_or(Frame::Null), host)
    }
}

/// Nodes to ask for the slot map: the one a redirection named, the known masters, the seeds.
fn candidates(hint: Option<String>, known: &[String], seeds: &[String]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for c in hint.into_iter().chain(known.iter().cloned()).chain(seeds.iter().cloned()) {
        if !v.contains(&c) {
            v.push(c);
        }
    }
    v
}

/// Parse a `CLUSTER SLOTS` answer: `[[start, end, [host, port, id, ...], replicas...], ...]`.
/// An empty host means the node asked (`queried`); `?` (unknown endpoint) leaves the range
/// unserved.
fn parse_slots(f: Frame, queried: &str) -> Result<Topology, String> {
    let bad = |what: &str| format!("CLUSTER SLOTS: {what}");
    let ranges = match f {
        Frame::Array(r) => r,
        Frame::Error(e) => return Err(bad(&String::from_utf8_lossy(&e))),
        other => return Err(bad(&format!("answered {other:?}"))),
    };
    let mut out = Vec::new();
    for r in ranges {
        let Frame::Array(items) = r else { return Err(bad("a range is not an array")) };
        let mut it = items.into_iter();
        let (Some(Frame::Integer(start)), Some(Frame::Integer(end)), Some(Frame::Array(master))) =
            (it.next(), it.next(), it.next())
        else {
            return Err(bad("a range is not [start, end, master, ...]"));
        };
        if !(0..SLOTS as i64).contains(&start) || !(start..SLOTS as i64).contains(&end) {
            return Err(bad(&format!("slot range {start}-{end}")));
        }
        let mut m = master.into_iter();
        let (Some(Frame::Bulk(host) | Frame::Simple(host)), Some(Frame::Integer(port))) = (m.next(), m.next()) else {
            return Err(bad("a master is not [host, port, ...]"));
        };
        let host = String::from_utf8(host).map_err(|_| bad("a host name is not UTF-8"))?;
        if host == "?" {
            continue;
        }
        let port = u16::try_from(port).ok().filter(|&p| p > 0).ok_or_else(|| bad(&format!("port {port}")))?;
        let host = if host.is_empty() { queried.to_string() } else { host };
        let master = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        out.push(Range { start: start as u16, end: end as u16, master });
    }
    out.sort();
    if out.windows(2).any(|w| w[1].start <= w[0].end) {
        return Err(bad("overlapping slot ranges"));
    }
    if out.is_empty() {
        return Err(bad("no slot is served (is the cluster created?)"));
    }
    Ok(Topology { ranges: out })
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Sleep `d`; `true` if shutdown came first.
async fn sleep_or_stop(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stopped(shutdown) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, port: i64) -> Frame {
        Frame::Array(vec![
            Frame::Bulk(host.as_bytes().to_vec()),
            Frame::Integer(port),
            Frame::Bulk(b"id".to_vec()),
            Frame::Map(vec![]),
        ])
    }

    fn range(start: i64, end: i64, nodes: Vec<Frame>) -> Frame {
        Frame::Array([vec![Frame::Integer(start), Frame::Integer(end)], nodes].concat())
    }

    #[test]
    fn slot_maps() {
        let f = Frame::Array(vec![
            range(5461, 16383, vec![node("10.0.0.2", 7001), node("10.0.0.5", 7004)]),
            range(0, 5460, vec![node("", 7000)]),
        ]);
        let t = parse_slots(f, "10.0.0.1").unwrap();
        assert_eq!(
            t.ranges,
            vec![
                Range { start: 0, end: 5460, master: "10.0.0.1:7000".into() },
                Range { start: 5461, end: 16383, master: "10.0.0.2:7001".into() },
            ]
        );
        assert_eq!(t.masters(), vec!["10.0.0.1:7000".to_string(), "10.0.0.2:7001".to_string()]);
        let v6 = parse_slots(Frame::Array(vec![range(0, 16383, vec![node("::1", 7000)])]), "x").unwrap();
        assert_eq!(v6.masters(), vec!["[::1]:7000".to_string()]);
        // An unknown endpoint leaves its range unserved.
        let q = Frame::Array(vec![range(0, 10, vec![node("?", 7000)]), range(11, 16383, vec![node("h", 1)])]);
        assert_eq!(parse_slots(q, "x").unwrap().ranges.len(), 1);
        for bad in [
            Frame::Array(vec![]),
            Frame::Error(b"ERR This instance has cluster support disabled".to_vec()),
            Frame::Array(vec![range(0, 16384, vec![node("h", 1)])]),
            Frame::Array(vec![range(10, 5, vec![node("h", 1)])]),
            Frame::Array(vec![range(-1, 5, vec![node("h", 1)])]),
            Frame::Array(vec![range(0, 5, vec![node("h", 0)])]),
            Frame::Array(vec![range(0, 5, vec![node("h", 70000)])]),
            Frame::Array(vec![range(0, 5, vec![])]),
            Frame::Array(vec![range(0, 10, vec![node("h", 1)]), range(10, 20, vec![node("g", 1)])]),
            Frame::Array(vec![Frame::Integer(1)]),
        ] {
            assert!(parse_slots(bad.clone(), "x").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn redirections() {
        assert_eq!(redirect("MOVED 3999 127.0.0.1:6381"), Some(Redirect::Moved("127.0.0.1:6381".into())));
        assert_eq!(redirect("ASK 3999 127.0.0.1:6381"), Some(Redirect::Ask("127.0.0.1:6381".into())));
        assert_eq!(redirect("WRONGTYPE Operation against a key"), None);
        assert_eq!(redirect("MOVED x 127.0.0.1:6381"), None);
        assert_eq!(redirect("MOVED 1"), None);
        assert_eq!(candidates(Some("b".into()), &["a".into(), "b".into()], &["s".into(), "a".into()]), ["b", "a", "s"]);
    }
}
