//! RESP3: parse the frames a Redis server sends, encode the commands the near cache sends.
//!
//! The parser is incremental and bounded: [`parse`] either returns one whole top-level frame and
//! the bytes it used, says more bytes are needed (`Ok(None)`), or returns a [`ProtoError`]. The
//! upstream is trusted no more than a file is: lengths are checked against [`Limits`] before
//! anything is allocated, nesting depth is bounded, and no input makes it panic or loop (see the
//! hostile-input tests at the bottom).

/// One RESP3 frame. RESP2 null bulk strings and null arrays (`$-1`, `*-1`) parse as [`Frame::Null`].
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// `+OK`
    Simple(Vec<u8>),
    /// `-ERR ...` or `!<len>` (a blob error).
    Error(Vec<u8>),
    /// `:42`
    Integer(i64),
    /// `$<len>` or `=<len>` (verbatim; the `txt:` format prefix is kept).
    Bulk(Vec<u8>),
    /// `_`, `$-1`, `*-1`.
    Null,
    /// `#t` / `#f`.
    Boolean(bool),
    /// `,1.5` or `(123...` (kept as text: the near cache never needs them as numbers).
    Number(Vec<u8>),
    /// `*<n>` or `~<n>` (sets are arrays here).
    Array(Vec<Frame>),
    /// `%<n>`: key-value pairs, in wire order.
    Map(Vec<(Frame, Frame)>),
    /// `><n>`: an out-of-band push (invalidations).
    Push(Vec<Frame>),
}

/// Bounds on what the parser accepts.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest bulk string (Redis's own `proto-max-bulk-len` default is 512 MiB).
    pub max_bulk: usize,
    /// Most elements of one aggregate.
    pub max_elements: usize,
    /// Deepest nesting of aggregates.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_bulk: 512 << 20, max_elements: 1 << 20, max_depth: 16 }
    }
}

/// The upstream sent something that is not RESP3 this client accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtoError {
    /// A type byte that is not RESP3.
    UnknownType(u8),
    /// A length or integer line that is not a number in range.
    BadNumber,
    /// A line or bulk not terminated by CRLF.
    BadTerminator,
    /// A bulk string over [`Limits::max_bulk`].
    BulkTooLarge(u64),
    /// An aggregate over [`Limits::max_elements`].
    TooManyElements(u64),
    /// Aggregates nested deeper than [`Limits::max_depth`].
    TooDeep,
    /// A simple line (`+`, `-`, `:` ...) longer than a bulk may be.
    LineTooLong,
    /// Streamed strings and aggregates (`?` lengths), which Redis does not send.
    Streamed,
}

impl std::fmt::Display for ProtoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtoError::UnknownType(b) => write!(f, "unknown RESP3 type byte 0x{b:02x}"),
            ProtoError::BadNumber => f.write_str("malformed length or integer"),
            ProtoError::BadTerminator => f.write_str("missing CRLF terminator"),
            ProtoError::BulkTooLarge(n) => write!(f, "bulk string of {n} bytes exceeds the limit"),
            ProtoError::TooManyElements(n) => write!(f, "aggregate of {n} elements exceeds the limit"),
            ProtoError::TooDeep => f.write_str("aggregates nested too deep"),
            ProtoError::LineTooLong => f.write_str("line too long"),
            ProtoError::Streamed => f.write_str("streamed RESP3 types are not supported"),
        }
    }
}

impl std::error::Error for ProtoError {}

/// Parse one top-level frame from the start of `buf`: `Ok(Some((frame, used)))`, `Ok(None)` if
/// `buf` holds only part of a frame, or an error. Attributes (`|`) are skipped.
pub fn parse(buf: &[u8], limits: &Limits) -> Result<Option<(Frame, usize)>, ProtoError> {
    let mut p = Parser { buf, pos: 0, limits };
    match p.frame(0) {
        Ok(f) => Ok(Some((f, p.pos))),
        Err(Incomplete::More) => Ok(None),
        Err(Incomplete::Bad(e)) => Err(e),
    }
}

enum Incomplete {
    More,
    Bad(ProtoError),
}

