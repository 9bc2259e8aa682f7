#!/usr/bin/env python3
"""Summarise bench/out/results.tsv: medians per setup and mode, ratios to the
single tier and to the peers, the targets of the performance issue, and an SVG
bar chart. Usage: summarize.py RESULTS.tsv OUT.md OUT.svg "run description"."""
import csv, math, platform, statistics, subprocess, sys

raw, out_md, out_svg, description = sys.argv[1:5]
rows = list(csv.DictReader(open(raw), delimiter="\t"))
SETUPS = ["direct", "single", "two-tier", "nginx-2tier", "haproxy-2tier", "nginx-single", "haproxy-single", "pingora-plain"]
MODES = ["tls-keepalive", "http-keepalive", "tls-close", "http-close"]
cells = {}
for r in rows:
    cells.setdefault((r["setup"], r["mode"]), []).append(r)

def med(setup, mode, key):
    vals = [float(r[key]) for r in cells.get((setup, mode), []) if not math.isnan(float(r[key]))]
    return statistics.median(vals) if vals else float("nan")

def errors(setup, mode):
    errs = [r["errors"] for r in cells.get((setup, mode), []) if r["errors"] != "none"]
    return "; ".join(errs) if errs else "none"

present = [s for s in SETUPS if any(k[0] == s for k in cells)]

def version(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, shell=True).stdout.strip().splitlines()[0]
    except Exception:
        return "?"

