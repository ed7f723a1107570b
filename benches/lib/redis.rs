//! Redis as a peer: a `redis-server` this process starts on a Unix socket in a temporary
//! directory (no TCP port, persistence off: `--save '' --appendonly no`, pub/sub output-buffer
//! limits off so a slow subscriber is measured, not disconnected), a minimal RESP client
//! ([`Conn`]) over a `UnixStream`, and the pub/sub stream and round-trip harnesses.
//!
//! Pub/sub stream: this process PUBLISHes on one connection; a child process (this binary
//! re-executed) SUBSCRIBEs, reads every message (payload copied into a buffer) and confirms
//! counts on a Unix socket, like the other stream harnesses. Not pipelined: each PUBLISH waits
//! for its reply. Pipelined: [`PIPELINE`] PUBLISHes per write, then their replies.
//!
//! Round trip: this process PUBLISHes 64 B on `ping`; the child, subscribed to `ping`, PUBLISHes
//! it on `pong`, to which this process is subscribed on a second connection.

use crate::roundtrip::RoundTrip;
use crate::stream::{payload, WINDOW};
use crate::{accept_child, child_var, Child, ShmDir, CHILD_TIMEOUT, FLAG_DATA, FLAG_END, FLAG_EXIT};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Requests per write in the pipelined modes.
pub const PIPELINE: usize = 64;
/// Child role: pub/sub stream subscriber.
pub const ROLE_SUB: &str = "redis-subscriber";
/// Child role: pub/sub round-trip echo.
pub const ROLE_ECHO: &str = "redis-echo";
const VAR_REDIS: &str = "PODCACHE_BENCH_REDIS";
const VAR_SOCK: &str = "PODCACHE_BENCH_SOCK";
const VAR_ACK_EVERY: &str = "PODCACHE_BENCH_ACK_EVERY";

/// A `redis-server` child process, killed on drop.
pub struct RedisServer {
    child: std::process::Child,
    socket: PathBuf,
    _dir: ShmDir,
}

