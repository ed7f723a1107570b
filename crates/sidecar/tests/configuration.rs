//! Configuration as an operator writes it: precedence of flags, environment and file field by
//! field, empty lists, Kubernetes-style sizes, query parameters the API does not know, and a
//! token file that is rotated under the running sidecar.

mod common;

use common::child::{connect, read_response, send_request, Sidecar, Watchdog};
use podcache_reader::TableReader;
use podcache_writer::TableWriter;
use std::io::BufReader;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Run `podcache serve ARGS` that must refuse to start: returns its stderr (fails if it exits 0;
/// a watchdog kills it and fails the test if it keeps running).
fn serve_refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let child = Command::new(env!("CARGO_BIN_EXE_podcache"))
        .arg("serve")
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn podcache serve");
    let _dog = Watchdog::arm(child.id(), Duration::from_secs(60), "a refused podcache serve");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "podcache serve {args:?} {env:?} started; it should have been refused: {err}");
    err
}

/// One request on a fresh connection: (status, body).
fn request(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, Vec<u8>) {
    let mut s = connect(addr);
    send_request(&mut s, method, path, "Connection: close\r\n", b"").unwrap();
    let r = read_response(&mut BufReader::new(s)).unwrap();
    (r.status, r.body)
}

fn make_table(path: &Path, max_items: u64) {
    let mut w = TableWriter::builder(path).max_items(max_items).data_bytes(1 << 20).create().unwrap();
    w.put(b"precious", b"data").unwrap();
}

fn holds_precious(path: &Path) -> bool {
    TableReader::open(path).unwrap().get_vec(b"precious").unwrap().is_some()
}

#[test]
fn false_in_the_environment_or_a_flag_overrides_true_in_the_file_for_replacing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let table = dir.path().join("web.table");
    make_table(&table, 100);
    let cfg = dir.path().join("podcache.toml");
    std::fs::write(&cfg, "replace_mismatched = true\ntables = [\"web=200:1Mi\"]\n").unwrap();
    let c = cfg.to_str().unwrap();
    let base = ["--config", c, "--dir", d, "--listen", "127.0.0.1:0", "--ops-listen", "none"];

    let err = serve_refused(&base, &[("PODCACHE_REPLACE_MISMATCHED", "false")]);
    assert!(err.contains("layout") && err.contains("web.table"), "{err}");
    // Both layouts in the configuration's own terms, not the header's words.
    assert!(err.contains("web=100:") && err.contains("web=200:1048576"), "{err}");
    assert!(holds_precious(&table), "the environment's false must keep the file");

    let mut flag = base.to_vec();
    flag.extend(["--replace-mismatched", "false"]);
    let err = serve_refused(&flag, &[("PODCACHE_REPLACE_MISMATCHED", "true")]);
    assert!(err.contains("layout"), "{err}");
    assert!(holds_precious(&table), "the flag's false must win over the environment's true");

    // The file's true applies when nothing overrides it, and the replacement is a warning
    // naming the file and what it held.
    let sc = Sidecar::start(dir.path(), &["--config", c]);
    let warn = sc
        .startup_log
        .iter()
        .find(|l| l["level"] == "WARN" && l["fields"]["path"].as_str().is_some_and(|p| p.ends_with("web.table")))
        .unwrap_or_else(|| panic!("no WARN naming web.table in {:?}", sc.startup_log));
    let destroyed = warn["fields"]["destroyed"].as_str().unwrap();
    assert!(destroyed.starts_with("1 items"), "{destroyed}");
    assert!(warn["fields"]["mismatch"].as_str().unwrap().contains("layout"), "{warn}");
    assert!(!holds_precious(&table));
}

#[test]
fn an_empty_list_in_the_environment_means_none() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("podcache.toml");
    std::fs::write(&cfg, "tables = [\"web=100:1Mi\"]\nrings = [\"events=1Mi\"]\n").unwrap();
    let sc = Sidecar::start_with_env(dir.path(), &["--config", cfg.to_str().unwrap()], &[("PODCACHE_TABLES", "")]);
    let (status, body) = request(sc.api, "GET", "/v1/tables");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["tables"].as_array().unwrap().len(), 0, "{v}");
    assert!(!dir.path().join("web.table").exists());
    let (_, body) = request(sc.api, "GET", "/v1/rings");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["rings"][0]["name"], "events", "the rings of the file still apply: {v}");
    drop(sc);

    // Both lists empty: a sidecar with no file at all still starts (health and metrics only).
    let dir = tempfile::tempdir().unwrap();
    let sc = Sidecar::start_with_env(dir.path(), &[], &[("PODCACHE_TABLES", ""), ("PODCACHE_RINGS", " ")]);
    assert_eq!(request(sc.ops, "GET", "/readyz").0, 200);
}