lines = [
    "# Benchmark run",
    "",
    f"Machine: {platform.machine()}, {subprocess.run('nproc', capture_output=True, text=True).stdout.strip()} cores, "
    f"{platform.platform()}; {version('wrk --version 2>&1 | head -1')}; "
    f"{version('nginx -v 2>&1')}; {version('haproxy -v 2>/dev/null')}.",
    f"Run: {description}; medians over the rounds; interleaved setup by setup within each round.",
    "Proxies pinned to CPU 1, wrk and the upstream (echo-upstream, 100-byte body) to CPU 0; one worker thread per proxy.",
    "CPU µs/req: user+system time of every proxy process of the setup (two-tier: splitter and tenant process) per request.",
    "",
]
for mode in MODES:
    lines += [f"## {mode}", "", "| setup | req/s | p50 ms | p99 ms | proxy CPU µs/req | of which splitter | peak RSS MiB | errors |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for s in present:
        if not cells.get((s, mode)):
            continue
        rss = "" if s == "direct" else f"{med(s, mode, 'rss_kib') / 1024:.1f}"
        front = f"{med(s, mode, 'front_cpu_us_per_req'):.1f}" if s == "two-tier" else ""
        lines.append(
            f"| {s} | {med(s, mode, 'req_s'):,.0f} | {med(s, mode, 'p50_ms'):.2f} | {med(s, mode, 'p99_ms'):.2f} | "
            f"{med(s, mode, 'cpu_us_per_req'):.1f} | {front} | {rss} | {errors(s, mode)} |")
    lines.append("")

def ratio(a, b, mode, key="req_s"):
    x, y = med(a, mode, key), med(b, mode, key)
    return x / y if y and not math.isnan(x) and not math.isnan(y) else float("nan")

lines += ["## Ratios", "", "| mode | two-tier ÷ single (req/s) | two-tier ÷ nginx-2tier | two-tier ÷ haproxy-2tier | CPU/req two-tier ÷ nginx | CPU/req two-tier ÷ haproxy | two-tier ÷ nginx-single | two-tier ÷ haproxy-single | CPU/req two-tier ÷ nginx-single | CPU/req two-tier ÷ haproxy-single |",
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
for mode in MODES:
    lines.append(
        f"| {mode} | {ratio('two-tier', 'single', mode):.2f} | {ratio('two-tier', 'nginx-2tier', mode):.2f} | "
        f"{ratio('two-tier', 'haproxy-2tier', mode):.2f} | {ratio('two-tier', 'nginx-2tier', mode, 'cpu_us_per_req'):.2f} | "
        f"{ratio('two-tier', 'haproxy-2tier', mode, 'cpu_us_per_req'):.2f} | {ratio('two-tier', 'nginx-single', mode):.2f} | "
        f"{ratio('two-tier', 'haproxy-single', mode):.2f} | {ratio('two-tier', 'nginx-single', mode, 'cpu_us_per_req'):.2f} | "
        f"{ratio('two-tier', 'haproxy-single', mode, 'cpu_us_per_req'):.2f} |")
lines.append("")

def lowest_cpu(mode, setup="two-tier"):
    """A setup's CPU per request ÷ the lower of nginx-2tier's and haproxy-2tier's."""
    peers = [med(p, mode, "cpu_us_per_req") for p in ("nginx-2tier", "haproxy-2tier")]
    peers = [p for p in peers if not math.isnan(p)]
    return med(setup, mode, "cpu_us_per_req") / min(peers) if peers else float("nan")

if "pingora-plain" in present:
    lines += ["## The Pingora floor", "",
              "pingora-plain is `l7proxy/examples/pingora_plain.rs`: the same Pingora (with this repository's patches), "
              "allocator and server settings as the l7proxy, proxying to the one upstream with none of Switchyard's "
              "request work (routing, host check, forwarding headers, header and upstream timeouts, metrics, access log).", "",
              "| mode | pingora-plain CPU/req | single l7proxy CPU/req | single ÷ pingora-plain (CPU/req) | pingora-plain CPU/req ÷ the lower two-tier peer |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for mode in ("tls-keepalive", "http-keepalive"):
        lines.append(
            f"| {mode} | {med('pingora-plain', mode, 'cpu_us_per_req'):.1f} | {med('single', mode, 'cpu_us_per_req'):.1f} | "
            f"{ratio('single', 'pingora-plain', mode, 'cpu_us_per_req'):.2f} | {lowest_cpu(mode, 'pingora-plain'):.2f} |")
    lines.append("")

def target(text, value, ok):
    state = "n/a (not measured in this run)" if math.isnan(value) else ("met" if ok(value) else "NOT met")
    return f"| {text} | {value:.3f} | {state} |"

lines += ["## Targets of the performance issue (from this run)", "", "| target | measured | state |", "| --- | ---: | --- |",
          target("splitter CPU per handoff ≤ 10 µs (plaintext Connection: close, splitter only)", med("two-tier", "http-close", "front_cpu_us_per_req"), lambda v: v <= 10),
          target("splitter CPU per handoff ≤ 10 µs (TLS Connection: close, splitter only)", med("two-tier", "tls-close", "front_cpu_us_per_req"), lambda v: v <= 10),
          target("keep-alive TLS: two-tier ≥ 0.97 × single", ratio("two-tier", "single", "tls-keepalive"), lambda v: v >= 0.97),
          target("keep-alive plaintext: two-tier ≥ 0.97 × single", ratio("two-tier", "single", "http-keepalive"), lambda v: v >= 0.97),
          target("Connection: close TLS: two-tier ≥ 0.90 × single", ratio("two-tier", "single", "tls-close"), lambda v: v >= 0.90),
          target("Connection: close plaintext: two-tier ≥ 0.85 × single", ratio("two-tier", "single", "http-close"), lambda v: v >= 0.85),
          *[target(f"keep-alive {name} CPU/req: two-tier ≤ 0.95 × the lower of nginx-2tier and haproxy-2tier", lowest_cpu(mode), lambda v: v <= 0.95)
            for name, mode in (("TLS", "tls-keepalive"), ("plaintext", "http-keepalive"))],
          *[target(f"keep-alive {name} req/s: two-tier ÷ {peer} ≥ 1", ratio("two-tier", peer, mode), lambda v: v >= 1)
            for name, mode in (("TLS", "tls-keepalive"), ("plaintext", "http-keepalive")) for peer in ("nginx-2tier", "haproxy-2tier")],
          target("Connection: close TLS req/s: two-tier ÷ nginx-2tier ≥ 1", ratio("two-tier", "nginx-2tier", "tls-close"), lambda v: v >= 1),
          target("Connection: close TLS CPU/req: two-tier ÷ nginx-2tier ≤ 1", ratio("two-tier", "nginx-2tier", "tls-close", "cpu_us_per_req"), lambda v: v <= 1),
          ""]
open(out_md, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))

# Chart: grouped bars, req/s per mode, one bar per setup.
colors = {"direct": "#999999", "single": "#4c78a8", "two-tier": "#f58518", "nginx-2tier": "#54a24b", "haproxy-2tier": "#b279a2",
          "nginx-single": "#a6d96a", "haproxy-single": "#e0b0d5", "pingora-plain": "#72b7b2"}
W, H, left, top, bottom = 940, 360, 70, 40, 60
plot_h = H - top - bottom
peak = max([med(s, m, "req_s") for s in present for m in MODES if cells.get((s, m))] + [1])
group_w = (W - left - 20) / len(MODES)
bar_w = group_w * 0.8 / max(1, len(present))
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{left}" y="20" font-size="14">Requests/s by setup (wrk -t1, medians; {description})</text>']
for i in range(5):
    v = peak * i / 4
    y = top + plot_h - plot_h * i / 4
    svg.append(f'<line x1="{left}" y1="{y:.1f}" x2="{W - 20}" y2="{y:.1f}" stroke="#ddd"/>')
    svg.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v / 1000:.0f}k</text>')
for gi, mode in enumerate(MODES):
    gx = left + gi * group_w + group_w * 0.1
    for si, s in enumerate(present):
        v = med(s, mode, "req_s")
        if math.isnan(v):
            continue
        h = plot_h * v / peak
        x = gx + si * bar_w
        svg.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" fill="{colors[s]}"><title>{s} {mode}: {v:,.0f} req/s</title></rect>')
    svg.append(f'<text x="{gx + group_w * 0.4:.1f}" y="{top + plot_h + 18}" text-anchor="middle">{mode}</text>')
for si, s in enumerate(present):
    x = left + si * 108
    svg.append(f'<rect x="{x}" y="{H - 22}" width="12" height="12" fill="{colors[s]}"/><text x="{x + 16}" y="{H - 12}">{s}</text>')
svg.append("</svg>")
open(out_svg, "w").write("\n".join(svg) + "\n")
