//! A tiny authoritative DNS server for tests: answers SRV queries for one name
//! from a list the test can change, A queries for that name and for the SRV
//! targets with 127.0.0.1, and everything else with an empty answer. UDP only,
//! TTL 1.

use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The SRV records served: `(priority, weight, port, target)`.
pub type SrvRecords = Vec<(u16, u16, u16, String)>;

/// A running test DNS server (stops when dropped).
pub struct DnsServer {
    /// Where it listens (UDP).
    pub addr: SocketAddr,
    records: Arc<Mutex<SrvRecords>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl DnsServer {
    /// Serves `srv_name`'s SRV records, initially `records`.
    pub fn start(srv_name: &str, records: SrvRecords) -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let records = Arc::new(Mutex::new(records));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let name = srv_name.trim_end_matches('.').to_ascii_lowercase();
        let (shared, stopping) = (records.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let records = shared.lock().unwrap().clone();
                if let Some(reply) = answer(&buf[..n], &name, &records) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        DnsServer {
            addr,
            records,
            stop,
        }
    }

    /// Replaces the SRV records served from now on.
    pub fn set(&self, records: SrvRecords) {
        *self.records.lock().unwrap() = records;
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn encode_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.trim_end_matches('.').split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

/// Builds the reply to one query; `None` for what is not a query.
fn answer(query: &[u8], srv_name: &str, records: &SrvRecords) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    // The question: labels, then type and class.
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(pos..pos + len)?).to_ascii_lowercase());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*query.get(pos)?, *query.get(pos + 1)?]);
    let question = &query[12..pos + 4];
    let qname = labels.join(".");
    let mut answers: Vec<(u16, Vec<u8>)> = Vec::new();
    match qtype {
        33 if qname == srv_name => {
            for (priority, weight, port, target) in records {
                let mut rdata = Vec::new();
                rdata.extend_from_slice(&priority.to_be_bytes());
                rdata.extend_from_slice(&weight.to_be_bytes());
                rdata.extend_from_slice(&port.to_be_bytes());
                rdata.extend_from_slice(&encode_name(target));
                answers.push((33, rdata));
            }
        }
        1 if qname == srv_name
            || records
                .iter()
                .any(|(_, _, _, t)| t.trim_end_matches('.').eq_ignore_ascii_case(&qname)) =>
        {
            answers.push((1, vec![127, 0, 0, 1]));
        }
        _ => {}
    }
    let mut reply = Vec::with_capacity(512);
    reply.extend_from_slice(&query[0..2]);
    // QR, AA, RD copied, RA; NOERROR.
    reply.push(0x84 | (query[2] & 0x01));
    reply.push(0x80);
    reply.extend_from_slice(&1u16.to_be_bytes());
    reply.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    reply.extend_from_slice(&0u16.to_be_bytes());
    reply.extend_from_slice(&0u16.to_be_bytes());
    reply.extend_from_slice(question);
    for (rtype, rdata) in answers {
        reply.extend_from_slice(&[0xc0, 0x0c]);
        reply.extend_from_slice(&rtype.to_be_bytes());
        reply.extend_from_slice(&1u16.to_be_bytes());
        reply.extend_from_slice(&1u32.to_be_bytes());
        reply.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        reply.extend_from_slice(&rdata);
    }
    Some(reply)
}
