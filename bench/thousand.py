#!/usr/bin/env python3
"""A thousand sites on one host: drives a splitter with many on-demand TLS
tenants and reports what issue #16 item 4 asks for. Run by bench/thousand.sh,
which builds the binaries and writes the configuration.

  thousand.py BIN_DIR HOST_FILE TLS_PORT TENANTS ACTIVE IDLE_STOP_S OUT_MD

Measures, in order:
  1. the splitter's start until systemd's READY=1 (NOTIFY_SOCKET);
  2. each of ACTIVE cold tenants' first TLS request (connect, handshake,
     GET, full answer), one after another: p50, p90, max;
  3. the whole host's memory with ACTIVE tenants running (PSS and RSS summed
     over the splitter, its helper and every tenant process), and one idle
     tenant process's RSS, PSS and threads;
  4. how long after its last connection each tenant was stopped, against
     idle_stop.
"""

import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time


def say(text):
    print(f"==> {text}", flush=True)


def proc_value(pid, name, field):
    """A `Field:  N kB` line of /proc/PID/NAME, in KiB (0 if gone)."""
    try:
        with open(f"/proc/{pid}/{name}") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def status(bin_dir, host_file):
    out = subprocess.run(
        [f"{bin_dir}/splitter", "ctl", "--config", host_file, "status", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def get(port, host):
    """One TLS request with SNI `host`; returns seconds to the full answer."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(
                f"GET /echo HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
            )
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
    elapsed = time.perf_counter() - started
    if not answer.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"{host}: unexpected answer {answer[:80]!r}")
    return elapsed


def keep_busy(port, host, requests):
    """`requests` requests on one keep-alive TLS connection."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            reader = tls.makefile("rb")
            for _ in range(requests):
                tls.sendall(f"GET /echo HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                length = None
                while (line := reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                reader.read(length or 0)


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    bin_dir, host_file, port, tenants, active, idle_stop, out_md = sys.argv[1:8]
    port, tenants, active, idle_stop = int(port), int(tenants), int(active), float(idle_stop)

    notify_dir = tempfile.mkdtemp()
    notify_path = os.path.join(notify_dir, "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    os.chmod(notify_dir, 0o755)
    os.chmod(notify_path, 0o777)  # the front sends READY after dropping root

    say(f"starting a splitter with {tenants} on-demand tenants")
    env = dict(os.environ, NOTIFY_SOCKET=notify_path, RUST_LOG="error")
    started = time.perf_counter()
    splitter = subprocess.Popen(
        ["taskset", "-c", "1", f"{bin_dir}/splitter", "--config", host_file], env=env
    )
    try:
        ready_s = None
        notify.settimeout(0.5)
        while ready_s is None:
            if splitter.poll() is not None:
                raise SystemExit(f"the splitter exited ({splitter.returncode}); see its error above")
            if time.perf_counter() - started > 60:
                raise SystemExit("no READY=1 within 60 s")
            try:
                message = notify.recv(4096).decode()
            except TimeoutError:
                continue
            if "READY=1" in message.split("\n"):
                ready_s = time.perf_counter() - started
        say(f"READY=1 after {ready_s * 1000:.0f} ms")
        front_rss = proc_value(splitter.pid, "status", "VmRSS")

        say(f"first TLS request to {active} cold tenants, one after another")
        cold = [get(port, f"t{i}.localhost") for i in range(active)]
        say(
            f"cold first request p50 {pct(cold, 50) * 1000:.0f} ms, "
            f"p90 {pct(cold, 90) * 1000:.0f} ms, max {max(cold) * 1000:.0f} ms"
        )
        warm = [get(port, f"t{i}.localhost") for i in range(active)]

        say(f"100 keep-alive requests to each of the {active} running tenants")
        last_activity = {}
        for i in range(active):
            keep_busy(port, f"t{i}.localhost", 100)
            last_activity[f"t{i}"] = time.monotonic()
        # Memory of the whole host: the front, its helper, every tenant process.
        front = [splitter.pid]
        helper = children(splitter.pid)
        procs = front + helper + [p for h in helper for p in children(h)]
        tenant_pids = [p for h in helper for p in children(h)]
        pss = sum(proc_value(p, "smaps_rollup", "Pss") for p in procs)
        rss = sum(proc_value(p, "smaps_rollup", "Rss") for p in procs)
        one = tenant_pids[0] if tenant_pids else None
        one_rss = proc_value(one, "smaps_rollup", "Rss") if one else 0
        one_pss = proc_value(one, "smaps_rollup", "Pss") if one else 0
        one_threads = proc_value(one, "status", "Threads") if one else 0
        one_anon = proc_value(one, "smaps_rollup", "Pss_Anon") if one else 0
        tenants_anon = sum(proc_value(p, "smaps_rollup", "Pss_Anon") for p in tenant_pids)
        say(
            f"{len(tenant_pids)} tenant processes; host PSS {pss / 1024:.0f} MiB "
            f"(RSS {rss / 1024:.0f} MiB); one tenant process: RSS {one_rss / 1024:.1f} MiB, "
            f"PSS {one_pss / 1024:.1f} MiB ({one_anon / 1024:.1f} MiB of it anonymous), "
            f"{one_threads} threads; all tenant processes' anonymous PSS {tenants_anon / 1024:.0f} MiB"
        )

        say(f"waiting for idle_stop ({idle_stop:.0f} s) to stop them")
        stopped_at = {}
        deadline = max(last_activity.values()) + idle_stop + 30
        while time.monotonic() < deadline and len(stopped_at) < active:
            for t in status(bin_dir, host_file)["tenants"]:
                if t["name"] not in stopped_at and not t["running"] and t["demand_starts"] > 0:
                    stopped_at[t["name"]] = time.monotonic() - last_activity[t["name"]]
            time.sleep(0.25)
        # Seconds after its own last connection closed, beyond idle_stop.
        late = [s - idle_stop for s in stopped_at.values()]
        running = [t["name"] for t in status(bin_dir, host_file)["tenants"] if t["running"]]
        say(
            f"{len(stopped_at)} of {active} stopped; after idle_stop + "
            f"{min(late):.1f} to {max(late):.1f} s; still running: {len(running)}"
        )
        # Stopped processes drain, then exit.
        stopped = time.monotonic()
        while time.monotonic() - stopped < 20:
            left = sum(len(children(h)) for h in children(splitter.pid))
            if left == 0:
                break
            time.sleep(0.1)
        exited_s = time.monotonic() - stopped
    finally:
        splitter.terminate()
        splitter.wait(timeout=30)

    rows = [
        ("Tenants configured (on demand)", f"{tenants}"),
        ("Splitter start to READY=1", f"{ready_s * 1000:.0f} ms (target ≤ 1 s)"),
        ("Splitter RSS at READY=1", f"{front_rss / 1024:.1f} MiB"),
        (
            f"Cold tenant, first TLS request ({active}, one after another)",
            f"p50 {pct(cold, 50) * 1000:.0f} ms, p90 {pct(cold, 90) * 1000:.0f} ms, "
            f"max {max(cold) * 1000:.0f} ms (target p50 ≤ 150 ms)",
        ),
        ("The same, once running", f"p50 {pct(warm, 50) * 1000:.1f} ms"),
        (
            f"Host memory with {active} tenants running",
            f"PSS {pss / 1024:.0f} MiB, RSS {rss / 1024:.0f} MiB (target PSS ≤ 1 GiB)",
        ),
        (
            "One idle tenant process",
            f"RSS {one_rss / 1024:.1f} MiB, PSS {one_pss / 1024:.1f} MiB "
            f"({one_anon / 1024:.1f} MiB anonymous), {one_threads} threads",
        ),
        (
            f"Stopped after idle_stop = {idle_stop:.0f} s",
            f"{len(stopped_at)} of {active}, idle_stop + {min(late):.1f} to {max(late):.1f} s; "
            f"all processes exited {exited_s:.1f} s later" if left == 0
            else f"{left} tenant processes still running 20 s later",
        ),
    ]
    with open(out_md, "w") as f:
        f.write("| Measure | Result |\n| --- | --- |\n")
        for name, value in rows:
            f.write(f"| {name} | {value} |\n")
    print(open(out_md).read())
    if ready_s > 1 or pct(cold, 50) > 0.150 or pss > 1024 * 1024 or len(stopped_at) < active:
        print("at least one target was missed (see the table)")


if __name__ == "__main__":
    main()
