//! `podcache serve` as a real process: SIGKILLed in the middle of a PUT load, started again on
//! the same directory, it recovers the files and every acknowledged PUT is still there; SIGTERM
//! then stops it cleanly.

mod common;

use common::{client, podcache};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::timeout;

const WATCHDOG: Duration = Duration::from_secs(120);

/// Start `podcache serve` on `dir`; returns the child and its API address (from its log).
fn serve(dir: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_podcache"))
        .args(["serve", "--dir", dir.to_str().unwrap(), "--table", "web=100000:64MiB"])
        .args(["--listen", "127.0.0.1:0", "--ops-listen", "none"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn podcache serve");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && line.contains("HTTP API listening") {
                if let Some(addr) = line.split("addr=").nth(1) {
                    let _ = tx.send(addr.split_whitespace().next().unwrap_or_default().to_string());
                    sent = true;
                }
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(30)).expect("the sidecar logs its address");
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_puts_survive_sigkill_and_a_restart() {
    timeout(WATCHDOG, async {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, addr) = serve(dir.path());
        let c = client();
        let acked: Arc<Mutex<Vec<String>>> = Arc::default();
        let mut tasks = Vec::new();
        for t in 0..4 {
            let (c, addr, acked) = (c.clone(), addr.clone(), Arc::clone(&acked));
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let key = format!("t{t}-{i}");
                    let value = format!("{key}:{}", "v".repeat(i % 200));
                    match c.put(format!("http://{addr}/v1/tables/web/keys/{key}")).body(value).send().await {
                        Ok(r) if r.status() == 204 => acked.lock().unwrap().push(key),
                        Ok(r) => panic!("PUT answered {}", r.status()),
                        Err(_) => return, // the server was killed
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        for t in tasks {
            t.await.unwrap();
        }
        let acked = acked.lock().unwrap().clone();
        assert!(acked.len() > 100, "the load ran before the kill: {}", acked.len());

        // A new process on the same directory: the lock of the killed one is gone with it.
        let (child, addr) = serve(dir.path());
        for key in &acked {
            let r = c.get(format!("http://{addr}/v1/tables/web/keys/{key}")).send().await.unwrap();
            assert_eq!(r.status(), 200, "{key} was acknowledged before the kill");
            let i: usize = key.split('-').nth(1).unwrap().parse().unwrap();
            assert_eq!(r.text().await.unwrap(), format!("{key}:{}", "v".repeat(i % 200)));
        }
        let v = common::json(c.get(format!("http://{addr}/v1/tables/web")).send().await.unwrap()).await;
        assert_eq!(v["epoch"], 2, "the restarted writer attached to the file");
        let table = dir.path().join("web.table");
        let (code, out, err) =
            tokio::task::spawn_blocking(move || podcache(&["verify", table.to_str().unwrap()])).await.unwrap();
        assert_eq!(code, 0, "{}{err}", String::from_utf8_lossy(&out));

        // SIGTERM: a clean exit, the file marked closed.
        let term = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(term.success());
        let status = tokio::task::spawn_blocking(move || {
            let mut child = child;
            child.wait()
        })
        .await
        .unwrap()
        .unwrap();
        assert!(status.success(), "{status:?}");
        let table = dir.path().join("web.table");
        let (_, out, _) = podcache(&["inspect", "--json", table.to_str().unwrap()]);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["header"]["writer_state"], "closed cleanly");
    })
    .await
    .expect("watchdog");
}
