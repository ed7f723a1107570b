//! The command-line tools as a user runs them: separate processes on real files.

mod common;

use common::{client, config, podcache, start};
use std::time::Duration;
use tokio::time::timeout;

const WATCHDOG: Duration = Duration::from_secs(120);

#[test]
fn help_texts_describe_every_command() {
    let (code, out, _) = podcache(&["--help"]);
    assert_eq!(code, 0);
    let out = String::from_utf8(out).unwrap();
    for cmd in ["serve", "inspect", "verify", "get", "keys", "dump", "tail", "put", "del", "publish", "load"] {
        assert!(out.contains(&format!("  {cmd} ")), "{cmd} missing from --help:\n{out}");
        let (code, sub, _) = podcache(&[cmd, "--help"]);
        assert_eq!(code, 0, "{cmd} --help");
        assert!(String::from_utf8(sub).unwrap().contains("Usage: podcache"), "{cmd}");
    }
    let (_, serve, _) = podcache(&["serve", "--help"]);
    let serve = String::from_utf8(serve).unwrap();
    for flag in [
        "--dir",
        "--table",
        "--ring",
        "--listen",
        "--socket",
        "--ops-listen",
        "--token-file",
        "--file-mode",
        "--replace-mismatched",
        "--log-format",
        "PODCACHE_TABLES",
    ] {
        assert!(serve.contains(flag), "serve --help lacks {flag}");
    }
    let (code, _, err) = podcache(&["serve", "--table", "../x=1:1MiB"]);
    assert_eq!(code, 2, "clap usage error");
    assert!(err.contains("not allowed"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_through_the_sidecar_when_it_holds_the_file_and_directly_otherwise() {
    timeout(WATCHDOG, async {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap().to_string();
        let s = start(config(dir.path())).await;
        let url = format!("http://{}", s.api);
        let (d2, u2) = (d.clone(), url.clone());
        tokio::task::spawn_blocking(move || {
            let (code, _, err) = podcache(&["put", "--dir", &d2, "--url", &u2, "web", "via sidecar", "v1"]);
            assert_eq!(code, 0, "{err}");
            let (code, out, err) = podcache(&["publish", "--dir", &d2, "--url", &u2, "events", "m1"]);
            assert_eq!((code, out, err), (0, b"1\n".to_vec(), String::new()));
            let nd = format!("{d2}/load.ndjson");
            std::fs::write(&nd, "{\"key\":\"l1\",\"value\":\"x\"}\n{\"key\":\"l2\",\"value\":\"y\"}\n").unwrap();
            let (code, out, err) = podcache(&["load", "--dir", &d2, "--url", &u2, "web", &nd]);
            assert_eq!((code, String::from_utf8(out).unwrap().trim().to_string()), (0, "2".to_string()), "{err}");
            let (code, _, err) = podcache(&["del", "--dir", &d2, "--url", &u2, "web", "l2"]);
            assert_eq!(code, 0, "{err}");
            let (code, _, err) = podcache(&["del", "--dir", &d2, "--url", &u2, "web", "l2"]);
            assert_eq!(code, 1);
            assert!(err.contains("404"), "{err}");
            // A wrong URL: a clear error.
            let (code, _, err) = podcache(&["put", "--dir", &d2, "--url", "http://127.0.0.1:1", "web", "k", "v"]);
            assert_eq!(code, 1);
            assert!(err.contains("cannot be reached"), "{err}");
        })
        .await
        .unwrap();
        let c = client();
        assert_eq!(c.get(s.url("/v1/tables/web/keys/via%20sidecar")).send().await.unwrap().text().await.unwrap(), "v1");
        assert_eq!(c.get(s.url("/v1/tables/web/keys/l1")).send().await.unwrap().text().await.unwrap(), "x");
        assert_eq!(c.get(s.url("/v1/tables/web/keys/l2")).send().await.unwrap().status(), 404);
        s.stop().await.unwrap();

        // No sidecar: the CLI takes the writer lock itself.
        tokio::task::spawn_blocking(move || {
            let (code, _, err) = podcache(&["put", "--dir", &d, "--url", "http://127.0.0.1:1", "web", "direct", "v2"]);
            assert_eq!(code, 0, "{err}");
            let (code, out, err) = podcache(&["publish", "--dir", &d, "--url", "http://127.0.0.1:1", "events", "m2"]);
            assert_eq!((code, out), (0, b"2\n".to_vec()), "{err}");
            let (code, out, _) = podcache(&["get", "--dir", &d, "web", "direct"]);
            assert_eq!((code, out), (0, b"v2".to_vec()));
            let (code, out, _) = podcache(&["get", "--dir", &d, "web", "via sidecar"]);
            assert_eq!((code, out), (0, b"v1".to_vec()));
            let (code, out, _) = podcache(&["tail", "--dir", &d, "events", "--from", "oldest", "-n", "2"]);
            assert_eq!((code, out), (0, b"m1\nm2\n".to_vec()));
            let (code, _, err) = podcache(&["put", "--dir", &d, "nosuch", "k", "v"]);
            assert_eq!(code, 1);
            assert!(err.contains("no such table"), "{err}");
        })
        .await
        .unwrap();
        // The sidecar attaches again and sees what the CLI wrote.
        let s = start(config(dir.path())).await;
        assert_eq!(c.get(s.url("/v1/tables/web/keys/direct")).send().await.unwrap().text().await.unwrap(), "v2");
        s.stop().await.unwrap();
    })
    .await
    .expect("watchdog");
}

#[test]
fn inspect_and_verify_find_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("t.table");
    let ring = dir.path().join("r.ring");
    {
        let mut w = podcache_writer::TableWriter::builder(&table).max_items(100).data_bytes(1 << 20).create().unwrap();
        for i in 0..50 {
            w.put(format!("key{i}").as_bytes(), format!("value number {i}").as_bytes()).unwrap();
        }
        let mut p = podcache_writer::Publisher::builder(&ring).capacity(1 << 16).create().unwrap();
        for i in 0..20 {
            p.publish(format!("message {i}").as_bytes()).unwrap();
        }
    }
    let t = table.to_str().unwrap();
    let r = ring.to_str().unwrap();
    let (code, out, err) = podcache(&["inspect", "--json", t]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!((v["header"]["kind"].as_str(), v["stats"]["items"].as_u64()), (Some("table"), Some(50)));
    let (code, out, _) = podcache(&["inspect", r]);
    assert_eq!(code, 0);
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains("stats.newest_seq") && out.contains("20"), "{out}");
    assert_eq!(podcache(&["verify", t]).0, 0);
    assert_eq!(podcache(&["verify", r]).0, 0);

    // Flip one byte of a value in the table's data region: verify finds it (exit 1).
    let mut bytes = std::fs::read(&table).unwrap();
    let needle = b"value number 17";
    let at = bytes.windows(needle.len()).position(|w| w == needle).expect("value in the file");
    bytes[at + 3] ^= 0x20;
    std::fs::write(&table, &bytes).unwrap();
    let (code, out, _) = podcache(&["verify", "--json", t]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["ok"], false);
    assert!(v["problems"][0].as_str().unwrap().contains("checksum"), "{v}");

    // The same for a ring message.
    let mut bytes = std::fs::read(&ring).unwrap();
    let needle = b"message 5";
    let at = bytes.windows(needle.len()).position(|w| w == needle).expect("message in the file");
    bytes[at] ^= 0x01;
    std::fs::write(&ring, &bytes).unwrap();
    let (code, out, _) = podcache(&["verify", r]);
    assert_eq!(code, 1);
    assert!(String::from_utf8(out).unwrap().contains("CORRUPT"));

    // Not a podcache file at all; a truncated one; a missing one.
    let junk = dir.path().join("junk.table");
    std::fs::write(&junk, vec![0x5au8; 8192]).unwrap();
    let (code, _, err) = podcache(&["verify", junk.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("CORRUPT"), "{err}");
    let short = dir.path().join("short.table");
    std::fs::write(&short, &std::fs::read(&table).unwrap()[..4096]).unwrap();
    assert_eq!(podcache(&["verify", short.to_str().unwrap()]).0, 1);
    assert_eq!(podcache(&["inspect", short.to_str().unwrap()]).0, 1);
    let (code, _, err) = podcache(&["inspect", dir.path().join("absent.table").to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("No such file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_the_unix_socket_with_the_token() {
    timeout(WATCHDOG, async {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let tok = dir.path().join("token");
        std::fs::write(&tok, "t0ken\n").unwrap();
        let mut cfg = config(&data);
        cfg.socket = Some("api.sock".into());
        cfg.token_file = Some(tok.clone());
        let s = start(cfg).await;
        let (d, t) = (data.to_str().unwrap().to_string(), tok.to_str().unwrap().to_string());
        tokio::task::spawn_blocking(move || {
            let (code, _, err) = podcache(&["put", "--dir", &d, "--socket", "api.sock", "web", "k", "v"]);
            assert_eq!(code, 1, "no token");
            assert!(err.contains("401"), "{err}");
            let (code, _, err) =
                podcache(&["put", "--dir", &d, "--socket", "api.sock", "--token-file", &t, "web", "k", "v"]);
            assert_eq!(code, 0, "{err}");
            let (code, out, err) =
                podcache(&["publish", "--dir", &d, "--socket", "api.sock", "--token-file", &t, "events", "e"]);
            assert_eq!((code, out), (0, b"1\n".to_vec()), "{err}");
            let (code, out, _) = podcache(&["get", "--dir", &d, "web", "k"]);
            assert_eq!((code, out), (0, b"v".to_vec()));
        })
        .await
        .unwrap();
        s.stop().await.unwrap();
    })
    .await
    .expect("watchdog");
}

/// Item 9 of issue 14: a tool whose stdout is closed (`podcache inspect FILE | true`) ends
/// quietly with its own status, never with a panic.
#[test]
fn tools_end_quietly_on_a_closed_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("web.table");
    let ring = dir.path().join("events.ring");
    {
        let mut w = podcache_writer::TableWriter::builder(&table).max_items(100).data_bytes(1 << 20).create().unwrap();
        for i in 0..50 {
            w.put(format!("key{i}").as_bytes(), b"value").unwrap();
        }
        let mut p = podcache_writer::Publisher::builder(&ring).capacity(1 << 16).create().unwrap();
        p.publish(b"m").unwrap();
    }
    let nd = dir.path().join("load.ndjson");
    std::fs::write(&nd, "{\"key\":\"a\",\"value\":\"1\"}\n").unwrap();
    let (d, t, r, n) =
        (dir.path().to_str().unwrap(), table.to_str().unwrap(), ring.to_str().unwrap(), nd.to_str().unwrap());
    let nowhere = "http://127.0.0.1:1";
    let runs: [&[&str]; 9] = [
        &["inspect", t],
        &["inspect", "--json", r],
        &["verify", t],
        &["verify", "--json", r],
        &["keys", "--dir", d, "web"],
        &["dump", "--dir", d, "web"],
        &["get", "--dir", d, "web", "key1"],
        &["publish", "--dir", d, "--url", nowhere, "events", "m2"],
        &["load", "--dir", d, "--url", nowhere, "web", n],
    ];
    for args in runs {
        // A pipe whose read end is already closed: every write fails with EPIPE.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_podcache"))
            .args(args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?} wrote to stderr: {err}");
    }
}

/// Item 4 of issue 14: on a read-only mount of the directory (an app container's
/// `readOnly: true`), put, del, publish and load go through the sidecar's socket. Needs root to
/// bind-mount the directory read-only; without it the test says so and passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_from_a_read_only_mount_go_through_the_sidecar() {
    timeout(WATCHDOG, async {
        let dir = tempfile::tempdir().unwrap();
        let (rw, ro) = (dir.path().join("rw"), dir.path().join("ro"));
        std::fs::create_dir_all(&ro).unwrap();
        let mut cfg = config(&rw);
        cfg.socket = Some("api.sock".into());
        let s = start(cfg).await;
        let mount =
            |args: &[&str]| std::process::Command::new("mount").args(args).status().is_ok_and(|st| st.success());
        let (rws, ros) = (rw.to_str().unwrap().to_string(), ro.to_str().unwrap().to_string());
        if !(mount(&["--bind", &rws, &ros]) && mount(&["-o", "remount,bind,ro", &ros])) {
            eprintln!("skipped: cannot bind-mount read-only here (not root?)");
            let _ = std::process::Command::new("umount").arg(&ros).status();
            s.stop().await.unwrap();
            return;
        }
        let d = ros.clone();
        let r = tokio::task::spawn_blocking(move || {
            let nd = format!("{d}/../load.ndjson");
            std::fs::write(&nd, "{\"key\":\"l\",\"value\":\"x\"}\n").unwrap();
            let w = ["--dir", d.as_str(), "--socket", "api.sock"];
            let run = |args: &[&str]| podcache(&[&args[..1], &w[..], &args[1..]].concat());
            let (code, _, err) = run(&["put", "web", "k", "v"]);
            assert_eq!(code, 0, "put: {err}");
            let (code, out, err) = run(&["publish", "events", "m"]);
            assert_eq!((code, out), (0, b"1\n".to_vec()), "publish: {err}");
            let (code, out, err) = run(&["load", "web", &nd]);
            assert_eq!((code, out), (0, b"1\n".to_vec()), "load: {err}");
            let (code, _, err) = run(&["del", "web", "l"]);
            assert_eq!(code, 0, "del: {err}");
            let (code, out, _) = podcache(&["get", "--dir", &d, "web", "k"]);
            assert_eq!((code, out), (0, b"v".to_vec()));
        })
        .await;
        let _ = std::process::Command::new("umount").arg(&ros).status();
        r.unwrap();
        s.stop().await.unwrap();
    })
    .await
    .expect("watchdog");
}
