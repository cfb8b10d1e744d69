#!/usr/bin/env python3
"""Read-to-output latency with events arriving one at a time.

Feeds `throughline run` through a pipe at a fixed rate, one event per write, each a new
profile (so each produces exactly one change line), and measures, per event, the time from
writing the line to reading its change from the engine's stdout. Prints p50/p99/max.

    cargo build --release
    python3 tests/bench/paced_latency.py --events 200 --interval-ms 20 [--state FILE] [--forget USER]

--state FILE first loads FILE (e.g. 1M generated events) so latency is measured with that
much state; the paced events come after it, with later timestamps.
"""
import argparse, json, os, subprocess, sys, threading, time, queue

p = argparse.ArgumentParser()
p.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "throughline"))
p.add_argument("--events", type=int, default=200)
p.add_argument("--interval-ms", type=float, default=20)
p.add_argument("--state", help="NDJSON file loaded before the paced events")
p.add_argument("--workers", type=int, default=1)
p.add_argument("--forget", help="after --state, time a forget of this userId until its retraction is written")
a = p.parse_args()

cmd = [a.bin, "run", "-q", "-w", str(a.workers)]
if a.state:
    cmd += ["--input", a.state, "--input", "-"]  # the engine reads the state file, then the pipe
proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
lines = queue.Queue()
WANTED = (b"paced-", b"marker", (a.forget or "\0").encode())
def reader():
    for line in proc.stdout:
        if any(w in line for w in WANTED):
            lines.put((time.perf_counter(), line))
threading.Thread(target=reader, daemon=True).start()

base = int(time.time() * 1000) - 3_600_000  # an hour ago: after any generated workload, not far-future
if a.state:
    # a marker event; wait until its change shows the state is loaded
    proc.stdin.write(json.dumps({"userId": "marker", "timestamp": base - 1}).encode() + b"\n")
    proc.stdin.flush()
    while True:
        _, line = lines.get()
        if b"user_id:marker" in line:
            break
else:
    pass

if a.forget:
    req = json.dumps({"type": "forget", "userId": a.forget, "timestamp": base}).encode() + b"\n"
    t0 = time.perf_counter()
    proc.stdin.write(req)
    proc.stdin.flush()
    while True:
        t1, line = lines.get(timeout=600)
        if b'"diff":-1' in line and f"user_id:{a.forget}".encode() in line:
            break
    # the rest of the retraction group arrives with it (one write per published time)
    print(f"forget {a.forget} with state {a.state}: first retraction after {(t1 - t0) * 1000:.1f} ms")
    a.events = 0

lat = []
for i in range(a.events):
    key = f"paced-{i}"
    ev = json.dumps({"userId": key, "timestamp": base + i}).encode() + b"\n"
    t0 = time.perf_counter()
    proc.stdin.write(ev)
    proc.stdin.flush()
    while True:
        t1, line = lines.get(timeout=60)
        if key.encode() in line:
            lat.append((t1 - t0) * 1000)
            break
    time.sleep(a.interval_ms / 1000)
proc.stdin.close()
proc.wait()
if not lat:
    sys.exit(0)
lat.sort()
q = lambda x: lat[min(len(lat) - 1, int(round(x * (len(lat) - 1))))]
print(f"events {len(lat)} interval {a.interval_ms} ms state {a.state or '-'}: "
      f"p50 {q(0.5):.2f} ms  p99 {q(0.99):.2f} ms  max {lat[-1]:.2f} ms")