impl From<ProtoError> for Incomplete {
    fn from(e: ProtoError) -> Self {
        Incomplete::Bad(e)
    }
}

struct Parser<'b> {
    buf: &'b [u8],
    pos: usize,
    limits: &'b Limits,
}

impl Parser<'_> {
    /// The bytes up to the next CRLF (not included), advancing past it.
    fn line(&mut self) -> Result<&[u8], Incomplete> {
        let rest = &self.buf[self.pos..];
        // A line is a type's argument: a number, a short status or an error message.
        let window = &rest[..rest.len().min(self.limits.max_bulk.saturating_add(2))];
        match window.iter().position(|&b| b == b'\n') {
            Some(nl) => {
                if nl == 0 || window[nl - 1] != b'\r' {
                    return Err(ProtoError::BadTerminator.into());
                }
                self.pos += nl + 1;
                Ok(&rest[..nl - 1])
            }
            None if window.len() < rest.len() => Err(ProtoError::LineTooLong.into()),
            None => Err(Incomplete::More),
        }
    }

    fn int(&mut self) -> Result<i64, Incomplete> {
        let line = self.line()?;
        if line == b"?" {
            return Err(ProtoError::Streamed.into());
        }
        let s = std::str::from_utf8(line).map_err(|_| ProtoError::BadNumber)?;
        s.parse::<i64>().map_err(|_| ProtoError::BadNumber.into())
    }

    /// A length: -1 means null.
    fn len(&mut self, max: usize, too_large: fn(u64) -> ProtoError) -> Result<Option<usize>, Incomplete> {
        match self.int()? {
            -1 => Ok(None),
            n if n < 0 => Err(ProtoError::BadNumber.into()),
            n if n as u64 > max as u64 => Err(too_large(n as u64).into()),
            n => Ok(Some(n as usize)),
        }
    }

    fn blob(&mut self) -> Result<Option<Vec<u8>>, Incomplete> {
        let Some(n) = self.len(self.limits.max_bulk, ProtoError::BulkTooLarge)? else {
            return Ok(None);
        };
        let rest = &self.buf[self.pos..];
        if rest.len() < n + 2 {
            return Err(Incomplete::More);
        }
        if &rest[n..n + 2] != b"\r\n" {
            return Err(ProtoError::BadTerminator.into());
        }
        self.pos += n + 2;
        Ok(Some(rest[..n].to_vec()))
    }

    fn elements(&mut self, depth: usize, n: usize) -> Result<Vec<Frame>, Incomplete> {
        // Capacity from what the buffer could hold at least (3 bytes per element), never from
        // the claimed count alone.
        let mut v = Vec::with_capacity(n.min((self.buf.len() - self.pos) / 3));
        for _ in 0..n {
            v.push(self.frame(depth + 1)?);
        }
        Ok(v)
    }

    fn frame(&mut self, depth: usize) -> Result<Frame, Incomplete> {
        if depth > self.limits.max_depth {
            return Err(ProtoError::TooDeep.into());
        }
        let Some(&t) = self.buf.get(self.pos) else {
            return Err(Incomplete::More);
        };
        self.pos += 1;
        let max_el = self.limits.max_elements;
        Ok(match t {
            b'+' => Frame::Simple(self.line()?.to_vec()),
            b'-' => Frame::Error(self.line()?.to_vec()),
            b':' => Frame::Integer(self.int()?),
            b',' | b'(' => Frame::Number(self.line()?.to_vec()),
            b'#' => match self.line()? {
                b"t" => Frame::Boolean(true),
                b"f" => Frame::Boolean(false),
                _ => return Err(ProtoError::BadNumber.into()),
            },
            b'_' => {
                if !self.line()?.is_empty() {
                    return Err(ProtoError::BadTerminator.into());
                }
                Frame::Null
            }
            b'$' | b'=' => self.blob()?.map_or(Frame::Null, Frame::Bulk),
            b'!' => Frame::Error(self.blob()?.ok_or(ProtoError::BadNumber)?),
            b'*' | b'~' => match self.len(max_el, ProtoError::TooManyElements)? {
                None => Frame::Null,
                Some(n) => Frame::Array(self.elements(depth, n)?),
            },
            b'>' => {
                let n = self.len(max_el, ProtoError::TooManyElements)?.ok_or(ProtoError::BadNumber)?;
                Frame::Push(self.elements(depth, n)?)
            }
            b'%' => {
                let n = self.len(max_el / 2, ProtoError::TooManyElements)?.ok_or(ProtoError::BadNumber)?;
                let flat = self.elements(depth, n * 2)?;
                let mut pairs = Vec::with_capacity(n);
                let mut it = flat.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                Frame::Map(pairs)
            }
            b'|' => {
                // An attribute map describes the frame after it; skip it and return that frame.
                let n = self.len(max_el / 2, ProtoError::TooManyElements)?.ok_or(ProtoError::BadNumber)?;
                self.elements(depth, n * 2)?;
                self.frame(depth)?
            }
            other => return Err(ProtoError::UnknownType(other).into()),
        })
    }
}

