//! The near cache against a real Redis Cluster (never a mock): `redis-server --cluster-enabled
//! yes` children on loopback ports joined by `redis-cli --cluster create`, and `podcache serve`
//! children with `--upstream redis+cluster://...`.
//!
//! The test's own cluster client ([`ClusterClient`]) follows `MOVED` and `ASK` the way any
//! cluster client does, by asking the node the redirection names; it shares no routing code
//! with the sidecar (it never computes a slot: it learns owners from redirections).
//!
//! Skips with a visible `SKIPPED` line when `redis-server` or `redis-cli` is not installed;
//! `.ci/redis` installs them and sets `PODCACHE_REQUIRE_REDIS=1`, so CI never skips.

mod common;
#[allow(dead_code)]
#[path = "common/redis.rs"]
mod redis;

use common::child::{RawResponse, Sidecar, Watchdog};
use podcache_sidecar::near::{lookup, resp::Frame, Cached};
use redis::{eventually, http, metric, random_write, reader_child, report, self_command, table, Client, Rng, ROLE};
use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BOUND: Duration = Duration::from_secs(30);

/// A Redis Cluster of `redis-server` children on loopback ports.
struct Cluster {
    ports: Vec<u16>,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

fn installed(cmd: &str) -> bool {
    Command::new(cmd).arg("--version").stdout(Stdio::null()).status().is_ok()
}

/// `n` ports below the ephemeral range whose cluster bus port (port + 10000) is free too.
fn cluster_ports(n: usize) -> Vec<u16> {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let mut rng = Rng(u64::from(seed) << 16 ^ u64::from(std::process::id()) | 1);
    let mut ports: Vec<u16> = Vec::new();
    while ports.len() < n {
        let p = 20_000 + rng.below(12_000) as u16;
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if !ports.contains(&p) && free(p) && free(p + 10_000) {
            ports.push(p);
        }
    }
    ports
}

impl Cluster {
    /// `masters` masters with `replicas` replicas each, or `None` after printing why the test is
    /// skipped.
    fn start_or_skip(test: &str, masters: usize, replicas: usize) -> Option<Cluster> {
        if !installed("redis-server") || !installed("redis-cli") {
            if std::env::var("PODCACHE_REQUIRE_REDIS").is_ok_and(|v| v == "1") {
                panic!("{test}: redis-server or redis-cli is not installed but PODCACHE_REQUIRE_REDIS=1");
            }
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: redis-server is not installed (bash .ci/redis installs it and runs this test)"
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let n = masters * (1 + replicas);
        let ports = cluster_ports(n);
        let children = ports
            .iter()
            .map(|p| {
                let d = dir.path();
                Command::new("redis-server")
                    .args(["--port", &p.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                    .args(["--cluster-enabled", "yes"])
                    // Long enough that a loaded CI machine does not make nodes suspect each
                    // other (the failover below is a manual one, which does not wait for it).
                    .args(["--cluster-node-timeout", "20000"])
                    .args(["--cluster-config-file", d.join(format!("nodes-{p}.conf")).to_str().unwrap()])
                    .args(["--dir", d.to_str().unwrap()])
                    .args(["--logfile", d.join(format!("redis-{p}.log")).to_str().unwrap()])
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("spawn redis-server")
            })
            .collect();
        let c = Cluster { ports, children, dir };
        for &p in &c.ports {
            eventually("redis-server up", BOUND, || TcpStream::connect(("127.0.0.1", p)).ok().map(|_| ()));
        }
        let addrs: Vec<String> = c.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .unwrap();
        assert!(out.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&out.stdout));
        c.wait_settled();
        Some(c)
    }

    fn client(&self, port: u16) -> Client {
        Client::from(TcpStream::connect(("127.0.0.1", port)).expect("connect to a cluster node"))
    }

    fn url(&self) -> String {
        format!("redis+cluster://127.0.0.1:{},127.0.0.1:{}", self.ports[0], self.ports[1])
    }

    /// Every node says `cluster_state:ok`, reports the same slot map, and every replica's link
    /// to its master is up.
    fn wait_settled(&self) {
        let deadline = Instant::now() + BOUND;
        loop {
            let why = self.unsettled();
            let Some(why) = why else { return };
            assert!(Instant::now() < deadline, "the cluster did not settle within {BOUND:?}: {why}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Why the cluster is not settled yet (`None`: it is).
    fn unsettled(&self) -> Option<String> {
        let mut maps = Vec::new();
        for &p in &self.ports {
            let mut c = self.client(p);
            let Frame::Bulk(info) = c.run(&["CLUSTER", "INFO"]) else { return Some(format!("{p}: CLUSTER INFO")) };
            let info = String::from_utf8_lossy(&info).into_owned();
            if !info.contains("cluster_state:ok") {
                return Some(format!("{p}: {}", info.lines().take(7).collect::<Vec<_>>().join(" ")));
            }
            let Frame::Bulk(repl) = c.run(&["INFO", "replication"]) else { return Some(format!("{p}: INFO")) };
            let repl = String::from_utf8_lossy(&repl).into_owned();
            if repl.contains("role:slave") && !repl.contains("master_link_status:up") {
                return Some(format!("{p}: replica link down"));
            }
            maps.push(self.slot_map(p));
        }
        (!maps.windows(2).all(|w| w[0] == w[1])).then(|| format!("the nodes' slot maps differ: {maps:?}"))
    }

    /// `(start, end, master port)` of every slot range, as node `port` sees them.
    fn slot_map(&self, port: u16) -> Vec<(i64, i64, i64)> {
        let Frame::Array(ranges) = self.client(port).run(&["CLUSTER", "SLOTS"]) else { panic!("CLUSTER SLOTS") };
        let mut v: Vec<(i64, i64, i64)> = ranges
            .into_iter()
            .map(|r| {
                let Frame::Array(r) = r else { panic!("range") };
                let (Frame::Integer(s), Frame::Integer(e), Frame::Array(m)) = (&r[0], &r[1], &r[2]) else {
                    panic!("range {r:?}")
                };
                let Frame::Integer(port) = m[1] else { panic!("port") };
                (*s, *e, port)
            })
            .collect();
        v.sort();
        v
    }

    /// The port of the master that serves `slot`.
    fn owner(&self, slot: i64) -> u16 {
        let map = self.slot_map(self.ports[0]);
        let (_, _, p) = map.iter().find(|(s, e, _)| (*s..=*e).contains(&slot)).expect("slot served");
        *p as u16
    }

    fn node_id(&self, port: u16) -> String {
        match self.client(port).run(&["CLUSTER", "MYID"]) {
            Frame::Bulk(id) => String::from_utf8(id).unwrap(),
            other => panic!("CLUSTER MYID: {other:?}"),
        }
    }

    fn slot(&self, key: &str) -> i64 {
        match self.client(self.ports[0]).run(&["CLUSTER", "KEYSLOT", key]) {
            Frame::Integer(s) => s,
            other => panic!("CLUSTER KEYSLOT: {other:?}"),
        }
    }

    /// The masters' ports.
    fn masters(&self) -> Vec<u16> {
        let mut m: Vec<u16> = self.slot_map(self.ports[0]).iter().map(|r| r.2 as u16).collect();
        m.sort();
        m.dedup();
        m
    }

    /// The port of a replica of master `port`.
    fn replica_of(&self, master: u16) -> u16 {
        *self
            .ports
            .iter()
            .find(|&&p| {
                let Frame::Array(role) = self.client(p).run(&["ROLE"]) else { return false };
                matches!(&role[..], [Frame::Bulk(r), _, Frame::Integer(mp), ..] if r == b"slave" && *mp == i64::from(master))
            })
            .expect("a replica")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = &self.dir;
    }
}

/// A cluster client for the test's own reads and writes: sends a command to the node it last
/// learned owns the key (any node at first), follows `MOVED` (remembering the owner) and `ASK`
/// (`ASKING`, then the command, at the node named), and waits out `TRYAGAIN` and `CLUSTERDOWN`.
struct ClusterClient {
    ports: Vec<u16>,
    conns: HashMap<u16, Client>,
    owner: HashMap<String, u16>,
}

impl ClusterClient {
    fn new(ports: &[u16]) -> ClusterClient {
        ClusterClient { ports: ports.to_vec(), conns: HashMap::new(), owner: HashMap::new() }
    }

    fn conn(&mut self, port: u16) -> &mut Client {
        self.conns.entry(port).or_insert_with(|| {
            Client::from(TcpStream::connect(("127.0.0.1", port)).expect("connect to a cluster node"))
        })
    }

    fn run(&mut self, key: &str, args: &[&str]) -> Frame {
        let mut port = self.owner.get(key).copied().unwrap_or(self.ports[0]);
        let deadline = Instant::now() + BOUND;
        while Instant::now() < deadline {
            let r = self.conn(port).run(args);
            let Frame::Error(e) = &r else { return r };
            let e = String::from_utf8_lossy(e).into_owned();
            let target = || -> u16 { e.rsplit(':').next().unwrap().parse().unwrap() };
            if e.starts_with("MOVED ") {
                port = target();
                self.owner.insert(key.to_string(), port);
            } else if e.starts_with("ASK ") {
                let p = target();
                assert_eq!(self.conn(p).run(&["ASKING"]), Frame::Simple(b"OK".to_vec()));
                let r = self.conn(p).run(args);
                if !matches!(&r, Frame::Error(e) if e.starts_with(b"MOVED") || e.starts_with(b"TRYAGAIN")) {
                    return r;
                }
            } else if e.starts_with("TRYAGAIN") || e.starts_with("CLUSTERDOWN") {
                std::thread::sleep(Duration::from_millis(20));
            } else {
                return r;
            }
        }
        panic!("{args:?}: still redirected or refused after {BOUND:?}");
    }

    fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        match self.run(key, &["GET", key]) {
            Frame::Bulk(v) => Some(v),
            Frame::Null => None,
            other => panic!("GET {key}: {other:?}"),
        }
    }
}

fn get(s: &Sidecar, k: &str) -> RawResponse {
    http(s.api, "GET", &format!("/v1/tables/t/keys/{}", k.replace('{', "%7B").replace('}', "%7D")), b"")
}

fn header<'r>(r: &'r RawResponse, name: &str) -> Option<&'r str> {
    r.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn sidecar(dir: &Path, cluster: &Cluster, extra: &[&str]) -> Sidecar {
    let url = cluster.url();
    let mut args = vec!["--table", "t=4096:8MiB", "--upstream", url.as_str(), "--mirror", "t=k:"];
    args.extend_from_slice(extra);
    Sidecar::start(dir, &args)
}

/// Wait until every master holds `n` tracking connections.
fn wait_connected(cluster: &Cluster, n: usize) {
    for m in cluster.masters() {
        eventually("a tracking connection per master", BOUND, || {
            (cluster.client(m).near_clients().len() == n).then_some(())
        });
    }
}

/// Must-show 5, routing: one tracking connection per master; each fill goes to the master of
/// its key's slot (`INFO commandstats` per node) and is invalidated by that master; an `ASK`
/// during a slot migration is followed (`ASKING`) and its answer is not cached (nothing tracks
/// it), a `PUT` follows it too; once the slot has moved, the old master's `MOVED` makes the
/// sidecar re-discover the cluster, clear the table and answer from the new owner.
#[test]
fn cluster_routes_by_slot_and_follows_ask_and_moved() {
    const TEST: &str = "cluster_routes_by_slot_and_follows_ask_and_moved";
    let Some(cluster) = Cluster::start_or_skip(TEST, 3, 0) else { return };
    let _wd = Watchdog::arm(std::process::id(), Duration::from_secs(180), TEST);
    let tmp = tempfile::tempdir().unwrap();
    // A long timeout: the slot map poll (a third of it) stays out of the way, so what the
    // sidecar notices below is the redirections.
    let s = sidecar(tmp.path(), &cluster, &["--upstream-timeout", "90s"]);
    wait_connected(&cluster, 1);
    let r = table(tmp.path(), "t");
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3);
    let mut cc = ClusterClient::new(&cluster.ports);

    // A key on every master.
    let mut keys: HashMap<u16, String> = HashMap::new();
    for i in 0.. {
        let k = format!("r{i}");
        keys.entry(cluster.owner(cluster.slot(&format!("k:{k}")))).or_insert(k);
        if keys.len() == 3 {
            break;
        }
    }
    for (m, k) in &keys {
        cc.run(&format!("k:{k}"), &["SET", &format!("k:{k}"), &format!("on {m}")]);
        cluster.client(*m).run(&["CONFIG", "RESETSTAT"]);
    }
    for (m, k) in &keys {
        let resp = get(&s, k);
        assert_eq!((resp.status, header(&resp, "x-podcache-source")), (200, Some("upstream")));
        assert_eq!(resp.body, format!("on {m}").as_bytes());
        assert_eq!(lookup(&r, k.as_bytes()).unwrap(), Cached::Value(format!("on {m}").into_bytes()));
    }
    for m in &masters {
        assert_eq!(cluster.client(*m).calls("get"), 1, "master {m} served its own key's fill");
    }
    // Each master invalidates what was filled from it.
    for k in keys.values() {
        cc.run(&format!("k:{k}"), &["SET", &format!("k:{k}"), "changed"]);
    }
    eventually("every master's invalidation applied", BOUND, || {
        keys.values().all(|k| lookup(&r, k.as_bytes()).unwrap() == Cached::NotCached).then_some(())
    });

    // A slot in migration: `{t}a` moved to the importing node already, `{t}b` not yet.
    let slot = cluster.slot("k:{t}a");
    assert_eq!(slot, cluster.slot("k:{t}b"));
    let from = cluster.owner(slot);
    let to = *masters.iter().find(|&&m| m != from).unwrap();
    let (from_id, to_id) = (cluster.node_id(from), cluster.node_id(to));
    cc.run("k:{t}a", &["SET", "k:{t}a", "a1"]);
    cc.run("k:{t}b", &["SET", "k:{t}b", "b1"]);
    assert_eq!(get(&s, "{t}b").body, b"b1");
    let ok = Frame::Simple(b"OK".to_vec());
    assert_eq!(cluster.client(to).run(&["CLUSTER", "SETSLOT", &slot.to_string(), "IMPORTING", &from_id]), ok);
    assert_eq!(cluster.client(from).run(&["CLUSTER", "SETSLOT", &slot.to_string(), "MIGRATING", &to_id]), ok);
    let migrate = |k: &str| {
        let r = cluster.client(from).run(&["MIGRATE", "127.0.0.1", &to.to_string(), "", "0", "5000", "KEYS", k]);
        assert_eq!(r, ok, "MIGRATE {k}");
    };
    migrate("k:{t}a");
    let resp = get(&s, "{t}a");
    assert_eq!((resp.status, resp.body.as_slice()), (200, b"a1".as_slice()), "ASK followed");
    assert_eq!(lookup(&r, b"{t}a").unwrap(), Cached::NotCached, "an ASK answer is not cached");
    assert_eq!(lookup(&r, b"{t}b").unwrap(), Cached::Value(b"b1".to_vec()), "the source still tracks {{t}}b");
    assert_eq!(http(s.api, "PUT", "/v1/tables/t/keys/%7Bt%7Dc", b"c1").status, 204, "a PUT follows ASK too");
    // Migrating {t}b deletes it on the source, which invalidates it.
    migrate("k:{t}b");
    eventually("the migrated key invalidated", BOUND, || {
        (lookup(&r, b"{t}b").unwrap() == Cached::NotCached).then_some(())
    });
    for m in &masters {
        cluster.client(*m).run(&["CLUSTER", "SETSLOT", &slot.to_string(), "NODE", &to_id]);
    }
    let changes = metric(&s, "podcache_near_topology_changes_total");
    let resp = get(&s, "{t}b");
    assert_eq!((resp.status, resp.body.as_slice()), (200, b"b1".as_slice()), "MOVED followed");
    assert!(metric(&s, "podcache_near_topology_changes_total") > changes, "MOVED handled as a topology change");
    assert_eq!(get(&s, "{t}c").body, b"c1");
    assert_eq!(cc.get("k:{t}c"), Some(b"c1".to_vec()));
    // The new owner tracks what is filled from it now.
    eventually("filled from the new owner", BOUND, || {
        let _ = get(&s, "{t}a");
        (lookup(&r, b"{t}a").unwrap() == Cached::Value(b"a1".to_vec())).then_some(())
    });
    cc.run("k:{t}a", &["SET", "k:{t}a", "a2"]);
    eventually("invalidated by the new owner", BOUND, || {
        (lookup(&r, b"{t}a").unwrap() != Cached::Value(b"a1".to_vec())).then_some(())
    });
    assert_eq!(get(&s, "{t}a").body, b"a2");
    wait_connected(&cluster, 1);
}

/// Child: random SET / SET PX / DEL / PEXPIRE through the test's cluster client, each write a
/// new version, until the stop file appears.
fn writer_child(ports: &[u16], keys: &[String], stop: &Path) {
    let mut c = ClusterClient::new(ports);
    let mut rng = Rng(0x5eed_0003 ^ u64::from(std::process::id()));
    let mut version = 0;
    while !stop.exists() {
        version += 1;
        let k = format!("k:{}", keys[rng.below(keys.len() as u64) as usize]);
        random_write(&mut rng, version, &k, &mut |args| c.run(&k, args));
    }
    println!("@@WRITER ops={version}");
}

/// Must-show 5: three sidecars (three Pods) mirror one Redis Cluster (three masters, a replica
/// each). A writer process does random SET / SET PX / DEL / PEXPIRE with versioned values and
/// three reader processes read all three tables, while 1000 slots (holding half the keys) are
/// resharded to another master (`redis-cli --cluster reshard`) and then that master's replica
/// takes over (`CLUSTER FAILOVER`). No reader ever sees a version older than one it saw before
/// for the same table and key; once the writes stop every table agrees with the cluster; and
/// every sidecar noticed both topology changes.
#[test]
fn three_pods_agree_with_a_cluster_across_reshard_and_failover() {
    const TEST: &str = "three_pods_agree_with_a_cluster_across_reshard_and_failover";
    let list = |name: &str| -> Vec<String> { std::env::var(name).unwrap().split(',').map(str::to_string).collect() };
    match std::env::var(ROLE).as_deref() {
        Ok("writer") => {
            let ports: Vec<u16> = list("PORTS").iter().map(|p| p.parse().unwrap()).collect();
            return writer_child(&ports, &list("KEYNAMES"), Path::new(&std::env::var("STOP").unwrap()));
        }
        Ok("reader") => {
            let dirs: Vec<PathBuf> = list("DIRS").iter().map(PathBuf::from).collect();
            let apis: Vec<SocketAddr> = list("APIS").iter().map(|a| a.parse().unwrap()).collect();
            return reader_child(&dirs, &apis, &list("KEYNAMES"), Path::new(&std::env::var("STOP").unwrap()), true);
        }
        _ => {}
    }
    let Some(cluster) = Cluster::start_or_skip(TEST, 3, 1) else { return };
    let _wd = Watchdog::arm(std::process::id(), Duration::from_secs(300), TEST);
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = (0..3).map(|i| tmp.path().join(format!("pod{i}"))).collect();
    let sidecars: Vec<Sidecar> = dirs.iter().map(|d| sidecar(d, &cluster, &[])).collect();
    wait_connected(&cluster, 3);

    // 20 keys in the slots the reshard moves (the lowest 1000 of slot 0's master), 20 elsewhere.
    const MOVING: i64 = 1000;
    let moving = 0..MOVING;
    let (mut inside, mut outside) = (Vec::new(), Vec::new());
    for i in 0.. {
        let k = format!("{i}");
        let s = cluster.slot(&format!("k:{k}"));
        let bucket = if moving.contains(&s) { &mut inside } else { &mut outside };
        if bucket.len() < 20 {
            bucket.push(k);
        }
        if inside.len() == 20 && outside.len() == 20 {
            break;
        }
    }
    let keys: Vec<String> = [inside, outside].concat();
    let from = cluster.owner(0);
    let to = *cluster.masters().iter().find(|&&m| m != from).unwrap();

    let stop_writer = tmp.path().join("stop-writer");
    let stop_readers = tmp.path().join("stop-readers");
    let join = |v: Vec<String>| v.join(",");
    let readers: Vec<_> = (0..3)
        .map(|_| {
            self_command(TEST, "reader")
                .env("DIRS", join(dirs.iter().map(|d| d.display().to_string()).collect()))
                .env("APIS", join(sidecars.iter().map(|s| s.api.to_string()).collect()))
                .env("KEYNAMES", join(keys.clone()))
                .env("STOP", &stop_readers)
                .spawn()
                .unwrap()
        })
        .collect();
    let writer = self_command(TEST, "writer")
        .env("PORTS", join(cluster.ports.iter().map(|p| p.to_string()).collect()))
        .env("KEYNAMES", join(keys.clone()))
        .env("STOP", &stop_writer)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));

