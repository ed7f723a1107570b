//! The sidecar in-process, driven over HTTP with a real client on every endpoint; a reader
//! process reading what was put over HTTP; restart keeps the data.

mod common;

use common::{client, config, error_code, json, podcache, sse_events, start, stream_client};
use std::time::Duration;
use tokio::time::timeout;

const WATCHDOG: Duration = Duration::from_secs(120);
/// The watchdog of the test that publishes a flood over HTTP.
const FLOOD_WATCHDOG: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_works() {
    timeout(WATCHDOG, async {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.socket = Some("podcache.sock".into());
        let s = start(cfg).await;
        let c = client();

        // Files and the socket: group-readable files, a group-connectable socket.
        use std::os::unix::fs::PermissionsExt;
        let mode = |f: &str| std::fs::metadata(dir.path().join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode("web.table"), mode("events.ring"), mode("podcache.sock")), (0o640, 0o640, 0o660));

        // Ops.
        assert_eq!(c.get(s.ops_url("/healthz")).send().await.unwrap().status(), 200);
        assert_eq!(c.get(s.ops_url("/readyz")).send().await.unwrap().status(), 200);

        // Put, get, overwrite, delete.
        let r = c.put(s.url("/v1/tables/web/keys/user:1")).body("gold").send().await.unwrap();
        assert_eq!(r.status(), 204);
        let r = c.get(s.url("/v1/tables/web/keys/user:1")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap(), "gold");
        c.put(s.url("/v1/tables/web/keys/user:1")).body("silver").send().await.unwrap();
        assert_eq!(c.get(s.url("/v1/tables/web/keys/user:1")).send().await.unwrap().bytes().await.unwrap(), "silver");
        // Keys with slashes and escapes.
        let r = c.put(s.url("/v1/tables/web/keys/a/b%20c")).body(vec![0u8, 1, 2, 255]).send().await.unwrap();
        assert_eq!(r.status(), 204);
        let r = c.get(s.url("/v1/tables/web/keys/a/b%20c")).send().await.unwrap();
        assert_eq!(r.bytes().await.unwrap().as_ref(), &[0u8, 1, 2, 255]);
        assert_eq!(error_code(c.get(s.url("/v1/tables/web/keys/nobody")).send().await.unwrap()).await, (404, "not_found".into()));
        assert_eq!(c.delete(s.url("/v1/tables/web/keys/a/b%20c")).send().await.unwrap().status(), 204);
        assert_eq!(error_code(c.delete(s.url("/v1/tables/web/keys/a/b%20c")).send().await.unwrap()).await, (404, "not_found".into()));
        assert_eq!(c.get(s.url("/v1/tables/web/keys/a/b%20c")).send().await.unwrap().status(), 404);

        // TTL: visible, then gone (and swept by the background sweep).
        let r = c.put(s.url("/v1/tables/web/keys/session?ttl_ms=300")).body("tok").send().await.unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(c.get(s.url("/v1/tables/web/keys/session")).send().await.unwrap().status(), 200);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(c.get(s.url("/v1/tables/web/keys/session")).send().await.unwrap().status(), 404);

        // Bulk load.
        let nd = "{\"key\":\"k1\",\"value\":\"v1\"}\n{\"key\":\"k2\",\"value_base64\":\"AAEC\"}\n\n{\"key\":\"k3\",\"value\":\"v3\",\"ttl_ms\":600000}\n";
        let r = c.post(s.url("/v1/tables/web/load")).body(nd).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(json(r).await["loaded"], 3);
        assert_eq!(c.get(s.url("/v1/tables/web/keys/k2")).send().await.unwrap().bytes().await.unwrap().as_ref(), &[0u8, 1, 2]);
        assert_eq!(c.get(s.url("/v1/tables/web/keys/k3")).send().await.unwrap().bytes().await.unwrap(), "v3");

        // Listing.
        let v = json(c.get(s.url("/v1/tables")).send().await.unwrap()).await;
        let t = &v["tables"][0];
        assert_eq!(t["name"], "web");
        assert_eq!(t["stats"]["max_items"], 1000);
        let items = t["stats"]["items"].as_u64().unwrap();
        assert!(items >= 4, "user:1, k1, k2, k3 (and maybe the expired session): {items}");
        let v = json(c.get(s.url("/v1/tables/web")).send().await.unwrap()).await;
        assert_eq!(v["name"], "web");
        let v = json(c.get(s.url("/v1/tables/web/keys")).send().await.unwrap()).await;
        let mut keys: Vec<String> = v["keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_string()).collect();
        keys.sort();
        assert_eq!(keys, ["k1", "k2", "k3", "user:1"]);

        // Rings: subscribe from the oldest, publish, receive; then live messages.
        for m in ["one", "two"] {
            let r = c.post(s.url("/v1/rings/events/messages")).body(m).send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
        let r = c.post(s.url("/v1/rings/events/messages")).body(vec![0xffu8, 0xfe]).send().await.unwrap();
        assert_eq!(json(r).await["seq"], 3);
        let mut sub = stream_client().get(s.url("/v1/rings/events/subscribe?from=oldest")).send().await.unwrap();
        assert_eq!(sub.status(), 200);
        assert!(sub.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        let mut buf = String::new();
        let ev = sse_events(&mut sub, &mut buf, 3).await;
        assert_eq!(ev[0].1["value"], "one");
        assert_eq!(ev[0].1["seq"], 1);
        assert_eq!(ev[1].1["value"], "two");
        assert_eq!(ev[2].1["value_base64"], "//4=");
        let mut newest = stream_client().get(s.url("/v1/rings/events/subscribe?from=newest")).send().await.unwrap();
        let mut nbuf = String::new();
        c.post(s.url("/v1/rings/events/messages")).body("four").send().await.unwrap();
        let ev = sse_events(&mut sub, &mut buf, 1).await;
        assert_eq!((ev[0].0.as_str(), ev[0].1["seq"].as_u64()), ("message", Some(4)));
        let ev = sse_events(&mut newest, &mut nbuf, 1).await;
        assert_eq!(ev[0].1["value"], "four");
        let v = json(c.get(s.url("/v1/rings")).send().await.unwrap()).await;
        let st = &v["rings"][0]["stats"];
        assert_eq!((st["newest_seq"].as_u64(), st["oldest_seq"].as_u64(), st["messages"].as_u64()), (Some(4), Some(1), Some(4)));

        // The Unix socket serves the same API.
        let sock = s.socket.clone().expect("socket");
        let r = tokio::task::spawn_blocking(move || {
            podcache_sidecar::client::request(
                &podcache_sidecar::client::Target::Unix(sock),
                "GET",
                "/v1/tables/web/keys/user:1",
                None,
                b"",
            )
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"silver"[..]));

        // Metrics reflect what happened.
        let m = c.get(s.ops_url("/metrics")).send().await.unwrap().text().await.unwrap();
        for needle in [
            "podcache_table_items{table=\"web\"}",
            "podcache_table_puts_total{table=\"web\"}",
            "podcache_table_deletes_total{table=\"web\"} 1",
            "podcache_ring_messages_total{ring=\"events\"} 4",
            "podcache_ring_newest_seq{ring=\"events\"} 4",
            "podcache_ring_oldest_seq{ring=\"events\"} 1",
            "podcache_http_requests_total{method=\"PUT\",route=\"/v1/tables/{table}/keys/{*key}\",status=\"204\"}",
            "podcache_http_request_duration_seconds_bucket",
            "podcache_table_gets_total{table=\"web\",result=\"hit\"}",
            "podcache_ready 1",
            "podcache_ring_subscriptions 2",
        ] {
            assert!(m.contains(needle), "metrics lack {needle}:\n{m}");
        }

        // Unknown routes and methods are JSON errors too.
        assert_eq!(error_code(c.get(s.url("/nope")).send().await.unwrap()).await, (404, "not_found".into()));
        assert_eq!(error_code(c.post(s.url("/v1/tables")).send().await.unwrap()).await, (405, "method_not_allowed".into()));

        // Graceful shutdown ends the open subscriptions and marks the files closed.
        s.stop().await.unwrap();
        let rest = timeout(Duration::from_secs(10), async { while let Ok(Some(_)) = sub.chunk().await {} }).await;
        assert!(rest.is_ok(), "the subscription stream ended at shutdown");
        for f in ["web.table", "events.ring"] {
            let (code, out, err) = podcache(&["inspect", "--json", dir.path().join(f).to_str().unwrap()]);
            assert_eq!(code, 0, "{err}");
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["header"]["writer_state"], "closed cleanly");
        }
        assert!(!dir.path().join("podcache.sock").exists(), "socket removed");
    })
    .await
    .expect("watchdog");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_process_reads_what_http_put() {
    timeout(WATCHDOG, async {
        let dir = tempfile::tempdir().unwrap();
        let s = start(config(dir.path())).await;
        let c = client();
        for i in 0..200u32 {
            let v = format!("value-{i}-{}", "x".repeat((i % 50) as usize));
            let r = c.put(s.url(&format!("/v1/tables/web/keys/key{i}"))).body(v).send().await.unwrap();
            assert_eq!(r.status(), 204);
        }
        c.post(s.url("/v1/rings/events/messages")).body("hello reader").send().await.unwrap();
        let d = dir.path().to_str().unwrap().to_string();
        // Other processes, reading the files with the reader library while the sidecar holds them.
        let d2 = d.clone();
        let checks = tokio::task::spawn_blocking(move || {
            for i in [0u32, 1, 77, 199] {
                let (code, out, err) = podcache(&["get", "--dir", &d2, "web", &format!("key{i}")]);
                assert_eq!(code, 0, "{err}");
                assert_eq!(out, format!("value-{i}-{}", "x".repeat((i % 50) as usize)).into_bytes());
            }
            let (code, _, err) = podcache(&["get", "--dir", &d2, "web", "absent"]);
            assert_eq!(code, 1);
            assert!(err.contains("absent"), "{err}");
            let (code, out, _) = podcache(&["keys", "--dir", &d2, "web"]);
            assert_eq!(code, 0);
            assert_eq!(String::from_utf8(out).unwrap().lines().count(), 200);
            let (code, out, err) = podcache(&["tail", "--dir", &d2, "events", "--from", "oldest", "-n", "1"]);
            assert_eq!(code, 0, "{err}");
            assert_eq!(out, b"hello reader\n");
            let (code, out, err) = podcache(&["verify", &format!("{d2}/web.table")]);
            assert_eq!(code, 0, "{err}");
            assert!(String::from_utf8_lossy(&out).contains("OK"));
        });
        checks.await.unwrap();
        s.stop().await.unwrap();
    })
    .await
    .expect("watchdog");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_data() {
    timeout(WATCHDOG, async {
        let dir = tempfile::tempdir().unwrap();
        let c = client();
        let s = start(config(dir.path())).await;
        for i in 0..50 {
            c.put(s.url(&format!("/v1/tables/web/keys/k{i}"))).body(format!("v{i}")).send().await.unwrap();
        }
        for i in 0..5 {
            c.post(s.url("/v1/rings/events/messages")).body(format!("m{i}")).send().await.unwrap();
        }
        s.stop().await.unwrap();

        let s = start(config(dir.path())).await;
        for i in 0..50 {
            let r = c.get(s.url(&format!("/v1/tables/web/keys/k{i}"))).send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.text().await.unwrap(), format!("v{i}"));
        }
        let v = json(c.get(s.url("/v1/tables/web")).send().await.unwrap()).await;
        assert_eq!(v["epoch"], 2, "a second writer attached");
        assert_eq!(v["stats"]["items"], 50);
        // The ring continues its sequence.
        let r = c.post(s.url("/v1/rings/events/messages")).body("after").send().await.unwrap();
        assert_eq!(json(r).await["seq"], 6);
        s.stop().await.unwrap();
    })
    .await
    .expect("watchdog");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_protects_the_api_not_ops() {
    timeout(WATCHDOG, async {
        let dir = tempfile::tempdir().unwrap();
        let tok = dir.path().join("token");
        std::fs::write(&tok, "s3cret-token\n").unwrap();
        let mut cfg = config(&dir.path().join("data"));
        cfg.token_file = Some(tok);
        let s = start(cfg).await;
        let c = client();
        let url = s.url("/v1/tables/web/keys/a");
        assert_eq!(error_code(c.put(&url).body("x").send().await.unwrap()).await, (401, "unauthorized".into()));
        assert_eq!(
            error_code(c.put(&url).bearer_auth("wrong").body("x").send().await.unwrap()).await,
            (401, "unauthorized".into())
        );
        assert_eq!(
            error_code(c.put(&url).bearer_auth("s3cret-tokeN").body("x").send().await.unwrap()).await,
            (401, "unauthorized".into())
        );
        assert_eq!(
            error_code(c.get(&url).header("authorization", "Basic s3cret-token").send().await.unwrap()).await,
            (401, "unauthorized".into())
        );
        assert_eq!(error_code(c.get(s.url("/v1/tables")).send().await.unwrap()).await, (401, "unauthorized".into()));
        assert_eq!(c.put(&url).bearer_auth("s3cret-token").body("x").send().await.unwrap().status(), 204);
        assert_eq!(c.get(&url).bearer_auth("s3cret-token").send().await.unwrap().text().await.unwrap(), "x");
        assert_eq!(c.get(s.ops_url("/metrics")).send().await.unwrap().status(), 200);
        assert_eq!(c.get(s.ops_url("/readyz")).send().await.unwrap().status(), 200);
        s.stop().await.unwrap();
    })
    .await
    .expect("watchdog");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_lapped_and_told_how_much_it_lost() {
    // The flood is tens of thousands of HTTP requests, many times slower in a debug build on a
    // busy machine: this watchdog (a hang detector, not a time limit) is longer than the others.
    timeout(FLOOD_WATCHDOG, async {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        // A 64 KiB ring: far less than what is published while the client does not read.
        cfg.rings[0].capacity = 64 << 10;
        cfg.rings[0].max_message = Some(2048);
        let s = start(cfg).await;
        let c = client();
        // The stream stays open (unread) through the whole flood: no total timeout on it.
        let mut sub = stream_client().get(s.url("/v1/rings/events/subscribe?from=oldest")).send().await.unwrap();
        assert_eq!(sub.status(), 200);
        // A first message, received: the subscriber's baseline for counting losses.
        c.post(s.url("/v1/rings/events/messages")).body("first").send().await.unwrap();
        let mut buf = String::new();
        let first = sse_events(&mut sub, &mut buf, 1).await;
        assert_eq!(first[0].1["seq"], 1);
        // Publish 40 MB without reading the stream: the channel and the socket buffers fill, the
        // subscriber stops reading the ring, the ring laps it.
        let flood = 40_000u64;
        let total = flood + 1;
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let (c, url) = (c.clone(), s.url("/v1/rings/events/messages"));
            tasks.push(tokio::spawn(async move {
                for i in 0..flood / 8 {
                    let body = format!("{t}-{i}-{}", "m".repeat(1000));
                    assert_eq!(c.post(&url).body(body).send().await.unwrap().status(), 200);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // Now read until the last message: a lapped event says what was lost, and the counts add up.
        let (mut received, mut lost, mut lapped_events, mut last_seq) = (1u64, 0u64, 0u64, 1u64);
        while last_seq < total {
            for (event, data) in sse_events(&mut sub, &mut buf, 1).await {
                match event.as_str() {
                    "lapped" => {
                        lapped_events += 1;
                        assert!(data["lost"].as_u64().unwrap() > 0);
                    }
                    "message" => {
                        let seq = data["seq"].as_u64().unwrap();
                        assert!(seq > last_seq, "in order");
                        lost += data["lost"].as_u64().unwrap();
                        received += 1;
                        last_seq = seq;
                    }
                    other => panic!("unexpected event {other}"),
                }
            }
        }
        assert!(lapped_events > 0, "the subscriber was lapped");
        assert_eq!(received + lost, total, "every message was either received or counted as lost");
        s.stop().await.unwrap();
    })
    .await
    .expect("watchdog");
}
