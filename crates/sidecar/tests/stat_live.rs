//! `podcache stat` next to a running sidecar: the hit ratio of the sidecar's own HTTP gets per
//! table, and the lag of each of its event-stream subscribers per ring.

mod common;

use common::{client, config, json, podcache, sse_events, start, stream_client};
use std::io::{Read, Write};
use std::time::Duration;
use tokio::time::timeout;

const WATCHDOG: Duration = Duration::from_secs(600);

/// The `subscriptions` of ring `events` in `GET /v1/rings`: (delivered_seq, lag, lost).
async fn subscriptions(s: &common::Running) -> (u64, Vec<(u64, u64, u64)>) {
    let v = json(client().get(s.url("/v1/rings")).send().await.unwrap()).await;
    let ring = &v["rings"][0];
    let subs = ring["subscriptions"].as_array().unwrap();
    let f = |s: &serde_json::Value, k: &str| s[k].as_u64().unwrap();
    (
        ring["stats"]["newest_seq"].as_u64().unwrap(),
        subs.iter().map(|s| (f(s, "delivered_seq"), f(s, "lag"), f(s, "lost"))).collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_shows_the_hit_ratio_and_each_subscribers_lag() {
    timeout(WATCHDOG, async {
        let dir = tempfile::tempdir().unwrap();
        let s = start(config(dir.path())).await;
        let c = client();
        c.put(s.url("/v1/tables/web/keys/k")).body("v").send().await.unwrap();
        for key in ["k", "k", "k", "absent"] {
            c.get(s.url(&format!("/v1/tables/web/keys/{key}"))).send().await.unwrap();
        }
        for m in ["one", "two"] {
            c.post(s.url("/v1/rings/events/messages")).body(m).send().await.unwrap();
        }

        // A subscriber that reads what it is sent: once it has the newest message, no lag.
        let mut reading = stream_client().get(s.url("/v1/rings/events/subscribe?from=oldest")).send().await.unwrap();
        let mut buf = String::new();
        let got = sse_events(&mut reading, &mut buf, 2).await;
        assert_eq!(got[1].1["seq"], 2);
        assert_eq!(subscriptions(&s).await, (2, vec![(2, 0, 0)]));

        // A subscriber that stops reading while 64 KiB messages arrive: its queue and the
        // connection's buffers fill, the ring (1 MiB) laps it, and its lag grows.
        let mut stalled = std::net::TcpStream::connect(s.api).unwrap();
        stalled.write_all(b"GET /v1/rings/events/subscribe HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut head = [0u8; 12];
        stalled.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        let big = vec![b'x'; 64 << 10];
        for _ in 0..300 {
            c.post(s.url("/v1/rings/events/messages")).body(big.clone()).send().await.unwrap();
        }
        // Each subscription's lag is what the ring holds beyond what it delivered; the stalled
        // one lags.
        let (newest, subs) = subscriptions(&s).await;
        assert_eq!(newest, 302);
        assert_eq!(subs.len(), 2, "{subs:?}");
        assert!(subs.iter().all(|&(delivered, lag, _)| lag == newest - delivered), "{subs:?}");
        assert!(subs.iter().any(|&(_, lag, _)| lag > 0), "{subs:?}");

        // podcache stat, pointed at the sidecar, shows both.
        let (d, url) = (dir.path().to_str().unwrap().to_string(), format!("http://{}", s.api));
        let (code, out, err) =
            tokio::task::spawn_blocking(move || podcache(&["stat", "--dir", &d, "--url", &url, "-n", "1"]))
                .await
                .unwrap();
        assert_eq!(code, 0, "{err}");
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("sidecar answering"), "{out}");
        let table = out.lines().find(|l| l.contains("web.table")).unwrap_or_else(|| panic!("{out}"));
        assert!(table.contains("http_gets=4 hit_ratio=0.750"), "{table}");
        let lags: Vec<u64> = out
            .lines()
            .filter(|l| l.trim_start().starts_with("subscriber "))
            .map(|l| l.split("lag=").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(lags.len(), 2, "{out}");
        assert!(lags.iter().any(|&l| l > 0), "{out}");

        // A subscription that ends leaves the listing.
        drop(stalled);
        drop(reading);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !subscriptions(&s).await.1.is_empty() {
            assert!(std::time::Instant::now() < deadline, "closed subscriptions still listed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        s.stop().await.unwrap();
    })
    .await
    .expect("watchdog");
}
