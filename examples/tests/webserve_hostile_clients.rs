//! Issue 14, must-show 3 for `webserve`: slow, idle and oversized clients do not keep it from
//! answering, and are closed. The server runs as a child process; hangs are caught by a
//! watchdog that kills it and fails the test. Durations are printed, never asserted.

use podcache_writer::TableWriter;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Kills `pid` and aborts the test if it is not dropped within `bound`.
struct Watchdog(Option<mpsc::Sender<()>>);

impl Watchdog {
    fn arm(pid: u32, bound: Duration, what: &'static str) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(bound) {
                eprintln!("WATCHDOG: {what} did not finish within {bound:?}; killing {pid} and failing");
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
                std::process::abort();
            }
        });
        Watchdog(Some(tx))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let _ = self.0.take().map(|tx| tx.send(()));
    }
}

fn start(dir: &std::path::Path, extra: &[&str]) -> (Server, u16) {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_webserve"))
            .args(["--dir", dir.to_str().unwrap(), "--table", "web", "--threads", "2", "--wait-secs", "5"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "webserve did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    (server, port)
}

/// Read one response (status, body) with a `Content-Length` body off a kept-alive connection.
fn read_response(r: &mut impl BufRead) -> (u16, Vec<u8>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line.split(' ').nth(1).unwrap_or_else(|| panic!("status line {line:?}")).parse().unwrap();
    let mut len = 0;
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                len = value.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    (status, body)
}

/// Send `start`, then one byte of `trickle` every `every`, until the server closes the
/// connection; returns what it answered and how long the connection lived.
fn trickle_until_closed(port: u16, start: &[u8], trickle: u8, every: Duration) -> (Vec<u8>, Duration) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(every)).unwrap();
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    if c.write_all(start).is_err() {
        return (got, t0.elapsed());
    }
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if c.write_all(&[trickle]).is_err() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    (got, t0.elapsed())
}

fn span(lived: &[Duration]) -> String {
    format!("{:?}..{:?}", lived.iter().min(), lived.iter().max())
}

/// Hundreds of connections trickling their request head a byte at a time (some every 300 ms,
/// some every 2 s), idle keep-alive connections and a huge declared `Content-Length`: normal
/// GETs are answered meanwhile with the right page, the huge request is refused with `413`
/// without being read, and every slow or idle connection is closed by the server (a connection
/// it never closed would keep its thread, and the watchdog fails the test).
#[test]
fn slow_idle_and_huge_requests_are_closed_while_pages_are_served() {
    const HEADER: &str = "1";
    let dir = tempfile::tempdir().unwrap();
    let mut writer = TableWriter::builder(dir.path().join("web.table")).max_items(100).create().unwrap();
    writer.put(b"index.html", b"<h1>still here</h1>").unwrap();
    let (server, port) = start(dir.path(), &["--header-timeout", HEADER]);
    let _dog = Watchdog::arm(server.0.id(), Duration::from_secs(600), "the webserve slowloris test");

    std::thread::scope(|scope| {
        let fast_trickles: Vec<_> = (0..200)
            .map(|_| {
                scope.spawn(move || {
                    trickle_until_closed(port, b"GET / HTTP/1.1\r\nX-Slow: ", b'a', Duration::from_millis(300))
                })
            })
            .collect();
        let slow_trickles: Vec<_> = (0..100)
            .map(|_| scope.spawn(move || trickle_until_closed(port, b"G", b'E', Duration::from_secs(2))))
            .collect();
        let idle: Vec<_> = (0..50)
            .map(|_| {
                scope.spawn(move || {
                    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
                    c.write_all(b"GET /index.html HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
                    // Bounded: a connection left open is reported, not waited for forever.
                    c.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
                    let mut r = BufReader::new(c);
                    assert_eq!(read_response(&mut r), (200, b"<h1>still here</h1>".to_vec()));
                    let t0 = Instant::now();
                    let mut rest = Vec::new();
                    // Closed: end of stream or a reset; a read timeout means it stayed open.
                    let closed = match r.read_to_end(&mut rest) {
                        Ok(_) => true,
                        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                    };
                    (closed, t0.elapsed())
                })
            })
            .collect();

        // A declared 10 GB body: 413 at once, nothing of it sent, and the connection closed.
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000000\r\n\r\n").unwrap();
        let mut r = BufReader::new(c);
        assert_eq!(read_response(&mut r).0, 413);
        let mut rest = Vec::new();
        let _ = r.read_to_end(&mut rest);
        assert!(rest.is_empty(), "the connection is closed after the 413");

        // Normal requests are answered while all that goes on, several on one kept-alive
        // connection too.
        for _ in 0..20 {
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\nGET /index.html HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            let mut r = BufReader::new(c);
            assert_eq!(read_response(&mut r), (200, b"<h1>still here</h1>".to_vec()));
            assert_eq!(read_response(&mut r), (200, b"<h1>still here</h1>".to_vec()));
        }

        let mut lived = Vec::new();
        for h in fast_trickles {
            let (got, l) = h.join().unwrap();
            // Closed without an answer to a request that never completed (hyper may send 408).
            assert!(got.is_empty() || got.starts_with(b"HTTP/1.1 408"), "{}", String::from_utf8_lossy(&got));
            lived.push(l);
        }
        eprintln!("heads trickled every 300 ms (header timeout {HEADER} s) closed after {}", span(&lived));
        let mut lived = Vec::new();
        for h in slow_trickles {
            let (got, l) = h.join().unwrap();
            assert!(got.is_empty() || got.starts_with(b"HTTP/1.1 408"), "{}", String::from_utf8_lossy(&got));
            lived.push(l);
        }
        eprintln!("heads trickled every 2 s closed after {}", span(&lived));
        let mut lived = Vec::new();
        for h in idle {
            let (closed, idle_for) = h.join().unwrap();
            assert!(closed, "an idle keep-alive connection stayed open for {idle_for:?}");
            lived.push(idle_for);
        }
        eprintln!("idle keep-alive connections closed after {}", span(&lived));
    });
    drop(writer);
}

/// At the connection limit new clients wait in the backlog, not refused: once the idle
/// connections holding every slot time out, a waiting GET is answered.
#[test]
fn a_client_beyond_the_connection_limit_is_answered_once_idle_ones_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = TableWriter::builder(dir.path().join("web.table")).max_items(100).create().unwrap();
    writer.put(b"index.html", b"page").unwrap();
    let (server, port) = start(dir.path(), &["--header-timeout", "1", "--max-connections", "4"]);
    let _dog = Watchdog::arm(server.0.id(), Duration::from_secs(300), "the connection-limit test");

    // Four connections that send nothing hold every slot.
    let holders: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut r = BufReader::new(c);
    assert_eq!(read_response(&mut r), (200, b"page".to_vec()));
    // The holders were closed by the server (end of stream), not kept.
    for mut h in holders {
        h.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let mut rest = Vec::new();
        let r = h.read_to_end(&mut rest);
        assert!(
            !matches!(&r, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
            "an idle connection holding a slot stayed open"
        );
    }
    drop(writer);
}
