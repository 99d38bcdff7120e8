//! A blocking client: one request, then its reply (used by the tests and the load generator).

use std::io::{self, BufReader, Write};
use std::net::{SocketAddr, TcpStream};

use crate::protocol::Request;
use crate::reply::{self, Reply};
use crate::stats::Stats;

pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// The encoded request, reused so that a request is sent in one write.
    out: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = TcpStream::connect(addr)?;
        // Request and reply are each one write; without this Nagle would hold back the next
        // request until the previous reply's ACK.
        stream.set_nodelay(true)?;
        Ok(Client {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
            out: Vec::new(),
        })
    }

    /// Sends raw bytes (for tests of malformed input) and reads one reply.
    pub fn raw(&mut self, bytes: &[u8]) -> io::Result<Reply> {
        self.writer.write_all(bytes)?;
        reply::read(&mut self.reader)
    }

    /// Sends a request and returns its reply; `ERR` comes back as `Reply::Err`.
    pub fn request(&mut self, request: &Request<'_>) -> io::Result<Reply> {
        self.out.clear();
        request.encode(&mut self.out);
        self.writer.write_all(&self.out)?;
        reply::read(&mut self.reader)
    }

    pub fn put(&mut self, key: &str, payload: &[u8]) -> io::Result<()> {
        match self.request(&Request::Put { key, payload })? {
            Reply::Ok => Ok(()),
            other => Err(unexpected("PUT", other)),
        }
    }

    pub fn get(&mut self, key: &str) -> io::Result<Option<Vec<u8>>> {
        match self.request(&Request::Get { key })? {
            Reply::Value(value) => Ok(Some(value)),
            Reply::NotFound => Ok(None),
            other => Err(unexpected("GET", other)),
        }
    }

    /// Whether the key was there.
    pub fn del(&mut self, key: &str) -> io::Result<bool> {
        match self.request(&Request::Del { key })? {
            Reply::Deleted => Ok(true),
            Reply::NotFound => Ok(false),
            other => Err(unexpected("DEL", other)),
        }
    }

    pub fn push(&mut self, queue: &str, payload: &[u8]) -> io::Result<()> {
        match self.request(&Request::Push { queue, payload })? {
            Reply::Ok => Ok(()),
            other => Err(unexpected("PUSH", other)),
        }
    }

    pub fn pop(&mut self, queue: &str) -> io::Result<Option<Vec<u8>>> {
        match self.request(&Request::Pop { queue })? {
            Reply::Value(value) => Ok(Some(value)),
            Reply::Empty => Ok(None),
            other => Err(unexpected("POP", other)),
        }
    }

    pub fn stats(&mut self) -> io::Result<Stats> {
        match self.request(&Request::Stats)? {
            Reply::Stats(stats) => Ok(stats),
            other => Err(unexpected("STATS", other)),
        }
    }

    /// Asks the server to exit; it answers BYE first.
    pub fn shutdown(&mut self) -> io::Result<()> {
        match self.request(&Request::Shutdown)? {
            Reply::Bye => Ok(()),
            other => Err(unexpected("SHUTDOWN", other)),
        }
    }
}

/// The error for a reply that does not answer `command`.
pub fn unexpected(command: &str, reply: Reply) -> io::Error {
    let why = match reply {
        Reply::Err(why) => format!("{command}: server error: {why}"),
        other => format!("{command}: unexpected reply {other:?}"),
    };
    io::Error::other(why)
}
