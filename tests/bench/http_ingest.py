#!/usr/bin/env python3
"""HTTP ingestion against a running `throughline serve`: sustained rate with fsync on,
acknowledge latency, ingest-to-output latency, and recovery time.

    cargo build --release
    ./target/release/throughline gen --events 200000 --profiles 10000 --seed 3 > /tmp/load.ndjson
    python3 tests/bench/http_ingest.py --input /tmp/load.ndjson --batch 100 --concurrency 8
    python3 tests/bench/http_ingest.py --input /tmp/load.ndjson --batch 10 --rate 2000   # paced

Starts its own server on a fresh data directory (--data-dir, default a temp dir), POSTs the
file's lines to /v1/batch with --concurrency keep-alive connections (optionally paced to
--rate events/s), and reports:
- ingest rate: events acknowledged per second (each ack means appended and fsynced);
- ack latency p50/p99/max per request;
- engine rate: time until the engine has processed every line (from /metrics);
- ingest-to-output p50/p99, read from the server's own histogram (bucket interpolation);
- with --restart: stops the server (SIGTERM) and times a restart until the last profile of
  the input is visible again (recovery = log read + start-up compaction + replay).
"""
import argparse, http.client, json, os, signal, subprocess, sys, tempfile, threading, time

p = argparse.ArgumentParser()
p.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "throughline"))
p.add_argument("--input", required=True)
p.add_argument("--batch", type=int, default=100)
p.add_argument("--concurrency", type=int, default=8)
p.add_argument("--rate", type=float, default=0, help="events/s in total (0: as fast as acknowledged)")
p.add_argument("--workers", type=int, default=1)
p.add_argument("--data-dir")
p.add_argument("--restart", action="store_true")
a = p.parse_args()

data_dir = a.data_dir or tempfile.mkdtemp(prefix="throughline-bench-")
port = 18000 + os.getpid() % 1000

def start():
    t0 = time.perf_counter()
    proc = subprocess.Popen([a.bin, "serve", "--data-dir", data_dir, "--listen", f"127.0.0.1:{port}",
                             "-w", str(a.workers), "--compact-check-secs", "0"],
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "listening on" in line:
            break
        sys.stderr.write("server: " + line)
    threading.Thread(target=lambda: [sys.stderr.write("server: " + l) for l in proc.stderr], daemon=True).start()
    return proc, time.perf_counter() - t0

def metrics():
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    return text

def value(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0

def histogram_quantiles(text, name, qs):
    buckets = []
    for line in text.splitlines():
        if line.startswith(name + "_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[1])))
    total = buckets[-1][1] if buckets else 0
    out = []
    for q in qs:
        rank, prev_le, prev_n = q * total, 0.0, 0.0
        for le, n in buckets:
            if n >= rank:
                if le == float("inf"):
                    out.append(prev_le)
                else:
                    frac = 0 if n == prev_n else (rank - prev_n) / (n - prev_n)
                    out.append(prev_le + frac * (le - prev_le))
                break
            prev_le, prev_n = le, n
    return out

lines = [l for l in open(a.input, "rb").read().split(b"\n") if l.strip()]
batches = [lines[i:i + a.batch] for i in range(0, len(lines), a.batch)]
proc, _ = start()
latencies, lock, next_batch = [], threading.Lock(), [0]
start_t = time.perf_counter()

def client():
    conn = http.client.HTTPConnection("127.0.0.1", port)
    while True:
        with lock:
            i = next_batch[0]
            next_batch[0] += 1
        if i >= len(batches):
            return
        if a.rate:
            due = start_t + i * a.batch / a.rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        body = b'{"batch":[' + b",".join(batches[i]) + b"]}"
        t0 = time.perf_counter()
        conn.request("POST", "/v1/batch", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        dt = time.perf_counter() - t0
        if r.status != 200:
            # an invalid line makes the whole batch a 400 only if it is not JSON at all
            pass
        with lock:
            latencies.append(dt)

threads = [threading.Thread(target=client) for _ in range(a.concurrency)]
for t in threads: t.start()
for t in threads: t.join()
acked = time.perf_counter() - start_t
while value(metrics(), "throughline_lines_total") < len(lines):
    time.sleep(0.05)
processed = time.perf_counter() - start_t
m = metrics()
latencies.sort()
pct = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3
q50, q99 = histogram_quantiles(m, "throughline_ingest_to_output_seconds", [0.5, 0.99])
print(f"events {len(lines)} in {len(batches)} requests of {a.batch}, concurrency {a.concurrency}, rate {a.rate or 'max'}")
print(f"ingest (acknowledged, fsynced): {len(lines) / acked:,.0f} events/s over {acked:.2f} s")
print(f"ack latency per request: p50 {pct(0.5):.2f} ms  p99 {pct(0.99):.2f} ms  max {latencies[-1] * 1e3:.2f} ms")
print(f"engine processed all lines after {processed:.2f} s: {len(lines) / processed:,.0f} events/s")
print(f"ingest-to-output (server histogram): p50 {q50 * 1e3:.2f} ms  p99 {q99 * 1e3:.2f} ms")
print(f"log bytes: {value(m, 'throughline_log_bytes'):,.0f}")

if a.restart:
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    t0 = time.perf_counter()
    proc, listening = start()
    while value(metrics(), "throughline_lines_total") < len(lines):
        time.sleep(0.05)
    print(f"restart: listening after {listening:.2f} s (log read, compaction, replay sent), "
          f"all {len(lines)} lines replayed after {time.perf_counter() - t0:.2f} s")
proc.send_signal(signal.SIGTERM)
proc.wait()
