//! The wire protocol: one text line per request or reply, payloads length-prefixed.
//!
//! Requests (a line ends with `\n`, an optional `\r` before it is ignored):
//!
//! ```text
//! PUT <key> <len>\n<len bytes>     -> OK
//! GET <key>\n                      -> VALUE <len>\n<len bytes> | NOTFOUND
//! DEL <key>\n                      -> DELETED | NOTFOUND
//! PUSH <queue> <len>\n<len bytes>  -> OK
//! POP <queue>\n                    -> VALUE <len>\n<len bytes> | EMPTY
//! STATS\n                          -> STATS requests=N connections=N ... (see stats.rs)
//! SHUTDOWN\n                       -> BYE, then the server exits
//! ```
//!
//! A request the server cannot parse gets `ERR <why>` and the connection is closed (after a bad
//! header the server cannot tell where the next request starts).

use std::str;

use thiserror::Error;

/// Longest request line, `\n` included.
pub const MAX_LINE: usize = 1024;
/// Longest key or queue name.
pub const MAX_NAME: usize = 250;
/// Largest payload of one PUT or PUSH.
pub const MAX_PAYLOAD: usize = 16 << 20;

/// One request, borrowing its key and payload from the buffer it was parsed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Put { key: &'a str, payload: &'a [u8] },
    Get { key: &'a str },
    Del { key: &'a str },
    Push { queue: &'a str, payload: &'a [u8] },
    Pop { queue: &'a str },
    Stats,
    Shutdown,
}

impl Request<'_> {
    /// The payload a PUT or PUSH carries.
    pub fn payload(&self) -> Option<&[u8]> {
        match self {
            Request::Put { payload, .. } | Request::Push { payload, .. } => Some(payload),
            _ => None,
        }
    }

    /// Appends the request's wire form to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (line, payload) = match self {
            Request::Put { key, payload } => (format!("PUT {key} {}\n", payload.len()), *payload),
            Request::Get { key } => (format!("GET {key}\n"), &[][..]),
            Request::Del { key } => (format!("DEL {key}\n"), &[][..]),
            Request::Push { queue, payload } => {
                (format!("PUSH {queue} {}\n", payload.len()), *payload)
            }
            Request::Pop { queue } => (format!("POP {queue}\n"), &[][..]),
            Request::Stats => ("STATS\n".to_owned(), &[][..]),
            Request::Shutdown => ("SHUTDOWN\n".to_owned(), &[][..]),
        };
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(payload);
    }
}

/// What the start of a buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A whole request, `len` bytes long.
    Complete { request: Request<'a>, len: usize },
    /// Not a whole request yet; `needed` is its total length once the header is known.
    Incomplete { needed: Option<usize> },
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("request line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("request line is not UTF-8")]
    NotUtf8,
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    #[error("usage: {0}")]
    Usage(&'static str),
    #[error("bad payload length {0:?}")]
    BadLength(String),
    #[error("payload of {0} bytes is over the limit of {MAX_PAYLOAD}")]
    PayloadTooLarge(usize),
    #[error("name of {0} bytes is over the limit of {MAX_NAME}")]
    NameTooLong(usize),
}

/// Parses the request at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed<'_>, ProtocolError> {
    let Some(newline) = buf.iter().take(MAX_LINE).position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_LINE {
            Err(ProtocolError::LineTooLong)
        } else {
            Ok(Parsed::Incomplete { needed: None })
        };
    };
    let line = &buf[..newline];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = str::from_utf8(line).map_err(|_| ProtocolError::NotUtf8)?;
    let header = newline + 1;
    let mut words = line.split_ascii_whitespace();
    let command = words.next().unwrap_or("");
    let args: Vec<&str> = words.collect();
    let request = match (command, args.as_slice()) {
        ("PUT", &[key, len]) => {
            let len = payload_len(len)?;
            match payload(buf, header, len) {
                Some(payload) => Request::Put {
                    key: name(key)?,
                    payload,
                },
                None => return incomplete(header + len),
            }
        }
        ("PUSH", &[queue, len]) => {
            let len = payload_len(len)?;
            match payload(buf, header, len) {
                Some(payload) => Request::Push {
                    queue: name(queue)?,
                    payload,
                },
                None => return incomplete(header + len),
            }
        }
        ("GET", &[key]) => Request::Get { key: name(key)? },
        ("DEL", &[key]) => Request::Del { key: name(key)? },
        ("POP", &[queue]) => Request::Pop {
            queue: name(queue)?,
        },
        ("STATS", &[]) => Request::Stats,
        ("SHUTDOWN", &[]) => Request::Shutdown,
        ("PUT", _) => return Err(ProtocolError::Usage("PUT <key> <len>")),
        ("PUSH", _) => return Err(ProtocolError::Usage("PUSH <queue> <len>")),
        ("GET", _) => return Err(ProtocolError::Usage("GET <key>")),
        ("DEL", _) => return Err(ProtocolError::Usage("DEL <key>")),
        ("POP", _) => return Err(ProtocolError::Usage("POP <queue>")),
        ("STATS", _) => return Err(ProtocolError::Usage("STATS")),
        ("SHUTDOWN", _) => return Err(ProtocolError::Usage("SHUTDOWN")),
        (other, _) => return Err(ProtocolError::UnknownCommand(other.to_owned())),
    };
    let len = header + request.payload().map_or(0, <[u8]>::len);
    Ok(Parsed::Complete { request, len })
}