impl RedisServer {
    /// Start `redis-server` (from `PATH`) on a Unix socket; `Err` with a message saying why
    /// Redis rows are skipped if it is not installed or does not come up.
    pub fn start() -> Result<RedisServer, String> {
        let dir = ShmDir::new();
        let socket = dir.path("redis.sock");
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg("0")
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--unixsocketperm")
            .arg("700")
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--client-output-buffer-limit")
            .arg("pubsub 0 0 0")
            .arg("--dir")
            .arg(dir.path(""))
            .arg("--loglevel")
            .arg("warning")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return Err(format!("redis-server not runnable ({e}): Redis rows skipped")),
        };
        let mut server = RedisServer { child, socket, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(s) = UnixStream::connect(&server.socket) {
                let mut c = Conn::from_stream(s);
                c.send(&[b"PING"]);
                c.flush();
                if c.read_line().starts_with(b"+PONG") {
                    return Ok(server);
                }
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("redis-server exited at start ({status}): Redis rows skipped"));
            }
            if Instant::now() > deadline {
                return Err("redis-server did not answer within 10 s: Redis rows skipped".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's Unix socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `redis-server --version`, first line.
    pub fn version() -> Option<String> {
        let out = Command::new("redis-server").arg("--version").output().ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A RESP connection over a Unix socket: requests are buffered until [`Conn::flush`].
pub struct Conn {
    reader: BufReader<UnixStream>,
    writer: BufWriter<UnixStream>,
    line: Vec<u8>,
}

impl Conn {
    /// Connect to the server at `socket`.
    pub fn connect(socket: &Path) -> Conn {
        Conn::from_stream(UnixStream::connect(socket).expect("connect to redis-server"))
    }

    fn from_stream(s: UnixStream) -> Conn {
        s.set_read_timeout(Some(CHILD_TIMEOUT)).expect("read timeout");
        let w = s.try_clone().expect("clone the socket");
        Conn {
            reader: BufReader::with_capacity(64 << 10, s),
            writer: BufWriter::with_capacity(64 << 10, w),
            line: Vec::with_capacity(64),
        }
    }

    /// Queue one command (an array of bulk strings).
    pub fn send(&mut self, args: &[&[u8]]) {
        let w = &mut self.writer;
        write!(w, "*{}\r\n", args.len()).expect("write");
        for a in args {
            write!(w, "${}\r\n", a.len()).expect("write");
            w.write_all(a).expect("write");
            w.write_all(b"\r\n").expect("write");
        }
    }

    /// Send what is queued.
    pub fn flush(&mut self) {
        self.writer.flush().expect("flush");
    }

    /// The next reply line, without its CRLF.
    fn read_line(&mut self) -> &[u8] {
        self.line.clear();
        let n = self.reader.read_until(b'\n', &mut self.line).expect("read a reply");
        assert!(n >= 2 && self.line.ends_with(b"\r\n"), "truncated reply");
        self.line.truncate(n - 2);
        &self.line
    }

    fn read_int(&mut self, prefix: u8) -> i64 {
        let line = self.read_line();
        assert_eq!(line.first(), Some(&prefix), "unexpected reply {:?}", String::from_utf8_lossy(line));
        std::str::from_utf8(&line[1..]).ok().and_then(|s| s.parse().ok()).expect("a number")
    }

    /// Read a `+OK` reply.
    pub fn expect_ok(&mut self) {
        let line = self.read_line();
        assert_eq!(line, b"+OK", "unexpected reply");
    }

    /// Read an integer reply.
    pub fn read_integer(&mut self) -> i64 {
        self.read_int(b':')
    }

    /// Read a bulk-string reply into `buf`: its length, or `None` for a nil reply.
    pub fn read_bulk(&mut self, buf: &mut [u8]) -> Option<usize> {
        let len = self.read_int(b'$');
        if len < 0 {
            return None;
        }
        let len = len as usize;
        self.reader.read_exact(&mut buf[..len]).expect("read a bulk string");
        let mut crlf = [0u8; 2];
        self.reader.read_exact(&mut crlf).expect("read CRLF");
        Some(len)
    }

    /// Read one pub/sub push (`message`, channel, payload) into `buf`: the payload length.
    pub fn read_message(&mut self, buf: &mut [u8]) -> usize {
        assert_eq!(self.read_int(b'*'), 3, "a pub/sub push has 3 parts");
        let mut kind = [0u8; 16];
        let k = self.read_bulk(&mut kind).expect("kind");
        assert_eq!(&kind[..k], b"message", "push kind");
        let mut chan = [0u8; 64];
        self.read_bulk(&mut chan).expect("channel");
        self.read_bulk(buf).expect("payload")
    }

    /// SUBSCRIBE to `channel` and wait for the confirmation.
    pub fn subscribe(&mut self, channel: &[u8]) {
        self.send(&[b"SUBSCRIBE", channel]);
        self.flush();
        assert_eq!(self.read_int(b'*'), 3, "subscribe confirmation");
        let mut scratch = [0u8; 64];
        self.read_bulk(&mut scratch).expect("kind");
        self.read_bulk(&mut scratch).expect("channel");
        self.read_integer();
    }
}

/// Pub/sub stream: this process publishes, a child subscribes.
pub struct RedisStream {
    child: Option<Child>,
    conn: Conn,
    acks: UnixStream,
    data: Vec<u8>,
    end: Vec<u8>,
    pipelined: bool,
    credit: u64,
    published: u64,
    acked: u64,
    _dir: ShmDir,
}

impl RedisStream {
    /// Start a subscriber child on the server at `socket`; messages of `size` bytes.
    pub fn new(socket: &Path, size: usize, pipelined: bool) -> RedisStream {
        let dir = ShmDir::new();
        let sock = dir.path("acks.sock");
        let listener = UnixListener::bind(&sock).expect("bind");
        let credit = (WINDOW / size as u64).max(4);
        let mut child = Child::spawn(
            ROLE_SUB,
            &[
                (VAR_REDIS, socket.into()),
                (VAR_SOCK, sock.into_os_string()),
                (VAR_ACK_EVERY, (credit / 4).to_string().into()),
            ],
        );
        // The child connects only once it is subscribed.
        let acks = accept_child(&listener, &mut child);
        acks.set_read_timeout(Some(CHILD_TIMEOUT)).expect("read timeout");
        let mut s = RedisStream {
            child: Some(child),
            conn: Conn::connect(socket),
            acks,
            data: payload(size, FLAG_DATA),
            end: payload(size, FLAG_END),
            pipelined,
            credit,
            published: 0,
            acked: 0,
            _dir: dir,
        };
        s.run(10);
        s
    }

    fn wait_acked(&mut self, target: u64) {
        while self.acked < target {
            let mut b = [0u8; 8];
            self.acks.read_exact(&mut b).expect("read an ack");
            self.acked = self.acked.max(u64::from_le_bytes(b));
        }
    }

    /// Stream `iters` messages; the time until the subscriber confirmed the last one.
    pub fn run(&mut self, iters: u64) -> Duration {
        let start = Instant::now();
        let mut i = 0;
        while i < iters {
            if self.published - self.acked >= self.credit {
                self.wait_acked(self.published + 1 - self.credit);
            }
            let room = self.credit - (self.published - self.acked);
            let batch = if self.pipelined { (PIPELINE as u64).min(iters - i).min(room) } else { 1 };
            for j in 0..batch {
                let msg = if i + j + 1 == iters { &self.end } else { &self.data };
                self.conn.send(&[b"PUBLISH", b"stream", msg]);
            }
            self.conn.flush();
            for _ in 0..batch {
                assert_eq!(self.conn.read_integer(), 1, "one subscriber received the message");
            }
            i += batch;
            self.published += batch;
        }
        self.wait_acked(self.published);
        start.elapsed()
    }
}

impl Drop for RedisStream {
    fn drop(&mut self) {
        let bye = payload(self.data.len(), FLAG_EXIT);
        self.conn.send(&[b"PUBLISH", b"stream", &bye]);
        self.conn.flush();
        if let Some(child) = self.child.take() {
            child.finish(Duration::from_secs(2));
        }
    }
}

/// Child: subscribe to `stream`, count messages, confirm counts on the ack socket.
pub fn subscriber_child() {
    let mut conn = Conn::connect(Path::new(&child_var(VAR_REDIS)));
    conn.subscribe(b"stream");
    let ack_every: u64 = child_var(VAR_ACK_EVERY).parse().expect("ack interval");
    let mut acks = UnixStream::connect(child_var(VAR_SOCK)).expect("connect");
    let mut buf = vec![0u8; 1 << 17];
    let mut received = 0u64;
    loop {
        conn.read_message(&mut buf);
        match buf[0] {
            FLAG_EXIT => return,
            FLAG_END => {
                received += 1;
                acks.write_all(&received.to_le_bytes()).expect("ack");
            }
            _ => {
                received += 1;
                if received.is_multiple_of(ack_every) {
                    acks.write_all(&received.to_le_bytes()).expect("ack");
                }
            }
        }
    }
}

/// 64 B round trip through Redis pub/sub (see the module doc).
pub struct RedisPingPong {
    child: Option<Child>,
    publish: Conn,
    pongs: Conn,
    msg: Vec<u8>,
    buf: Vec<u8>,
    _dir: ShmDir,
}

impl RedisPingPong {
    /// Start the echo child on the server at `socket`.
    pub fn new(socket: &Path) -> RedisPingPong {
        let dir = ShmDir::new();
        let sock = dir.path("ready.sock");
        let listener = UnixListener::bind(&sock).expect("bind");
        let mut pongs = Conn::connect(socket);
        pongs.subscribe(b"pong");
        let mut child = Child::spawn(ROLE_ECHO, &[(VAR_REDIS, socket.into()), (VAR_SOCK, sock.into_os_string())]);
        let ready = accept_child(&listener, &mut child);
        drop(ready);
        let mut p = RedisPingPong {
            child: Some(child),
            publish: Conn::connect(socket),
            pongs,
            msg: payload(64, FLAG_DATA),
            buf: vec![0; 256],
            _dir: dir,
        };
        p.round_trip();
        p
    }
}

impl RoundTrip for RedisPingPong {
    fn round_trip(&mut self) {
        self.publish.send(&[b"PUBLISH", b"ping", &self.msg]);
        self.publish.flush();
        assert_eq!(self.publish.read_integer(), 1, "the echo child is subscribed");
        let n = self.pongs.read_message(&mut self.buf);
        assert_eq!(n, 64, "pong length");
    }
}

impl Drop for RedisPingPong {
    fn drop(&mut self) {
        let bye = payload(64, FLAG_EXIT);
        self.publish.send(&[b"PUBLISH", b"ping", &bye]);
        self.publish.flush();
        if let Some(child) = self.child.take() {
            child.finish(Duration::from_secs(2));
        }
    }
}

/// Child: echo every message of `ping` on `pong`.
pub fn echo_child() {
    let socket = PathBuf::from(child_var(VAR_REDIS));
    let mut pings = Conn::connect(&socket);
    pings.subscribe(b"ping");
    let mut publish = Conn::connect(&socket);
    let ready = UnixStream::connect(child_var(VAR_SOCK)).expect("connect");
    drop(ready);
    let mut buf = vec![0u8; 256];
    loop {
        let n = pings.read_message(&mut buf);
        if buf[0] == FLAG_EXIT {
            return;
        }
        publish.send(&[b"PUBLISH", b"pong", &buf[..n]]);
        publish.flush();
        publish.read_integer();
    }
}
