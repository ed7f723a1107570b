//! A minimal blocking HTTP/1.1 client for the CLI's writes through the sidecar (one request per
//! connection, over TCP or the sidecar's Unix socket). No TLS: the sidecar listens on loopback or
//! a socket.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

/// Where the sidecar is.
#[derive(Clone, Debug)]
pub enum Target {
    /// `host:port` of the API.
    Tcp(String),
    /// The API's Unix socket.
    Unix(PathBuf),
}

impl Target {
    /// From a URL `http://host:port[/]`.
    pub fn from_url(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?}: only http:// URLs are supported (the sidecar listens on loopback)"))?;
        let hostport = rest.trim_end_matches('/');
        if hostport.is_empty() || hostport.contains('/') {
            return Err(format!("{url:?}: expected http://HOST:PORT"));
        }
        Ok(Target::Tcp(hostport.to_string()))
    }
}

/// A response.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

/// Every byte but RFC 3986's unreserved characters (letters, digits, `-._~`) is escaped.
const SEGMENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Percent-encode a path segment (unreserved characters stay; `/` is escaped too).
pub fn encode_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

/// Send one request and read the whole response.
pub fn request(
    target: &Target,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> std::io::Result<Response> {
    let host = match target {
        Target::Tcp(h) => h.as_str(),
        Target::Unix(_) => "localhost",
    };
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\nUser-Agent: podcache-cli\r\n",
        body.len()
    );
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str("\r\n");
    let mut req = head.into_bytes();
    req.extend_from_slice(body);
    let raw = match target {
        Target::Tcp(h) => exchange(std::net::TcpStream::connect(h)?, &req)?,
        Target::Unix(p) => exchange(std::os::unix::net::UnixStream::connect(p)?, &req)?,
    };
    parse(&raw).ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP response"))
}

trait Stream: Read + Write {
    fn set_timeout(&self, d: Duration) -> std::io::Result<()>;
}

impl Stream for std::net::TcpStream {
    fn set_timeout(&self, d: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(d))
    }
}

impl Stream for std::os::unix::net::UnixStream {
    fn set_timeout(&self, d: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(d))
    }
}

/// Write the request, read the response. The server may answer before it read the whole body
/// (a refused token, a body over the limit) and close: a failed write is then not the error,
/// the response that was sent is what counts.
fn exchange<S: Stream>(mut s: S, req: &[u8]) -> std::io::Result<Vec<u8>> {
    s.set_timeout(Duration::from_secs(60))?;
    let written = s.write_all(req);
    let mut raw = Vec::new();
    let read = s.read_to_end(&mut raw);
    if parse(&raw).is_some() {
        return Ok(raw);
    }
    written?;
    read?;
    Ok(raw)
}

fn parse(raw: &[u8]) -> Option<Response> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let mut chunked = false;
    let mut len = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else if k == "content-length" {
                len = v.parse::<usize>().ok();
            }
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        let mut out = Vec::new();
        let mut at = rest;
        loop {
            let nl = at.windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&at[..nl]).ok()?.split(';').next()?.trim(), 16).ok()?;
            at = &at[nl + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(at.get(..size)?);
            at = at.get(size + 2..)?;
        }
        out
    } else {
        match len {
            Some(n) => rest.get(..n)?.to_vec(),
            None => rest.to_vec(),
        }
    };
    Some(Response { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_responses() {
        let r = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"abc"[..]));
        let r =
            parse(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.body, b"abcde");
        assert!(parse(b"garbage").is_none());
        assert_eq!(encode_segment("a b/ü"), "a%20b%2F%C3%BC");
        assert_eq!(encode_segment("Az09-._~%?#"), "Az09-._~%25%3F%23");
        assert!(Target::from_url("https://x").is_err());
        assert!(matches!(Target::from_url("http://127.0.0.1:7070/"), Ok(Target::Tcp(h)) if h == "127.0.0.1:7070"));
    }
}
