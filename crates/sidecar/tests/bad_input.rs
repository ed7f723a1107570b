//! Bad input: oversized bodies, keys and values, invalid names, malformed NDJSON, bad TTLs,
//! files of the wrong kind or version, a volume too small, a second serve on the same directory.
//! No panic, and nothing already stored is lost.

mod common;

use common::{client, config, error_code, json, podcache, refused, start, try_start};
use podcache_sidecar::{Error, TableSpec};
use std::time::Duration;
use tokio::time::timeout;

const WATCHDOG: Duration = Duration::from_secs(120);

/// Put a few keys that every test checks are still there at the end.
async fn seed(c: &reqwest::Client, s: &common::Running) {
    for i in 0..10 {
        let r = c.put(s.url(&format!("/v1/tables/web/keys/keep{i}"))).body(format!("v{i}")).send().await.unwrap();
        assert_eq!(r.status(), 204);
    }
}

async fn still_there(c: &reqwest::Client, s: &common::Running) {
    for i in 0..10 {
        let r = c.get(s.url(&format!("/v1/tables/web/keys/keep{i}"))).send().await.unwrap();
        assert_eq!(r.status(), 200, "keep{i} lost");
        assert_eq!(r.text().await.unwrap(), format!("v{i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_invalid_requests_are_refused_with_codes() {
    timeout(WATCHDOG, async {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.max_body = 256 << 10;
        // Small segments: values over ~64 KiB cannot fit.
        cfg.tables = vec![TableSpec { name: "web".into(), max_items: 100, data_bytes: 128 << 10 }];
        let s = start(cfg).await;
        let c = client();
        seed(&c, &s).await;
        let code = |r| error_code(r);

        // Bodies over --max-body.
        let big = vec![7u8; 300 << 10];
        assert_eq!(
            code(c.put(s.url("/v1/tables/web/keys/big")).body(big.clone()).send().await.unwrap()).await,
            (413, "body_too_large".into())
        );
        assert_eq!(
            code(c.post(s.url("/v1/rings/events/messages")).body(big.clone()).send().await.unwrap()).await,
            (413, "body_too_large".into())
        );
        assert_eq!(
            code(c.post(s.url("/v1/tables/web/load")).body(big).send().await.unwrap()).await,
            (413, "body_too_large".into())
        );
        // Values over the table's limit, messages over the ring's.
        let r = c.put(s.url("/v1/tables/web/keys/big")).body(vec![1u8; 200 << 10]).send().await.unwrap();
        assert_eq!(code(r).await, (413, "value_too_large".into()));
        let r = c.post(s.url("/v1/rings/events/messages")).body(vec![1u8; 65 << 10]).send().await.unwrap();
        assert_eq!(code(r).await, (413, "message_too_large".into()));
        let r = c.post(s.url("/v1/rings/events/messages")).body("").send().await.unwrap();
        assert_eq!(code(r).await, (400, "bad_request".into()));
        // Keys.
        let long = "k".repeat(256);
        assert_eq!(
            code(c.put(s.url(&format!("/v1/tables/web/keys/{long}"))).body("x").send().await.unwrap()).await,
            (400, "key_too_large".into())
        );
        assert_eq!(
            code(c.get(s.url(&format!("/v1/tables/web/keys/{long}"))).send().await.unwrap()).await,
            (400, "key_too_large".into())
        );
        let r = c.put(s.url("/v1/tables/web/keys/")).body("x").send().await.unwrap();
        assert!(r.status().is_client_error(), "an empty key is refused");
        // Names: traversal, NUL, dots, empty, too long; then valid but unknown.
        // (A bare ".." is resolved away by the client's URL parser, as by any browser.)
        for bad in ["..%2Fx", "..%2F..%2Fetc%2Fpasswd", "a%00b", "a.b", "a%2Fb", &"n".repeat(65), "%C3%A9"] {
            let r = c.get(s.url(&format!("/v1/tables/{bad}/keys/a"))).send().await.unwrap();
            assert_eq!(code(r).await, (400, "invalid_name".into()), "table {bad}");
            let r = c.post(s.url(&format!("/v1/rings/{bad}/messages"))).body("x").send().await.unwrap();
            assert_eq!(code(r).await, (400, "invalid_name".into()), "ring {bad}");
        }
        assert_eq!(
            code(c.get(s.url("/v1/tables/nosuch/keys/a")).send().await.unwrap()).await,
            (404, "not_found".into())
        );
        assert_eq!(
            code(c.post(s.url("/v1/rings/nosuch/messages")).body("x").send().await.unwrap()).await,
            (404, "not_found".into())
        );
        assert!(!dir.path().join("x.table").exists() && !dir.path().parent().unwrap().join("x.table").exists());
        // TTLs.
        assert_eq!(
            code(c.put(s.url("/v1/tables/web/keys/t?ttl_ms=0")).body("x").send().await.unwrap()).await,
            (400, "invalid_ttl".into())
        );
        assert_eq!(
            code(c.put(s.url("/v1/tables/web/keys/t?ttl_ms=soon")).body("x").send().await.unwrap()).await,
            (400, "invalid_ttl".into())
        );
        assert_eq!(
            code(c.get(s.url("/v1/rings/events/subscribe?from=middle")).send().await.unwrap()).await,
            (400, "bad_request".into())
        );
        // Malformed NDJSON: nothing of the load is stored, not even its good lines.
        for bad in [
            "{\"key\":\"n1\",\"value\":\"1\"}\n{\"key\":\"n2\",\"value\":",
            "{\"key\":\"n1\",\"value\":\"1\"}\nnot json\n",
            "{\"key\":\"n1\",\"value\":\"1\"}\n{\"key\":\"n2\"}\n",
            "{\"key\":\"n1\",\"value\":\"1\"}\n{\"key\":\"\",\"value\":\"2\"}\n",
            "{\"key\":\"n1\",\"value\":\"1\",\"surprise\":true}\n",
            "{\"key\":\"n1\",\"value_base64\":\"!!\"}\n",
        ] {
            let r = c.post(s.url("/v1/tables/web/load")).body(bad).send().await.unwrap();
            assert_eq!(code(r).await, (400, "invalid_ndjson".into()), "{bad}");
            assert_eq!(c.get(s.url("/v1/tables/web/keys/n1")).send().await.unwrap().status(), 404, "{bad}");
        }
        let r = c
            .post(s.url("/v1/tables/web/load"))
            .body(format!("{{\"key\":\"n1\",\"value\":\"{}\"}}\n", "v".repeat(100 << 10)))
            .send()
            .await
            .unwrap();
        assert_eq!(code(r).await, (413, "value_too_large".into()));
        still_there(&c, &s).await;
        let v = json(c.get(s.url("/v1/tables/web")).send().await.unwrap()).await;
        assert_eq!(v["stats"]["items"], 10, "no refused request stored anything");
        s.stop().await.unwrap();
    })
    .await
    .expect("watchdog");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_serve_on_the_same_dir_is_refused() {
    timeout(WATCHDOG, async {
        let dir = tempfile::tempdir().unwrap();
        let s = start(config(dir.path())).await;
        let c = client();
        seed(&c, &s).await;
        let err = try_start(config(dir.path())).await.err().expect("second serve refused");
        assert!(matches!(err, Error::AlreadyServed { .. }), "{err}");
        assert!(err.to_string().contains("already serving"), "{err}");
        // The binary: one line on stderr, exit status 1.
        let d = dir.path().to_str().unwrap().to_string();
        let (code, _, stderr) = tokio::task::spawn_blocking(move || {
            podcache(&[
                "serve",
                "--dir",
                &d,
                "--table",
                "web=1000:4MiB",
                "--listen",
                "127.0.0.1:0",
                "--ops-listen",
                "none",
            ])
        })
        .await
        .unwrap();
        assert_eq!(code, 1);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("already serving"), "{stderr}");
        still_there(&c, &s).await;
        s.stop().await.unwrap();
    })
    .await
    .expect("watchdog");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_kind_wrong_version_and_mismatched_files_are_reported_and_kept() {
    timeout(WATCHDOG, async {
        let dir = tempfile::tempdir().unwrap();
        // A ring where the table should be.
        let table = dir.path().join("web.table");
        drop(podcache_writer::Publisher::builder(&table).capacity(1 << 16).create().unwrap());
        let before = std::fs::read(&table).unwrap();
        let err = refused(config(dir.path())).await;
        let msg = err.to_string();
        assert!(msg.contains("web.table") && msg.contains("ring"), "{msg}");
        assert_eq!(std::fs::read(&table).unwrap(), before, "the foreign file is untouched");
        std::fs::remove_file(&table).unwrap();

        // A table of another layout version.
        let s = start(config(dir.path())).await;
        seed(&client(), &s).await;
        s.stop().await.unwrap();
        let mut bytes = std::fs::read(&table).unwrap();
        let version = bytes[8];
        bytes[8] = 99; // low byte of the version word
        std::fs::write(&table, &bytes).unwrap();
        let err = refused(config(dir.path())).await;
        let msg = err.to_string();
        assert!(msg.contains("version 99") && msg.contains("web.table"), "{msg}");
        assert_eq!(std::fs::read(&table).unwrap(), bytes, "kept for the operator");
        bytes[8] = version;
        std::fs::write(&table, &bytes).unwrap();

        // Another layout: refused without --replace-mismatched (data kept), replaced with it.
        let mut other = config(dir.path());
        other.tables[0].max_items = 2000;
        let err = refused(other.clone()).await;
        let msg = err.to_string();
        assert!(msg.contains("web.table") && msg.contains("--replace-mismatched"), "{msg}");
        let s = start(config(dir.path())).await;
        still_there(&client(), &s).await;
        s.stop().await.unwrap();
        other.replace_mismatched = true;
        let s = start(other).await;
        let c = client();
        assert_eq!(c.get(s.url("/v1/tables/web/keys/keep0")).send().await.unwrap().status(), 404, "replaced: empty");
        assert_eq!(json(c.get(s.url("/v1/tables/web")).send().await.unwrap()).await["stats"]["max_items"], 2000);
        s.stop().await.unwrap();
    })
    .await
    .expect("watchdog");
}

/// Mount a tmpfs of `bytes` at `dir` (root only); false if that is not possible here.
fn mount_tmpfs(dir: &std::path::Path, bytes: u64) -> bool {
    std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs", dir.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_too_small_fails_at_start_naming_the_sizes() {
    timeout(WATCHDOG, async {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        let mounted = mount_tmpfs(&vol, 2 << 20);
        let mut cfg = config(&vol);
        if mounted {
            // A 2 MiB tmpfs volume, a 4 MiB table.
            cfg.rings.clear();
        } else {
            // No tmpfs to mount here: ask for more than the volume has free.
            let st = rustix_free(&vol);
            eprintln!("tmpfs mount not possible; asking for {st} + 1 GiB on the test's volume");
            cfg.tables[0].data_bytes = st + (1 << 30);
        }
        let err = refused(cfg).await;
        let msg = err.to_string();
        if mounted {
            let _ = std::process::Command::new("umount").arg(&vol).status();
        }
        assert!(matches!(err, Error::VolumeTooSmall { .. }), "{msg}");
        assert!(msg.contains("web.table") && msg.contains("free") && msg.contains("need"), "{msg}");
        let Error::VolumeTooSmall { needed, free, .. } = err else { unreachable!() };
        assert!(needed > free);
        assert!(msg.contains(&needed.to_string()) && msg.contains(&free.to_string()), "{msg}");
        assert!(!vol.join("web.table").exists(), "nothing created");
    })
    .await
    .expect("watchdog");
}

fn rustix_free(dir: &std::path::Path) -> u64 {
    let out = std::process::Command::new("df").args(["-B1", "--output=avail"]).arg(dir).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse().unwrap()
}
