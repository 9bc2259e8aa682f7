//! Load from wrk, bounded in time, and what it reported.

use super::*;

/// What wrk reported.
#[derive(Debug, Clone)]
pub struct WrkReport {
    /// Completed requests.
    pub requests: u64,
    /// Responses that were not 2xx/3xx.
    pub non_2xx: u64,
    /// Connect, read, write and timeout errors together.
    pub socket_errors: u64,
    /// Read errors alone: a request sent, the connection closed before the answer.
    pub read_errors: u64,
    /// The raw output.
    pub output: String,
}

impl WrkReport {
    /// Asserts more than 100 requests, no socket error and no non-2xx
    /// response; `what` names the load in the failure message.
    pub fn assert_clean(&self, what: &str) {
        assert!(
            self.requests > 100,
            "{what}: too few requests\n{}",
            self.output
        );
        assert_eq!(
            self.socket_errors, 0,
            "{what}: socket errors\n{}",
            self.output
        );
        assert_eq!(
            self.non_2xx, 0,
            "{what}: non-2xx responses\n{}",
            self.output
        );
    }
}

/// Runs wrk (installed by test.sh) against `url` with `Host: host` for `seconds`.
pub fn wrk(url: &str, host: &str, seconds: u32, connections: u32, close: bool) -> WrkReport {
    let mut command = Command::new("wrk");
    command
        .arg("-t1")
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("-H")
        .arg(format!("Host: {host}"));
    if close {
        command.arg("-H").arg("Connection: close");
    }
    let out = command
        .arg(url)
        .output()
        .expect("wrk is installed (test.sh installs it)");
    let output = String::from_utf8_lossy(&out.stdout).into_owned();
    let requests = output
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let non_2xx = output
        .lines()
        .find(|l| l.contains("Non-2xx or 3xx responses:"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    // "Socket errors: connect 0, read 0, write 12, timeout 0"
    let errors: Vec<(String, u64)> = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map(|l| {
            l.split(',')
                .filter_map(|part| {
                    let mut words = part.split_whitespace();
                    Some((words.next()?.to_string(), words.next()?.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    WrkReport {
        requests,
        non_2xx,
        socket_errors: errors.iter().map(|(_, n)| n).sum(),
        read_errors: errors
            .iter()
            .filter(|(kind, _)| kind == "read")
            .map(|(_, n)| n)
            .sum(),
        output,
    }
}