    // A slot migration while writing.
    let t = Instant::now();
    let out = Command::new("redis-cli")
        .args(["--cluster", "reshard", &format!("127.0.0.1:{from}")])
        .args(["--cluster-from", &cluster.node_id(from), "--cluster-to", &cluster.node_id(to)])
        .args(["--cluster-slots", &MOVING.to_string(), "--cluster-yes"])
        .output()
        .unwrap();
    assert!(out.status.success(), "reshard: {}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(cluster.owner(0), to, "slot 0 moved");
    let resharded = t.elapsed();
    cluster.wait_settled();
    std::thread::sleep(Duration::from_millis(500));

    // A replica failover of the master that now holds the moved slots, while writing.
    let t = Instant::now();
    let replica = cluster.replica_of(to);
    // A manual failover gives up if the replica has not caught up within 5 s (a loaded
    // machine): ask again until it took over.
    let is_master =
        |p: u16| matches!(cluster.client(p).run(&["ROLE"]), Frame::Array(r) if r[0] == Frame::Bulk(b"master".to_vec()));
    eventually("the replica took over", BOUND, || {
        assert_eq!(cluster.client(replica).run(&["CLUSTER", "FAILOVER"]), Frame::Simple(b"OK".to_vec()));
        let asked = Instant::now();
        while asked.elapsed() < Duration::from_secs(8) {
            if is_master(replica) {
                return Some(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    });
    cluster.wait_settled();
    assert_eq!(cluster.owner(0), replica, "the replica serves slot 0");
    let failed_over = t.elapsed();
    std::thread::sleep(Duration::from_millis(500));

    std::fs::write(&stop_writer, b"").unwrap();
    let out = writer.wait_with_output().unwrap();
    assert!(out.status.success(), "writer child failed");
    let ops = report(&String::from_utf8_lossy(&out.stdout), "WRITER", "ops");
    let writes_stopped = Instant::now();

    // Every table agrees with the cluster: what a table holds is what the cluster holds, and an
    // HTTP GET on every Pod answers what the cluster answers. Polled until true (the time it
    // took is printed, not asserted); each round compares with the cluster's values read before
    // and after it (with no writes a key only expires, and either answer agrees).
    let mut cc = ClusterClient::new(&cluster.ports);
    let tables: Vec<_> = dirs.iter().map(|d| table(d, "t")).collect();
    let mut snapshot = || keys.iter().map(|k| cc.get(&format!("k:{k}"))).collect::<Vec<_>>();
    let deadline = Instant::now() + BOUND;
    let mut last = String::new();
    let agreed_after = loop {
        let round_started = writes_stopped.elapsed();
        let before = snapshot();
        let mut got = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            for (t, r) in tables.iter().enumerate() {
                let cached = lookup(r, k.as_bytes()).unwrap();
                let resp = http(sidecars[t].api, "GET", &format!("/v1/tables/t/keys/{k}"), b"");
                got.push((i, t, cached, resp.status, resp.body));
            }
        }
        let after = snapshot();
        let mut disagree = Vec::new();
        for (i, t, cached, status, body) in got {
            let answer = match status {
                200 => Some(Some(body)),
                404 => Some(None),
                _ => None,
            };
            let agrees = |w: &Option<Vec<u8>>| {
                let table_ok = match &cached {
                    Cached::Value(v) => w.as_ref() == Some(v),
                    Cached::Absent => w.is_none(),
                    Cached::NotCached => true,
                };
                table_ok && answer.as_ref() == Some(w)
            };
            if !agrees(&before[i]) && !agrees(&after[i]) {
                disagree.push(format!("pod{t} key {} ({status})", keys[i]));
            }
        }
        if disagree.is_empty() {
            break round_started;
        }
        last = disagree.join(", ");
        assert!(Instant::now() < deadline, "tables never agreed with the cluster: {last}");
        std::thread::sleep(Duration::from_millis(10));
    };
    std::fs::write(&stop_readers, b"").unwrap();
    let (mut values, mut http_gets, mut unavailable) = (0, 0, 0);
    for r in readers {
        let out = r.wait_with_output().unwrap();
        assert!(out.status.success(), "reader child failed");
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(report(&out, "READER", "violations"), 0, "a reader saw a version go backwards");
        values += report(&out, "READER", "values");
        http_gets += report(&out, "READER", "http_gets");
        unavailable += report(&out, "READER", "unavailable");
    }
    assert!(values > 0 && http_gets > 0, "values {values}, http gets {http_gets}");
    for s in &sidecars {
        // The reshard and the failover each changed the slot map.
        assert!(metric(s, "podcache_near_topology_changes_total") >= 2.0, "both topology changes noticed");
        assert_eq!(metric(s, "podcache_near_connected"), 3.0, "one tracking connection per master");
    }
    wait_connected(&cluster, 3);
    eprintln!(
        "cluster: {ops} writes; reshard of {} slots took {resharded:?}, failover {failed_over:?}; the three pods agreed \
         with the cluster in the round of checks that began {agreed_after:?} after the writes stopped ({values} cached \
         values read, {http_gets} HTTP gets, {unavailable} answered 503 during topology changes; last disagreement \
         seen: {last:?})",
        MOVING
    );
}
