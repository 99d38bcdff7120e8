//! Replies: written by the server straight into a connection's write buffer, read back by
//! the client (see protocol.rs for which request gets which reply).

use std::io::{self, BufRead};

use crate::protocol::MAX_PAYLOAD;
use crate::stats::Stats;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Ok,
    Deleted,
    NotFound,
    Empty,
    Bye,
    Value(Vec<u8>),
    Stats(Stats),
    Err(String),
}

/// Appends a one-line reply (`OK`, `ERR why`, `STATS ...`).
pub fn write_line(out: &mut Vec<u8>, line: &str) {
    out.extend_from_slice(line.as_bytes());
    out.push(b'\n');
}

/// Appends `VALUE <len>\n<value>`, growing `out` by exactly what it needs.
pub fn write_value(out: &mut Vec<u8>, value: &[u8]) {
    let header = format!("VALUE {}\n", value.len());
    out.reserve_exact(header.len() + value.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(value);
}

/// Reads one reply; an unexpected line is an `InvalidData` error.
pub fn read(input: &mut impl BufRead) -> io::Result<Reply> {
    let mut line = String::new();
    if input.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "server closed the connection",
        ));
    }
    let line = line.trim_end_matches(['\n', '\r']);
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    Ok(match (word, rest) {
        ("OK", "") => Reply::Ok,
        ("DELETED", "") => Reply::Deleted,
        ("NOTFOUND", "") => Reply::NotFound,
        ("EMPTY", "") => Reply::Empty,
        ("BYE", "") => Reply::Bye,
        ("ERR", why) => Reply::Err(why.to_owned()),
        ("STATS", fields) => Reply::Stats(fields.parse().map_err(invalid)?),
        ("VALUE", len) => {
            let len: usize = len
                .parse()
                .ok()
                .filter(|&len| len <= MAX_PAYLOAD)
                .ok_or_else(|| invalid(format!("bad VALUE length {len:?}")))?;
            let mut value = vec![0; len];
            input.read_exact(&mut value)?;
            Reply::Value(value)
        }
        _ => return Err(invalid(format!("unexpected reply {line:?}"))),
    })
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_read_back_as_written() {
        let mut wire = Vec::new();
        write_line(&mut wire, "OK");
        write_value(&mut wire, b"a\nb");
        write_line(&mut wire, "ERR bad thing");
        write_line(&mut wire, &format!("STATS {}", Stats::default()));
        write_line(&mut wire, "NOTFOUND");
        let mut input = &wire[..];
        assert_eq!(read(&mut input).unwrap(), Reply::Ok);
        assert_eq!(read(&mut input).unwrap(), Reply::Value(b"a\nb".to_vec()));
        assert_eq!(read(&mut input).unwrap(), Reply::Err("bad thing".into()));
        assert_eq!(read(&mut input).unwrap(), Reply::Stats(Stats::default()));
        assert_eq!(read(&mut input).unwrap(), Reply::NotFound);
        let eof = read(&mut input).unwrap_err();
        assert_eq!(eof.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn garbage_is_invalid_data() {
        let err = read(&mut &b"HELLO\n"[..]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let err = read(&mut &b"VALUE x\n"[..]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
