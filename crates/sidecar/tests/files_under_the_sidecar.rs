//! What happens to the files while the sidecar runs: a file deleted or replaced under it,
//! items that expired but are not yet removed, and listings of large tables.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

async fn text(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// The value of the metric line starting with `prefix` (name and labels).
fn metric(metrics: &str, prefix: &str) -> Option<f64> {
    metrics.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn a_deleted_or_replaced_file_refuses_writes_and_fails_the_probes_until_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sc = common::start(common::config(dir.path())).await;
    let c = common::client();
    assert_eq!(c.put(sc.url("/v1/tables/web/keys/a")).body("1").send().await.unwrap().status(), 204);
    let (_, m) = text(c.get(sc.ops_url("/metrics")).send().await.unwrap()).await;
    assert_eq!(metric(&m, "podcache_ready "), Some(1.0), "{m}");

    std::fs::remove_file(dir.path().join("web.table")).unwrap();
    let (status, code) =
        common::error_code(c.put(sc.url("/v1/tables/web/keys/b")).body("2").send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (503, "file_lost"), "a put into the unlinked file would be lost");
    let (status, code) = common::error_code(c.delete(sc.url("/v1/tables/web/keys/a")).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (503, "file_lost"));
    let load = c.post(sc.url("/v1/tables/web/load")).body("{\"key\":\"x\",\"value\":\"y\"}\n").send().await.unwrap();
    assert_eq!(common::error_code(load).await.1, "file_lost");

    // A ring renamed over: another inode at the path.
    let other = dir.path().join("other");
    std::fs::write(&other, b"not the ring").unwrap();
    std::fs::rename(&other, dir.path().join("events.ring")).unwrap();
    let (status, code) =
        common::error_code(c.post(sc.url("/v1/rings/events/messages")).body("m").send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (503, "file_lost"));

    for probe in ["/readyz", "/healthz"] {
        let (status, body) = text(c.get(sc.ops_url(probe)).send().await.unwrap()).await;
        assert_eq!(status, 503, "{probe}: {body}");
        assert!(body.contains("web.table was deleted"), "{probe}: {body}");
        assert!(body.contains("events.ring was replaced"), "{probe}: {body}");
        assert!(body.contains("Restart the sidecar"), "{probe}: {body}");
    }
    let (_, m) = text(c.get(sc.ops_url("/metrics")).send().await.unwrap()).await;
    assert_eq!(metric(&m, "podcache_ready "), Some(0.0), "{m}");
    sc.stop().await.unwrap();

    // A restart creates the deleted table anew and refuses the foreign file at the ring's path.
    let err = common::refused(common::config(dir.path())).await;
    assert!(err.to_string().contains("events.ring"), "{err}");
    std::fs::remove_file(dir.path().join("events.ring")).unwrap();
    let sc = common::start(common::config(dir.path())).await;
    assert_eq!(c.put(sc.url("/v1/tables/web/keys/b")).body("2").send().await.unwrap().status(), 204);
    assert_eq!(c.get(sc.ops_url("/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(sc.ops_url("/readyz")).send().await.unwrap().status(), 200);
    sc.stop().await.unwrap();
}

#[tokio::test]
async fn expired_items_are_counted_apart_and_not_listed() {
    let dir = tempfile::tempdir().unwrap();
    let sc = common::start(common::config(dir.path())).await;
    let c = common::client();
    for i in 0..5 {
        assert_eq!(
            c.put(sc.url(&format!("/v1/tables/web/keys/t{i}?ttl_ms=1"))).body("v").send().await.unwrap().status(),
            204
        );
        assert_eq!(c.put(sc.url(&format!("/v1/tables/web/keys/p{i}"))).body("v").send().await.unwrap().status(), 204);
    }
    // The TTL items share a segment with live ones, so the sweep cannot remove them: the file's
    // item count keeps them, the census counts them apart.
    let m = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let (_, m) = text(c.get(sc.ops_url("/metrics")).send().await.unwrap()).await;
            if metric(&m, "podcache_table_expired_items{table=\"web\"}") == Some(5.0) {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the census counts the 5 expired items (watchdog)");
    assert_eq!(metric(&m, "podcache_table_items{table=\"web\"}"), Some(10.0), "{m}");
    let v = common::json(c.get(sc.url("/v1/tables/web/keys")).send().await.unwrap()).await;
    let keys: BTreeSet<&str> = v["keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(keys, ["p0", "p1", "p2", "p3", "p4"].into_iter().collect(), "{v}");
    sc.stop().await.unwrap();
}

#[tokio::test]
async fn key_listings_are_capped_and_page_with_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let sc = common::start(common::config(dir.path())).await;
    let c = common::client();
    let mut body = String::new();
    for i in 0..25 {
        body.push_str(&format!("{{\"key\":\"k{i:02}\",\"value\":\"v\"}}\n"));
    }
    assert_eq!(c.post(sc.url("/v1/tables/web/load")).body(body).send().await.unwrap().status(), 200);

    for bad in ["limit=0", "limit=10001", "limit=99999999999"] {
        let (status, code) =
            common::error_code(c.get(sc.url(&format!("/v1/tables/web/keys?{bad}"))).send().await.unwrap()).await;
        assert_eq!((status, code.as_str()), (400, "bad_request"), "{bad}");
    }
    let mut seen = BTreeSet::new();
    let mut cursor: Option<u64> = None;
    let mut pages = 0;
    loop {
        let q = cursor.map(|c| format!("&cursor={c}")).unwrap_or_default();
        let v = common::json(c.get(sc.url(&format!("/v1/tables/web/keys?limit=10{q}"))).send().await.unwrap()).await;
        let keys = v["keys"].as_array().unwrap();
        assert!(keys.len() <= 10, "{v}");
        for k in keys {
            assert!(seen.insert(k.as_str().unwrap().to_string()), "listed twice: {k}");
        }
        pages += 1;
        assert!(pages <= 10, "the cursor makes progress");
        match v["next_cursor"].as_u64() {
            Some(n) => {
                assert_eq!(v["truncated"], true);
                cursor = Some(n);
            }
            None => break,
        }
    }
    assert_eq!(seen.len(), 25);
    assert_eq!(pages, 3);
    sc.stop().await.unwrap();
}
