//! Child processes and their resources: the workspace's binaries, temporary
//! directories, the echo upstream, signals, waiting, and what `/proc` says.

use super::*;

/// Path of a binary built from this workspace: `$SWITCHYARD_BIN_DIR/NAME`, else
/// the target directory the running test binary was built into.
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("SWITCHYARD_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().unwrap();
            let mut dir = exe.parent().unwrap().to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir
        }
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace first (`cargo build --workspace`; ./test.sh does)",
        path.display()
    );
    path
}

/// A loopback port that was free a moment ago.
///
/// Taken below the kernel's ephemeral range (32768 and up by default), so
/// that the outgoing connections of a load generator running meanwhile cannot
/// take it as their source port before the server that is to listen there
/// binds it. Never the same port twice in one test process (a test that asks
/// twice, for a TLS and an HTTP listener, gets two), and each test process
/// starts at its own place in the range.
pub fn free_port() -> u16 {
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let start = std::process::id().wrapping_mul(7_919);
    for n in 0..COUNT {
        let port = (FIRST + start.wrapping_add(given.len() as u32 + n) % COUNT) as u16;
        if given.contains(&port) || TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        given.push(port);
        return port;
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + COUNT);
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates a fresh directory named after `tag`.
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("switchyard-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tenants")).unwrap();
        TempDir(dir)
    }

    /// Writes `text` to `name` inside the directory and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Proc {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Kills, when dropped, a process the test did not start itself (a splitter
/// started by an upgrade, say).
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        signal(self.0, libc::SIGKILL);
    }
}

/// Starts an `echo-upstream` on `addr` called `name`, and waits until it accepts.
pub fn start_upstream(addr: SocketAddr, name: &str) -> Proc {
    let child = Command::new(bin("echo-upstream"))
        .args(["--listen", &addr.to_string(), "--name", name])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let proc = Proc(child);
    wait_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok());
    proc
}

/// Polls `check` every 20 ms until it holds; panics after `limit`.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The descriptor count of `pid` once it has settled back to `baseline`, or
/// whatever it still is after 5 s (closing is asynchronous in the servers).
pub fn fd_count_settled(pid: u32, baseline: usize) -> usize {
    let mut now = fd_count(pid);
    for _ in 0..50 {
        if now == baseline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        now = fd_count(pid);
    }
    now
}

/// The descriptor count of `pid` once it has stopped changing (the same over
/// three reads 100 ms apart), or whatever it is after 5 s: a baseline taken
/// while a process still opens or closes descriptors would never settle back.
pub fn fd_count_stable(pid: u32) -> usize {
    let (mut last, mut same) = (fd_count(pid), 0);
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let now = fd_count(pid);
        if now == last {
            same += 1;
            if same >= 3 {
                break;
            }
        } else {
            (last, same) = (now, 0);
        }
    }
    last
}

/// Number of open descriptors of process `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Direct children of `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut kids = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                kids.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
    }
    kids.sort_unstable();
    kids
}

/// Sends a signal to a process.
pub fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, signal) };
}

/// Resident memory of `pid`, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU ticks (user + system, 1/100 s) process `pid` has used.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(end) = stat.rfind(')') else { return 0 };
    let fields: Vec<&str> = stat[end + 2..].split_whitespace().collect();
    fields
        .get(11)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
}

/// Serialises the tests that measure CPU, latency or memory, or generate heavy
/// load, within one test binary, so that they do not disturb each other's
/// measurements when cargo runs tests in parallel.
pub fn measuring_alone() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