fn incomplete<'a>(needed: usize) -> Result<Parsed<'a>, ProtocolError> {
    Ok(Parsed::Incomplete {
        needed: Some(needed),
    })
}

fn payload(buf: &[u8], header: usize, len: usize) -> Option<&[u8]> {
    buf.get(header..header + len)
}

fn payload_len(word: &str) -> Result<usize, ProtocolError> {
    let len: usize = word
        .parse()
        .map_err(|_| ProtocolError::BadLength(word.to_owned()))?;
    if len > MAX_PAYLOAD {
        return Err(ProtocolError::PayloadTooLarge(len));
    }
    Ok(len)
}

fn name(word: &str) -> Result<&str, ProtocolError> {
    if word.len() > MAX_NAME {
        return Err(ProtocolError::NameTooLong(word.len()));
    }
    Ok(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (Request<'_>, usize) {
        match parse(buf) {
            Ok(Parsed::Complete { request, len }) => (request, len),
            other => panic!("{buf:?}: {other:?}"),
        }
    }

    #[test]
    fn every_request_round_trips_through_encode_and_parse() {
        let requests = [
            Request::Put {
                key: "k1",
                payload: b"hello\nworld",
            },
            Request::Get { key: "k1" },
            Request::Del { key: "k1" },
            Request::Push {
                queue: "q",
                payload: b"",
            },
            Request::Pop { queue: "q" },
            Request::Stats,
            Request::Shutdown,
        ];
        for request in requests {
            let mut wire = Vec::new();
            request.encode(&mut wire);
            wire.extend_from_slice(b"GET next\n");
            let (parsed, len) = complete(&wire);
            assert_eq!(parsed, request);
            assert_eq!(&wire[len..], b"GET next\n", "{request:?}");
        }
    }

    #[test]
    fn a_partial_request_says_how_long_it_will_be() {
        assert_eq!(parse(b"PU"), Ok(Parsed::Incomplete { needed: None }));
        assert_eq!(
            parse(b"PUT key 100\nabc"),
            Ok(Parsed::Incomplete { needed: Some(112) })
        );
        assert_eq!(complete(b"GET k\r\n"), (Request::Get { key: "k" }, 7));
    }

    #[test]
    fn bad_requests_are_errors() {
        assert_eq!(
            parse(b"FROB x\n"),
            Err(ProtocolError::UnknownCommand("FROB".into()))
        );
        assert_eq!(
            parse(b"PUT k\n"),
            Err(ProtocolError::Usage("PUT <key> <len>"))
        );
        assert_eq!(
            parse(b"PUT k -1\n"),
            Err(ProtocolError::BadLength("-1".into()))
        );
        assert_eq!(
            parse(b"PUSH q 99999999999\n"),
            Err(ProtocolError::PayloadTooLarge(99_999_999_999))
        );
        assert_eq!(parse(&[b'x'; MAX_LINE]), Err(ProtocolError::LineTooLong));
        assert_eq!(parse(b"\xff\n"), Err(ProtocolError::NotUtf8));
        let long = format!("GET {}\n", "k".repeat(MAX_NAME + 1));
        assert_eq!(
            parse(long.as_bytes()),
            Err(ProtocolError::NameTooLong(MAX_NAME + 1))
        );
        assert_eq!(
            parse(b"\n"),
            Err(ProtocolError::UnknownCommand(String::new()))
        );
    }
}