#[test]
fn sizes_are_kubernetes_quantities() {
    let dir = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(dir.path(), &["--table", "w=10k:1Mi", "--ring", "e=64Ki:1k"]);
    let (_, body) = request(sc.api, "GET", "/v1/tables/w");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["stats"]["max_items"], 10_000, "k is 1000: {v}");
    let (_, body) = request(sc.api, "GET", "/v1/rings");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["rings"][0]["stats"]["capacity"], 64 << 10, "{v}");
    assert_eq!(v["rings"][0]["stats"]["max_message"], 1000, "{v}");
    drop(sc);

    let d = dir.path().to_str().unwrap();
    let quiet = ["--dir", d, "--listen", "127.0.0.1:0", "--ops-listen", "none"];
    // 16M is 16,000,000 bytes: no power of two, and the message says what to write.
    let mut args = quiet.to_vec();
    args.extend(["--ring", "e=16M"]);
    let err = serve_refused(&args, &[]);
    assert!(err.contains("16000000") && err.contains("Mi"), "{err}");
    // The old binary single letters are refused, not silently reinterpreted.
    let mut args = quiet.to_vec();
    args.extend(["--table", "w=10K:1MiB"]);
    let err = serve_refused(&args, &[]);
    assert!(err.contains("Ki") && err.contains("ambiguous"), "{err}");
}

#[tokio::test]
async fn unknown_query_parameters_are_refused_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let sc = common::start(common::config(dir.path())).await;
    let c = common::client();
    let r = c.put(sc.url("/v1/tables/web/keys/k?ttl=5")).body("v").send().await.unwrap();
    let status = r.status().as_u16();
    let v = common::json(r).await;
    assert_eq!((status, v["error"]["code"].as_str().unwrap()), (400, "bad_request"), "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("\"ttl\"") && msg.contains("ttl_ms"), "{msg}");
    assert_eq!(c.get(sc.url("/v1/tables/web/keys/k")).send().await.unwrap().status(), 404, "nothing was stored");

    for (method, path, name) in [
        ("GET", "/v1/tables/web/keys/k?x=1", "x"),
        ("DELETE", "/v1/tables/web/keys/k?ttl_ms=1", "ttl_ms"),
        ("GET", "/v1/tables/web/keys?limit=1&x=1", "x"),
        ("GET", "/v1/rings/events/subscribe?form=oldest", "form"),
        ("POST", "/v1/rings/events/messages?ttl_ms=5", "ttl_ms"),
        ("GET", "/v1/tables?verbose", "verbose"),
    ] {
        let r = c.request(method.parse().unwrap(), sc.url(path)).body("x").send().await.unwrap();
        let (status, v) = (r.status().as_u16(), common::json(r).await);
        assert_eq!(status, 400, "{method} {path}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(&format!("{name:?}")), "{method} {path}: {v}");
    }
    // Known parameters still work.
    assert_eq!(c.put(sc.url("/v1/tables/web/keys/k?ttl_ms=60000")).body("v").send().await.unwrap().status(), 204);
    assert_eq!(c.get(sc.url("/v1/tables/web/keys?limit=5")).send().await.unwrap().status(), 200);
    sc.stop().await.unwrap();
}

