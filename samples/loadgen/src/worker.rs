//! One connection slot: its share of the requests, sent one at a time, reconnecting every
//! `churn` requests.

use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::time::Instant;

use anyhow::{Context, Result};
use memprof_sample_server::client::{Client, unexpected};
use memprof_sample_server::protocol::Request;
use memprof_sample_server::reply::Reply;

use crate::workload::{MAX_PAYLOAD, Op, Workload};

pub struct Slot {
    pub addr: SocketAddr,
    /// Requests to send (`u64::MAX` when only the deadline bounds the run).
    pub requests: u64,
    /// Reconnect after this many requests on one connection.
    pub churn: Option<NonZeroU64>,
    pub deadline: Option<Instant>,
}

/// Sends the slot's requests; returns how many were answered.
pub fn run(slot: &Slot, mut workload: Workload) -> Result<u64> {
    // Payloads are slices of one pattern; their content does not matter, only their size.
    let pattern: Vec<u8> = (0..MAX_PAYLOAD).map(|i| b'a' + (i % 26) as u8).collect();
    let mut client: Option<Client> = None;
    let mut done = 0;
    while done < slot.requests {
        if slot
            .deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            break;
        }
        if slot
            .churn
            .is_some_and(|churn| done.is_multiple_of(churn.get()))
        {
            client = None;
        }
        let client = match &mut client {
            Some(client) => client,
            None => client.insert(
                Client::connect(slot.addr)
                    .with_context(|| format!("cannot connect to {}", slot.addr))?,
            ),
        };
        let op = workload.next_op();
        send(client, op, &pattern).with_context(|| format!("request {done} ({op:?})"))?;
        done += 1;
    }
    Ok(done)
}

fn send(client: &mut Client, op: Op, pattern: &[u8]) -> std::io::Result<()> {
    let (key, queue);
    let (request, command) = match op {
        Op::Put { key: k, size } => {
            key = format!("key{k}");
            let payload = &pattern[..size];
            (Request::Put { key: &key, payload }, "PUT")
        }
        Op::Get { key: k } => {
            key = format!("key{k}");
            (Request::Get { key: &key }, "GET")
        }
        Op::Del { key: k } => {
            key = format!("key{k}");
            (Request::Del { key: &key }, "DEL")
        }
        Op::Push { queue: q, size } => {
            queue = format!("queue{q}");
            let payload = &pattern[..size];
            (
                Request::Push {
                    queue: &queue,
                    payload,
                },
                "PUSH",
            )
        }
        Op::Pop { queue: q } => {
            queue = format!("queue{q}");
            (Request::Pop { queue: &queue }, "POP")
        }
    };
    let reply = client.request(&request)?;
    let expected = match request {
        Request::Put { .. } | Request::Push { .. } => matches!(reply, Reply::Ok),
        Request::Get { .. } => matches!(reply, Reply::Value(_) | Reply::NotFound),
        Request::Del { .. } => matches!(reply, Reply::Deleted | Reply::NotFound),
        Request::Pop { .. } => matches!(reply, Reply::Value(_) | Reply::Empty),
        Request::Stats | Request::Shutdown => unreachable!("the workload sends neither"),
    };
    if expected {
        Ok(())
    } else {
        Err(unexpected(command, reply))
    }
}
