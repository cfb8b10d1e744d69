"""Sends events to a running `throughline serve` with the official Segment Python library
(segment-analytics-python, unchanged, pointed at the server with `host`) and checks the
resulting profiles. Usage: segment_sdk_check.py HOST WRITE_KEY"""
import json, sys, time, urllib.request
import segment.analytics as analytics

host, key = sys.argv[1], sys.argv[2]
analytics.write_key = key
analytics.host = host
analytics.sync_mode = True  # send each call at once, raise on errors
errors = []
analytics.on_error = lambda e, batch: errors.append(e)

analytics.identify("sdk-user-1", {"email": "SDK.User@Example.com", "plan": "pro"}, anonymous_id="sdk-anon-1")
analytics.page(anonymous_id="sdk-anon-1", name="Pricing", properties={"path": "/pricing"})
analytics.track("sdk-user-1", "Signed Up", {"source": "sdk"})
analytics.track(anonymous_id="sdk-anon-2", event="Product Added", properties={"price": 9.5})
analytics.alias("sdk-anon-2", "sdk-user-2")
analytics.flush()
if errors:
    sys.exit(f"the SDK reported errors: {errors}")

deadline = time.time() + 30
while True:
    rows = urllib.request.urlopen(f"{host}/v1/views/profiles").read().decode().splitlines()
    profiles = {json.loads(r)["key"]: json.loads(r)["row"] for r in rows}
    scores = {json.loads(r)["key"]: json.loads(r)["row"] for r in urllib.request.urlopen(f"{host}/v1/views/scores").read().decode().splitlines()}
    u1, u2 = profiles.get("user_id:sdk-user-1"), profiles.get("user_id:sdk-user-2")
    if u1 and u2 and scores.get("user_id:sdk-user-1", {}).get("score") == 30:
        assert u1["email"] == ["sdk.user@example.com"], u1
        assert u1["anonymous_id"] == ["sdk-anon-1"], u1
        assert u2["anonymous_id"] == ["sdk-anon-2"], u2
        assert scores["user_id:sdk-user-2"]["score"] == 2.5, scores
        print("segment sdk: ok", u1, u2)
        break
    if time.time() > deadline:
        sys.exit(f"profiles not as expected: {profiles} {scores}")
    time.sleep(0.1)