/// Replace the file at `path` as a Kubernetes Secret update does: a new file renamed over it.
fn rotate(path: &Path, token: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, token).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn a_rotated_token_file_is_followed_and_the_scheme_is_case_insensitive() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "one\n").unwrap();
    let mut cfg = common::config(&dir.path().join("files"));
    cfg.token_file = Some(token.clone());
    let sc = common::start(cfg).await;
    let c = common::client();
    let status = |auth: &'static str| {
        let req = c.get(sc.url("/v1/tables")).header("Authorization", auth);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    for ok in ["Bearer one", "bearer one", "BEARER one"] {
        assert_eq!(status(ok).await, 200, "{ok}");
    }
    for bad in ["Basic one", "Bearer", "Bearer two", "one"] {
        assert_eq!(status(bad).await, 401, "{bad}");
    }

    rotate(&token, "two\n");
    // The new token is accepted once the file is re-read (at the latest at the next check, about
    // a second); the watchdog bounds the wait, nothing asserts how long it took.
    tokio::time::timeout(Duration::from_secs(30), async {
        while status("Bearer two").await != 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the rotated token is accepted (watchdog)");
    assert_eq!(status("Bearer one").await, 401, "the old token is refused once the new one is in force");

    // A token file that vanishes or turns empty never opens the API: the last token stays.
    std::fs::write(&token, "").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(status("Bearer ").await, 401);
    assert_eq!(status("Bearer x").await, 401);
    assert_eq!(status("Bearer two").await, 200);
    sc.stop().await.unwrap();
}

#[tokio::test]
async fn the_ops_port_is_dual_stack_and_the_lock_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // A lock file an earlier release left world-readable.
    std::fs::write(dir.path().join(podcache_sidecar::LOCK_FILE), b"").unwrap();
    std::fs::set_permissions(dir.path().join(podcache_sidecar::LOCK_FILE), std::fs::Permissions::from_mode(0o644))
        .unwrap();
    let mut cfg = common::config(dir.path());
    cfg.ops_listen = Some("[::]:0".parse().unwrap());
    let sc = common::start(cfg).await;
    let port = sc.ops.port();
    let c = common::client();
    let v4 = c.get(format!("http://127.0.0.1:{port}/healthz")).send().await.unwrap();
    assert_eq!(v4.status(), 200, "an IPv4 client reaches the [::] listener");
    if std::net::TcpStream::connect(("::1", port)).is_ok() {
        let v6 = c.get(format!("http://[::1]:{port}/healthz")).send().await.unwrap();
        assert_eq!(v6.status(), 200);
        assert!(sc.ops.is_ipv6(), "bound [::] itself, not the IPv4 fallback");
    } else {
        eprintln!("this host has no IPv6 loopback: the listener fell back to IPv4 ({})", sc.ops);
    }
    let mode = std::fs::metadata(dir.path().join(podcache_sidecar::LOCK_FILE)).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the directory lock is the sidecar's alone");
    sc.stop().await.unwrap();
}

#[test]
fn build_info_at_start_up_and_access_logs_only_when_asked() {
    let version = env!("CARGO_PKG_VERSION");
    let dir = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(dir.path(), &["--table", "web=100:1Mi"]);
    let start = sc.startup_log.iter().find(|l| l["fields"]["message"] == "ready").expect("the ready line");
    assert_eq!(start["fields"]["version"], version, "{start}");
    assert!(start["fields"]["layout_version"].as_u64().is_some(), "{start}");
    let (_, body) = request(sc.ops, "GET", "/metrics");
    let m = String::from_utf8(body).unwrap();
    let line = m.lines().find(|l| l.starts_with("podcache_build_info{")).unwrap_or_else(|| panic!("{m}"));
    assert!(line.contains(&format!("version=\"{version}\"")) && line.ends_with(" 1"), "{line}");
    assert_eq!(request(sc.api, "GET", "/v1/tables/web/keys/secret-key").0, 404);
    // Off by default: stop it and read its whole log (up to its last line).
    sc.terminate();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !sc.later_log.lock().unwrap().iter().any(|l| l.contains("files closed")) {
        assert!(std::time::Instant::now() < deadline, "the sidecar did not log its shutdown (watchdog)");
        std::thread::sleep(Duration::from_millis(20));
    }
    let lines = sc.later_log.lock().unwrap().clone();
    assert!(!lines.iter().any(|l| l.contains("podcache::access")), "access log without --access-log: {lines:?}");
    drop(sc);

    let dir = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(dir.path(), &["--table", "web=100:1Mi", "--access-log"]);
    assert_eq!(request(sc.api, "GET", "/v1/tables/web/keys/secret-key").0, 404);
    let log = std::sync::Arc::clone(&sc.later_log);
    let access = {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let found = log.lock().unwrap().iter().find(|l| l.contains("podcache::access")).cloned();
            if let Some(l) = found {
                break l;
            }
            assert!(std::time::Instant::now() < deadline, "no access log line (watchdog)");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let v: serde_json::Value = serde_json::from_str(&access).unwrap();
    assert_eq!(v["fields"]["status"], 404, "{v}");
    assert_eq!(v["fields"]["route"], "/v1/tables/{table}/keys/{*key}", "{v}");
    assert!(!access.contains("secret-key"), "an access log line never holds the key: {access}");
}
