//! The `webserve` example answers `GET /{key}` from a table another process writes.

use podcache_writer::{CreateError, TableWriter};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Send `request` and return (status code, body), reading until the server closes (the
/// requests below ask for `Connection: close`, or are ones the server closes after).
fn http(port: u16, request: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, resp[split + 4..].to_vec())
}

fn get(port: u16, path: &str) -> (u16, Vec<u8>) {
    http(port, &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
}

#[test]
fn serves_keys_written_by_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = TableWriter::builder(dir.path().join("web.table")).max_items(100).create().unwrap();
    writer.put(b"index.html", b"<h1>hello</h1>").unwrap();
    writer.put(b"a b.txt", b"spaced").unwrap();

    let port = free_port();
    let _server = Server(
        Command::new(env!("CARGO_BIN_EXE_webserve"))
            .args(["--dir", dir.path().to_str().unwrap(), "--table", "web", "--threads", "2"])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--wait-secs", "5"])
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "webserve did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }

    assert_eq!(get(port, "/"), (200, b"<h1>hello</h1>".to_vec()));
    assert_eq!(get(port, "/index.html?x=1"), (200, b"<h1>hello</h1>".to_vec()));
    assert_eq!(get(port, "/a%20b.txt"), (200, b"spaced".to_vec()));
    assert_eq!(get(port, "/missing").0, 404);
    // A malformed escape is taken literally (no such key).
    assert_eq!(get(port, "/bad%zz").0, 404);
    assert_eq!(http(port, "POST / HTTP/1.1\r\n\r\n").0, 405);
    assert_eq!(http(port, "HEAD / HTTP/1.1\r\nConnection: close\r\n\r\n"), (200, Vec::new()));
    // A body on a GET is refused before it is sent, and the connection closed.
    assert_eq!(http(port, "GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\n").0, 413);

    // A new value is served at once, from shared memory.
    writer.put(b"index.html", b"<h1>v2</h1>").unwrap();
    assert_eq!(get(port, "/"), (200, b"<h1>v2</h1>".to_vec()));
    writer.delete(b"index.html");
    assert_eq!(get(port, "/").0, 404);
}

#[test]
fn follows_a_replaced_table_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("web.table");
    let mut writer = TableWriter::builder(&path).max_items(100).create().unwrap();
    writer.put(b"index.html", b"old layout").unwrap();

    let port = free_port();
    let _server = Server(
        Command::new(env!("CARGO_BIN_EXE_webserve"))
            .args(["--dir", dir.path().to_str().unwrap(), "--threads", "1"])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--wait-secs", "5"])
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "webserve did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(get(port, "/"), (200, b"old layout".to_vec()));

    // A new layout: a new file renamed over the old one (the old one is retired).
    drop(writer);
    // Another test of this binary spawning a child at this moment holds a copy of the old
    // writer's descriptor (and so its flock) until the child's exec: retry briefly.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut writer = loop {
        match TableWriter::builder(&path).max_items(1000).replace_mismatched(true).create() {
            Ok(w) => break w,
            Err(CreateError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("replacing the table: {e}"),
        }
    };
    writer.put(b"index.html", b"new layout").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get(port, "/");
        if status == 200 && body == b"new layout" {
            break;
        }
        assert!(Instant::now() < deadline, "still serving the retired file: {status} {body:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn fails_clearly_when_the_table_never_appears() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_webserve"))
        .args(["--dir", dir.path().to_str().unwrap(), "--listen", "127.0.0.1:0", "--wait-secs", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot open table") && err.contains("web.table"), "stderr: {err}");
}
