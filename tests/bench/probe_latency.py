"""The serving engine's read-to-output latency second by second, with what runs beside it.

Starts `BIN serve -w $WORKERS` on a fresh data directory ($DATA, default
/tmp/throughline-probe-data), posts the state file STATE over HTTP in 5,000-line posts,
then posts live events at 1,000/s (open loop, every other one an hour behind CLOCK_MS, the
state's last timestamp) for SECONDS, and every WINDOW seconds prints the window's p50, p99
and p99.9 from the `/metrics` histogram, with the machine's CPU ticks (/proc/stat).
PUT_AT=S sends `PUT /v1/spec` (the default spec with `pricing_view` at 30 points and a
signal `any_page` added, as the rebuild bench does) S seconds in; PIN="taskset -c 0" runs
the server under that prefix; WORKERS=N runs `serve -w N` (default 2). The server's stderr is echoed with a `[serve]` prefix.

    python3 tests/bench/probe_latency.py BIN STATE SECONDS WINDOW CLOCK_MS

(tests/bench/performance.md, issue 33: how the per-second tables were made.)
"""
import http.client, json, subprocess, sys, time, os, shutil, threading, re
BIN = sys.argv[1]; STATE = sys.argv[2]; SECS = int(sys.argv[3]); WIN = float(sys.argv[4]) if len(sys.argv) > 4 else 5
data = os.environ.get("DATA", "/tmp/throughline-probe-data"); shutil.rmtree(data, ignore_errors=True)
p = subprocess.Popen((os.environ["PIN"].split() if os.environ.get("PIN") else []) + [BIN, "serve", "--listen", "127.0.0.1:0", "-w", os.environ.get("WORKERS", "2"), "--data-dir", data], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
addr = None
for line in p.stderr:
    if line.startswith("throughline: listening on "):
        addr = line.split()[3]; break
def drain():
    for line in p.stderr:
        sys.stderr.write("[serve] " + line)
threading.Thread(target=drain, daemon=True).start()
host, port = addr.rsplit(":", 1)
c = http.client.HTTPConnection(host, int(port))
def call(m, path, body=None):
    c.request(m, path, body=body); r = c.getresponse(); return r.status, r.read().decode()
lines = open(STATE, "rb").read().split(b"\n")
lines = [l for l in lines if l]
t0 = time.time()
for i in range(0, len(lines), 5000):
    s, a = call("POST", "/v1/ingest", b"\n".join(lines[i:i+5000]) + b"\n"); assert s == 200, a
def metric(m, name):
    for l in m.splitlines():
        if l.startswith(name): return float(l.split()[-1])
    return 0
while True:
    _, m = call("GET", "/metrics")
    if metric(m, "throughline_lines_total ") == metric(m, "throughline_log_records "): break
    time.sleep(0.05)
print(f"loaded in {time.time()-t0:.1f}s", flush=True)
_, st = call("GET", "/v1/stats"); stats = json.loads(st)
clock = int(sys.argv[5]) if len(sys.argv) > 5 else int(time.time()*1000)
def hist():
    _, m = call("GET", "/metrics"); out = []
    for l in m.splitlines():
        if l.startswith('throughline_ingest_to_output_seconds_bucket{le="'):
            le = l.split('"')[1]; out.append((float('inf') if le == "+Inf" else float(le)*1e3, int(l.split()[-1])))
    return out, m
def q(before, after, qq):
    w = [(le, a - b) for (le, a), (_, b) in zip(after, before)]
    tot = w[-1][1]
    if tot == 0: return None, 0
    rank = qq * tot; lo = (0.0, 0)
    for le, cnt in w:
        if cnt >= rank:
            if le == float('inf'): return 999, tot
            return lo[0] + (le - lo[0]) * (rank - lo[1]) / max(1, cnt - lo[1]), tot
        lo = (le, cnt)
def cpu():
    f=open('/proc/stat').readline().split()[1:]
    return [int(x) for x in f]
c0=cpu()
import urllib.request
spec = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'dataflows', 'default.toml')).read()
NEW = spec.replace('name = "pricing_view"\npoints = 10', 'name = "pricing_view"\npoints = 30', 1).replace('[[intent.sequence]]', '[[intent.signal]]\nname = "any_page"\npoints = 1\ntype = "page"\n\n[[intent.sequence]]', 1)
assert NEW != spec
PUT_AT = float(os.environ.get('PUT_AT', '0'))
put_done = [False]; rebuild_h = [None]
start = time.time(); k = 0; h0, m0 = hist(); last = start
while time.time() - start < SECS:
    now = time.time(); upto = int((now - start) * 1000)
    if upto > k:
        body = []
        for i in range(k, upto):
            at = clock + 1 + i - (3600000 if i % 2 else 0)
            body.append('{"type":"track","event":"Product Added","userId":"live-%d","anonymousId":"live-anon-%d","messageId":"live-%d","properties":{"sku":"s-%d"},"timestamp":%d}' % (i, i, i, i, at))
        k = upto
        s, a = call("POST", "/v1/ingest", ("\n".join(body) + "\n").encode()); assert s == 200, a
    if PUT_AT and not put_done[0] and now - start >= PUT_AT:
        put_done[0] = True
        s2, a2 = call("PUT", "/v1/spec", NEW.encode()); print("PUT", s2, a2[:200], flush=True)
        rebuild_h[0] = hist()[0]
    if now - last >= WIN:
        h1, m1 = hist()
        p50, n = q(h0, h1, 0.5); p99, _ = q(h0, h1, 0.99); p999, _ = q(h0, h1, 0.999)
        _, st = call("GET", "/v1/stats"); s = json.loads(st)
        comp = s.get("compaction") or s.get("log", {}).get("compaction")
        print(f"wall={int(now*1000)} t={now-start:5.1f}s n={n} p50={p50:.2f} p99={p99:.2f} p99.9={p999:.2f} compactions={metric(m1,'throughline_compactions_total')}", flush=True)
        c1=cpu(); d=[b-a for a,b in zip(c0,c1)]; print(f'   cpu user={d[0]} sys={d[2]} idle={d[3]} iowait={d[4]} irq={d[5]+d[6]} steal={d[7]}', flush=True); c0=c1
        h0 = h1; last = now
    time.sleep(0.0002)
p.terminate(); p.wait()
