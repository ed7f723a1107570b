//! A reconnecting event-stream client resumes where it left off: `?from=SEQ` or the
//! `Last-Event-ID` header an EventSource sends, and is told what the ring no longer holds.

mod common;

use std::time::Duration;

/// Read `n` events of a new stream.
async fn sse_events(resp: &mut reqwest::Response, n: usize) -> Vec<(String, serde_json::Value)> {
    common::sse_events(resp, &mut String::new(), n).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_resumes_from_a_sequence_number_or_last_event_id() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let dir = tempfile::tempdir().unwrap();
        let sc = common::start(common::config(dir.path())).await;
        let c = common::client();
        let s = common::stream_client();
        for i in 1..=5 {
            let r = c.post(sc.url("/v1/rings/events/messages")).body(format!("m{i}")).send().await.unwrap();
            assert_eq!(common::json(r).await["seq"], i);
        }
        let url = sc.url("/v1/rings/events/subscribe");
        let mut r = s.get(format!("{url}?from=3")).send().await.unwrap();
        let ev = sse_events(&mut r, 3).await;
        let seqs: Vec<u64> = ev.iter().map(|(_, d)| d["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, [3, 4, 5], "{ev:?}");
        drop(r);

        let mut r = s.get(&url).header("Last-Event-ID", "4").send().await.unwrap();
        let ev = sse_events(&mut r, 1).await;
        assert_eq!((ev[0].0.as_str(), ev[0].1["value"].as_str()), ("message", Some("m5")), "{ev:?}");
        drop(r);

        // Messages gone from the ring: the stream says how many before the first it has.
        let big = vec![b'x'; 60 << 10];
        for _ in 0..40 {
            assert_eq!(
                c.post(sc.url("/v1/rings/events/messages")).body(big.clone()).send().await.unwrap().status(),
                200
            );
        }
        let rings = common::json(c.get(sc.url("/v1/rings")).send().await.unwrap()).await;
        let oldest = rings["rings"][0]["stats"]["oldest_seq"].as_u64().unwrap();
        assert!(oldest > 2, "the ring wrapped: {rings}");
        let mut r = s.get(format!("{url}?from=2")).send().await.unwrap();
        let ev = sse_events(&mut r, 2).await;
        assert_eq!(ev[0].0, "lapped", "{:?}", ev[0]);
        assert_eq!(ev[0].1["lost"].as_u64(), Some(oldest - 2));
        assert_eq!(ev[1].1["seq"].as_u64(), Some(oldest));
        drop(r);

        for bad in ["?from=0", "?from=x"] {
            let (status, _) = common::error_code(s.get(format!("{url}{bad}")).send().await.unwrap()).await;
            assert_eq!(status, 400, "{bad}");
        }
        sc.stop().await.unwrap();
    })
    .await
    .expect("watchdog");
}