/// Append a command (an array of bulk strings) to `out`.
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.push(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for a in args {
        out.push(b'$');
        out.extend_from_slice(a.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(b: &[u8]) -> Frame {
        let (f, used) = parse(b, &Limits::default()).unwrap().unwrap();
        assert_eq!(used, b.len(), "whole input used");
        f
    }

    #[test]
    fn every_type() {
        assert_eq!(one(b"+OK\r\n"), Frame::Simple(b"OK".to_vec()));
        assert_eq!(one(b"-ERR x\r\n"), Frame::Error(b"ERR x".to_vec()));
        assert_eq!(one(b":-42\r\n"), Frame::Integer(-42));
        assert_eq!(one(b"$3\r\na\r\n\r\n"), Frame::Bulk(b"a\r\n".to_vec()));
        assert_eq!(one(b"$0\r\n\r\n"), Frame::Bulk(Vec::new()));
        assert_eq!(one(b"$-1\r\n"), Frame::Null);
        assert_eq!(one(b"*-1\r\n"), Frame::Null);
        assert_eq!(one(b"_\r\n"), Frame::Null);
        assert_eq!(one(b"#t\r\n"), Frame::Boolean(true));
        assert_eq!(one(b",1.5\r\n"), Frame::Number(b"1.5".to_vec()));
        assert_eq!(one(b"!3\r\nbad\r\n"), Frame::Error(b"bad".to_vec()));
        assert_eq!(one(b"=7\r\ntxt:abc\r\n"), Frame::Bulk(b"txt:abc".to_vec()));
        assert_eq!(one(b"*2\r\n:1\r\n$-1\r\n"), Frame::Array(vec![Frame::Integer(1), Frame::Null]));
        assert_eq!(one(b"%1\r\n+a\r\n:1\r\n"), Frame::Map(vec![(Frame::Simple(b"a".to_vec()), Frame::Integer(1))]));
        assert_eq!(
            one(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n"),
            Frame::Push(vec![Frame::Bulk(b"invalidate".to_vec()), Frame::Array(vec![Frame::Bulk(b"k".to_vec())])])
        );
        assert_eq!(
            one(b">2\r\n$10\r\ninvalidate\r\n_\r\n"),
            Frame::Push(vec![Frame::Bulk(b"invalidate".to_vec()), Frame::Null])
        );
        assert_eq!(one(b"|1\r\n+k\r\n+v\r\n:7\r\n"), Frame::Integer(7));
    }

    #[test]
    fn two_frames_back_to_back() {
        let b = b"+OK\r\n:1\r\n";
        let (f, used) = parse(b, &Limits::default()).unwrap().unwrap();
        assert_eq!((f, used), (Frame::Simple(b"OK".to_vec()), 5));
        assert_eq!(parse(&b[used..], &Limits::default()).unwrap().unwrap().0, Frame::Integer(1));
    }

    #[test]
    fn every_prefix_of_a_frame_is_incomplete() {
        let whole: &[u8] = b"*3\r\n$5\r\nhello\r\n%1\r\n+a\r\n*1\r\n:9\r\n>1\r\n_\r\n";
        for cut in 0..whole.len() {
            assert_eq!(parse(&whole[..cut], &Limits::default()), Ok(None), "prefix of {cut} bytes");
        }
        assert!(parse(whole, &Limits::default()).unwrap().is_some());
    }

    #[test]
    fn encode_roundtrip() {
        let mut out = Vec::new();
        encode(&mut out, &[b"SET", b"k\r\n", b""]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$0\r\n\r\n");
        assert_eq!(
            one(&out),
            Frame::Array(vec![Frame::Bulk(b"SET".to_vec()), Frame::Bulk(b"k\r\n".to_vec()), Frame::Bulk(Vec::new())])
        );
    }

    #[test]
    fn hostile_lengths_are_refused_before_allocating() {
        let l = Limits { max_bulk: 1024, max_elements: 16, max_depth: 4 };
        assert_eq!(parse(b"$99999999999\r\n", &l), Err(ProtoError::BulkTooLarge(99999999999)));
        assert_eq!(parse(b"$1025\r\n", &l), Err(ProtoError::BulkTooLarge(1025)));
        assert_eq!(parse(b"*17\r\n", &l), Err(ProtoError::TooManyElements(17)));
        assert_eq!(parse(b"*9223372036854775807\r\n", &l), Err(ProtoError::TooManyElements(i64::MAX as u64)));
        assert_eq!(parse(b"$-2\r\n", &l), Err(ProtoError::BadNumber));
        assert_eq!(parse(b"$99999999999999999999999\r\n", &l), Err(ProtoError::BadNumber));
        assert_eq!(parse(b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n", &l), Err(ProtoError::TooDeep));
        assert_eq!(parse(b"$3\r\nabcXY", &l), Err(ProtoError::BadTerminator));
        assert_eq!(parse(b"+OK\n", &l), Err(ProtoError::BadTerminator));
        assert_eq!(parse(b"\n", &l), Err(ProtoError::UnknownType(b'\n')));
        assert_eq!(parse(b"$?\r\n", &l), Err(ProtoError::Streamed));
        assert_eq!(parse(b">-1\r\n", &l), Err(ProtoError::BadNumber));
        assert_eq!(parse(b"#x\r\n", &l), Err(ProtoError::BadNumber));
        // A status line with no end in sight is refused once it is longer than a bulk may be.
        let long = [b"+".as_slice(), &[b'a'; 2000]].concat();
        assert_eq!(parse(&long, &l), Err(ProtoError::LineTooLong));
    }

    /// Deterministic xorshift, so a failure reproduces.
    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        let l = Limits { max_bulk: 4096, max_elements: 64, max_depth: 8 };
        let valid: &[u8] =
            b">2\r\n$10\r\ninvalidate\r\n*2\r\n$1\r\nk\r\n$2\r\nk2\r\n*2\r\n:5\r\n$3\r\nabc\r\n%1\r\n+a\r\n,1\r\n";
        let alphabet = b"*$%>~|_:+-#,!=?\r\n0123456789-abc";
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut outcomes = [0usize; 3];
        for _ in 0..50_000 {
            let mut buf = if rng(&mut seed).is_multiple_of(2) {
                let mut b = valid.to_vec();
                for _ in 0..1 + rng(&mut seed) % 4 {
                    let i = (rng(&mut seed) as usize) % b.len();
                    b[i] = alphabet[(rng(&mut seed) as usize) % alphabet.len()];
                }
                b
            } else {
                let n = (rng(&mut seed) % 40) as usize;
                (0..n).map(|_| alphabet[(rng(&mut seed) as usize) % alphabet.len()]).collect()
            };
            buf.truncate(buf.len() - (rng(&mut seed) as usize % (buf.len() + 1)) / 4);
            match parse(&buf, &l) {
                Ok(Some((_, used))) => {
                    assert!(used > 0 && used <= buf.len());
                    outcomes[0] += 1;
                }
                Ok(None) => outcomes[1] += 1,
                Err(_) => outcomes[2] += 1,
            }
        }
        // The generator reaches all three outcomes (else the test tests nothing).
        assert!(outcomes.iter().all(|&n| n > 0), "{outcomes:?}");
    }
}
