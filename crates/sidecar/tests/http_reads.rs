//! Reading over HTTP what users of a cache expect: a key's remaining TTL, several keys in one
//! request, keys under a prefix.

mod common;

use common::{client, config, error_code, json, start};
use std::time::Duration;
use tokio::time::timeout;

const WATCHDOG: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_head_tell_the_time_a_value_has_left() {
    timeout(WATCHDOG, async {
        let dir = tempfile::tempdir().unwrap();
        let s = start(config(dir.path())).await;
        let c = client();
        c.put(s.url("/v1/tables/web/keys/plain")).body("p").send().await.unwrap();
        c.put(s.url("/v1/tables/web/keys/session?ttl_ms=60000")).body("tok").send().await.unwrap();

        let r = c.get(s.url("/v1/tables/web/keys/plain")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("x-podcache-ttl-ms").is_none(), "a value without a TTL has no TTL header");
        for head in [false, true] {
            let req = if head {
                c.head(s.url("/v1/tables/web/keys/session"))
            } else {
                c.get(s.url("/v1/tables/web/keys/session"))
            };
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            let left: u64 = r.headers()["x-podcache-ttl-ms"].to_str().unwrap().parse().unwrap();
            // What is left of the 60 s given: positive, and never more than was given.
            assert!((1..=60_000).contains(&left), "ttl left {left}");
            let body = r.bytes().await.unwrap();
            assert_eq!(&body[..], if head { &b""[..] } else { &b"tok"[..] });
        }
        // Put again without a TTL: the header goes away with the old record.
        c.put(s.url("/v1/tables/web/keys/session")).body("tok2").send().await.unwrap();
        let r = c.get(s.url("/v1/tables/web/keys/session")).send().await.unwrap();
        assert!(r.headers().get("x-podcache-ttl-ms").is_none());
        s.stop().await.unwrap();
    })
    .await
    .expect("watchdog");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_get_answers_every_key_in_order() {
    timeout(WATCHDOG, async {
        let dir = tempfile::tempdir().unwrap();
        let s = start(config(dir.path())).await;
        let c = client();
        c.put(s.url("/v1/tables/web/keys/a")).body("1").send().await.unwrap();
        c.put(s.url("/v1/tables/web/keys/bin")).body(vec![0xffu8, 0]).send().await.unwrap();
        c.put(s.url("/v1/tables/web/keys/t?ttl_ms=60000")).body("x").send().await.unwrap();

        let r = c
            .post(s.url("/v1/tables/web/mget"))
            .body(r#"{"keys": ["a", "missing", "bin", "t", "a"]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v = json(r).await;
        let items = v["items"].as_array().unwrap();
        assert_eq!(items.len(), 5);
        assert_eq!(items[0], serde_json::json!({"key": "a", "value": "1"}));
        assert!(items[1].is_null());
        assert_eq!(items[2], serde_json::json!({"key": "bin", "value_base64": "/wA="}));
        assert_eq!(items[3]["value"], "x");
        let left = items[3]["ttl_ms"].as_u64().unwrap();
        assert!((1..=60_000).contains(&left), "ttl left {left}");
        assert_eq!(items[4], items[0]);

        // The hits and misses count in the table's get metrics.
        let m = c.get(s.ops_url("/metrics")).send().await.unwrap().text().await.unwrap();
        let count = |result: &str| {
            m.lines()
                .find(|l| l.starts_with("podcache_table_gets_total{") && l.contains(&format!("result=\"{result}\"")))
                .and_then(|l| l.rsplit(' ').next())
                .map(|n| n.parse::<u64>().unwrap())
        };
        assert_eq!((count("hit"), count("miss")), (Some(4), Some(1)), "{m}");

        // Bad requests: not JSON, a key too long, too many keys, an unknown table.
        for body in ["not json".to_string(), format!(r#"{{"keys": ["{}"]}}"#, "k".repeat(256))] {
            let (status, _) = error_code(c.post(s.url("/v1/tables/web/mget")).body(body).send().await.unwrap()).await;
            assert_eq!(status, 400);
        }
        let many: Vec<String> = (0..1001).map(|i| format!("k{i}")).collect();
        let body = serde_json::json!({ "keys": many }).to_string();
        let (status, code) = error_code(c.post(s.url("/v1/tables/web/mget")).body(body).send().await.unwrap()).await;
        assert_eq!((status, code.as_str()), (400, "bad_request"));
        let (status, _) =
            error_code(c.post(s.url("/v1/tables/nosuch/mget")).body(r#"{"keys":["a"]}"#).send().await.unwrap()).await;
        assert_eq!(status, 404);
        s.stop().await.unwrap();
    })
    .await
    .expect("watchdog");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_listing_by_prefix_pages_like_a_full_listing() {
    timeout(WATCHDOG, async {
        let dir = tempfile::tempdir().unwrap();
        let s = start(config(dir.path())).await;
        let c = client();
        for i in 0..30 {
            c.put(s.url(&format!("/v1/tables/web/keys/user:{i}"))).body("u").send().await.unwrap();
            c.put(s.url(&format!("/v1/tables/web/keys/page:{i}"))).body("p").send().await.unwrap();
        }
        // Page through `user:` 7 at a time: every user key exactly once, no other key.
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let q = cursor.map(|c: u64| format!("&cursor={c}")).unwrap_or_default();
            let v =
                json(c.get(s.url(&format!("/v1/tables/web/keys?prefix=user:&limit=7{q}"))).send().await.unwrap()).await;
            let keys = v["keys"].as_array().unwrap_or_else(|| panic!("{v}"));
            assert!(keys.len() <= 7);
            seen.extend(keys.iter().map(|k| k.as_str().unwrap().to_string()));
            match v["next_cursor"].as_u64() {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        seen.sort();
        let mut want: Vec<String> = (0..30).map(|i| format!("user:{i}")).collect();
        want.sort();
        assert_eq!(seen, want);
        let v = json(c.get(s.url("/v1/tables/web/keys?prefix=nothing")).send().await.unwrap()).await;
        assert_eq!(v["keys"].as_array().unwrap().len(), 0);
        assert_eq!(v["truncated"], false);
        s.stop().await.unwrap();
    })
    .await
    .expect("watchdog");
}
