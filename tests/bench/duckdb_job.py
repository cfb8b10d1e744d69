#!/usr/bin/env python3
"""The DuckDB peer of the harness (issue 31): the whole Throughline job for the default
spec (`dataflows/default.toml`) as one SQL batch over an NDJSON export, as a data engineer
would otherwise run it on the file.

    python3 tests/bench/duckdb_job.py EVENTS.ndjson [--compare OURS.snapshot.ndjson]

It computes the final snapshot of SPEC.md's four views: admission (dead letters, the dedup
window against the running clock, the future bound), identifiers (paths, trim, lowercase,
blocklist), identity (hubs, then the least label by a recursive CTE over the kept edges:
anchors by distance, anonymous components by their least identifier), decayed signal
weights at the final clock, sequence bonuses, consent (latest record, a tie denied), the
`plan` trait (greatest by timestamp, messageId, arrival; `traits` over `context.traits`)
and the views' rows. It prints one line, `duckdb: N events in S s (E events/s), R rows`,
and with `--compare` a second one, `compare: ...`, naming how many rows differ from ours.

What it leaves out, because a batch has no order of its own to apply them in: `forget`
requests (they move the clock and are otherwise ignored, so a file with erasures
differs), and duplicates are judged against the previous delivery of the same id (a
batch cannot know which earlier delivery was accepted). The harness's workloads have
neither a forget nor a messageId resent after its window.

Install: `python3 -m venv V && V/bin/pip install duckdb`, then point the harness at it with
`THROUGHLINE_DUCKDB_PYTHON=V/bin/python` (see `tests/bench/performance.md`).
"""

import json
import sys
import time

import duckdb

HALF_LIFE = 7 * 86_400_000
MAX_AGE = 28 * 86_400_000
MAX_FUTURE = 86_400_000
DEDUP_WINDOW = 7 * 86_400_000
WITHIN = 30 * 60_000
MAX_LINKS = 50
BLOCKLIST = ["null", "undefined", "none", "nil", "0", "-1", "anonymous", "unknown",
             "test@test.com", "test@example.com"]
TYPES = ["user_id", "email", "device_id", "anonymous_id"]
# Rust's `str::trim`: the White_Space characters
SPACE = "".join(chr(c) for c in [9, 10, 11, 12, 13, 32, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
                                 0x2028, 0x2029, 0x202F, 0x205F, 0x3000])


def sql_str(s):
    return "'" + s.replace("'", "''") + "'"


def ident(path, lowercase):
    """One identifier path: a string or an integer, normalised (SPEC section 2)."""
    raw = (f"CASE WHEN json_type(j, '{path}') IN ('VARCHAR', 'BIGINT', 'UBIGINT') "
           f"THEN trim(json_extract_string(j, '{path}'), {sql_str(SPACE)}) END")
    return f"lower({raw})" if lowercase else raw


def stamp(path):
    """A timestamp field in epoch ms: an integer, or an RFC 3339 string; NULL when bad."""
    return (f"CASE WHEN json_type(j, '{path}') IN ('BIGINT', 'UBIGINT') "
            f"THEN try_cast(json_extract(j, '{path}') AS BIGINT) "
            f"WHEN json_type(j, '{path}') = 'VARCHAR' "
            f"THEN epoch_ms(try_cast(json_extract_string(j, '{path}') AS TIMESTAMPTZ)) END")


JOB = f"""
CREATE TABLE raw AS
SELECT row_number() OVER () AS seq, json AS j
FROM read_ndjson_objects($file, ignore_errors = true, maximum_object_size = 1048576);

CREATE TABLE ev AS
SELECT seq,
    json_type(j, '$.type') AS type_t,
    json_extract_string(j, '$.type') AS type,
    json_type(j, '$.messageId') AS mid_t,
    json_extract_string(j, '$.messageId') AS mid,
    json_type(j, '$.timestamp') IS NOT NULL AS has_ts,
    {stamp('$.timestamp')} AS ts0,
    {stamp('$.originalTimestamp')} AS ots,
    {stamp('$.sentAt')} AS sent,
    {stamp('$.receivedAt')} AS recv,
    json_type(j, '$.originalTimestamp') IS NOT NULL AS has_ots,
    json_type(j, '$.receivedAt') IS NOT NULL AS has_recv,
    CASE WHEN json_type(j, '$.event') = 'VARCHAR' THEN json_extract_string(j, '$.event') END AS name,
    CASE WHEN json_type(j, '$.properties.path') = 'VARCHAR'
         THEN json_extract_string(j, '$.properties.path') END AS path,
    coalesce(json_type(j, '$.properties.value') NOT IN ('NULL'), false) AS has_value,
    CASE WHEN json_type(j, '$.traits') = 'OBJECT' THEN json_extract(j, '$.traits.plan') END AS plan1,
    CASE WHEN json_type(j, '$.context.traits') = 'OBJECT'
         THEN json_extract(j, '$.context.traits.plan') END AS plan0,
    CASE WHEN json_type(j, '$.context.consent.categoryPreferences') = 'OBJECT'
         THEN json_extract(j, '$.context.consent.categoryPreferences') END AS prefs,
    list_distinct(list_filter([
        {{'r': 0, 'v': {ident('$.userId', False)}}},
        {{'r': 1, 'v': {ident('$.traits.email', True)}}},
        {{'r': 1, 'v': {ident('$.context.traits.email', True)}}},
        {{'r': 1, 'v': {ident('$.properties.email', True)}}},
        {{'r': 2, 'v': {ident('$.context.device.id', False)}}},
        {{'r': 3, 'v': {ident('$.anonymousId', False)}}},
        {{'r': 3, 'v': {ident('$.previousId', False)}}}
    ], lambda x: x.v IS NOT NULL AND x.v <> '' AND lower(x.v) NOT IN ({", ".join(map(sql_str, BLOCKLIST))}))) AS ids
FROM raw;

-- SPEC section 1: the event time, and what is admitted
CREATE TABLE valid AS
SELECT *, CASE
        WHEN has_ts THEN ts0
        WHEN has_ots THEN CASE WHEN sent IS NOT NULL AND recv IS NOT NULL
                               THEN ots + (recv - sent) ELSE ots END
        WHEN has_recv THEN recv END AS ts
FROM ev
WHERE (type_t IS NULL OR type_t = 'VARCHAR') AND (mid_t IS NULL OR mid_t = 'VARCHAR')
  AND len(ids) > 0;

CREATE TABLE admitted AS
WITH timed AS (
    SELECT * FROM valid
    WHERE ts IS NOT NULL AND ts >= 0 AND ts <= $wall + {MAX_FUTURE}
), clocked AS (
    SELECT *, max(ts) OVER (ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS after
    FROM timed
), prior AS (
    SELECT *, coalesce(max(ts) OVER (ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before,
        lag(after) OVER (PARTITION BY mid ORDER BY seq) AS seen
    FROM clocked
)
SELECT * FROM prior
WHERE mid IS NULL OR seen IS NULL OR before - seen >= {DEDUP_WINDOW};

CREATE TABLE now AS SELECT max(ts) AS now FROM admitted;

-- SPEC sections 2 and 3: identifiers, edges, hubs and the least label
CREATE TABLE facts AS SELECT * FROM admitted WHERE type IS DISTINCT FROM 'forget';
CREATE TABLE occ AS SELECT seq, unnest(ids, recursive := true) FROM facts;
CREATE TABLE nodes AS
SELECT row_number() OVER () AS node, r, v FROM (SELECT DISTINCT r, v FROM occ);
CREATE TABLE occn AS SELECT o.seq, n.node, n.r, n.v FROM occ o JOIN nodes n USING (r, v);
CREATE TABLE pairs AS
SELECT DISTINCT a.node AS src, b.node AS dst FROM occn a JOIN occn b USING (seq) WHERE a.node <> b.node;
CREATE TABLE hubs AS SELECT src AS node FROM pairs GROUP BY src HAVING count(*) > {MAX_LINKS};
CREATE TABLE edges AS
SELECT src, dst FROM pairs
WHERE src NOT IN (SELECT node FROM hubs) AND dst NOT IN (SELECT node FROM hubs);

-- a label is (kind, distance, rank, value), written so that byte order is the SPEC's order
CREATE TABLE labels AS
WITH RECURSIVE lab(node, l) USING KEY (node) AS (
    SELECT node, CASE WHEN r = 0 THEN '0' ELSE '1' END || '00000000' || r::VARCHAR || v FROM nodes
    UNION
    SELECT e.dst, min(CASE WHEN lab.l[1] = '0'
                      THEN '0' || lpad((lab.l[2:9]::INTEGER + 1)::VARCHAR, 8, '0') || lab.l[10:]
                      ELSE lab.l END) AS l
    FROM lab JOIN edges e ON e.src = lab.node
    JOIN recurring.lab cur ON cur.node = e.dst
    GROUP BY e.dst
    HAVING min(CASE WHEN lab.l[1] = '0'
                    THEN '0' || lpad((lab.l[2:9]::INTEGER + 1)::VARCHAR, 8, '0') || lab.l[10:]
                    ELSE lab.l END) < min(cur.l)
)
SELECT node, (['user_id', 'email', 'device_id', 'anonymous_id'])[l[10]::INTEGER + 1] || ':' || l[11:] AS profile
FROM lab;

CREATE TABLE member AS SELECT l.profile, n.r, n.v FROM nodes n JOIN labels l USING (node);
CREATE TABLE owner AS
SELECT seq, arg_min(node, (r, v)) AS node FROM occn GROUP BY seq;
CREATE TABLE owned AS
SELECT f.*, l.profile FROM facts f JOIN owner o USING (seq) JOIN labels l USING (node);

-- SPEC section 4: signals and sequence bonuses, weighed at the final clock
CREATE TABLE signal AS
SELECT profile, seq, ts, name, milli FROM (
    SELECT profile, seq, ts, 'pricing_view' AS name, 10000 AS milli FROM owned
        WHERE type = 'page' AND starts_with(path, '/pricing')
    UNION ALL SELECT profile, seq, ts, 'support_chat', 5000 FROM owned
        WHERE type = 'track' AND name = 'Support Chat Started'
    UNION ALL SELECT profile, seq, ts, 'signup', 20000 FROM owned
        WHERE type = 'track' AND name = 'Signed Up'
    UNION ALL SELECT profile, seq, ts, 'cart_add', 2500 FROM owned
        WHERE type = 'track' AND name = 'Product Added'
    UNION ALL SELECT profile, seq, ts, 'checkout_start', 15000 FROM owned
        WHERE type = 'track' AND name = 'Checkout Started' AND has_value
);
CREATE TABLE weighed AS
WITH bonus AS (
    SELECT b.profile, b.seq, b.ts, 'pricing_then_support' AS name, 25000 AS milli
    FROM signal b WHERE b.name = 'support_chat' AND EXISTS (
        SELECT 1 FROM signal a WHERE a.name = 'pricing_view' AND a.profile = b.profile
          AND a.ts BETWEEN b.ts - {WITHIN} AND b.ts)
)
SELECT profile, name,
    CASE WHEN now - ts >= 0 AND now - ts < {MAX_AGE}
         THEN milli // (1::BIGINT << ((now - ts) // {HALF_LIFE})::INTEGER) ELSE 0 END AS weight
FROM (SELECT * FROM signal UNION ALL SELECT * FROM bonus), now;
CREATE TABLE score AS
SELECT profile, sum(weight) AS milli,
    list_sort(list_distinct(list(name) FILTER (WHERE weight <> 0))) AS signals
FROM weighed GROUP BY profile;

-- SPEC section 5: consent (the latest record; a tie, denied) and the plan trait
CREATE TABLE consent AS
WITH records AS (
    SELECT profile, ts, lower(k) AS purpose, json_extract(prefs, '$."' || k || '"') AS granted
    FROM (SELECT profile, ts, prefs, unnest(json_keys(prefs)) AS k FROM owned WHERE prefs IS NOT NULL)
), latest AS (
    SELECT profile, purpose, ts, granted::BOOLEAN AS granted,
        max(ts) OVER (PARTITION BY profile, purpose) AS last
    FROM records
    WHERE purpose IN ('analytics', 'personalization', 'marketing') AND json_type(granted) = 'BOOLEAN'
)
SELECT profile, purpose, bool_and(granted) AS granted FROM latest WHERE ts = last GROUP BY profile, purpose;
CREATE TABLE plan AS
SELECT profile, arg_max(value, (ts, coalesce(mid, ''), seq, src)) AS value FROM (
    SELECT profile, ts, mid, seq, 1 AS src, plan1 AS value FROM owned WHERE type = 'identify' AND plan1 IS NOT NULL
    UNION ALL SELECT profile, ts, mid, seq, 0, plan0 FROM owned WHERE plan0 IS NOT NULL
) GROUP BY profile;

-- SPEC sections 5 and 7: the views
CREATE TABLE profile AS
SELECT m.profile,
    list_sort(list(v) FILTER (WHERE r = 0)) AS user_id,
    list_sort(list(v) FILTER (WHERE r = 1)) AS email,
    list_sort(list(v) FILTER (WHERE r = 2)) AS device_id,
    list_sort(list(v) FILTER (WHERE r = 3)) AS anonymous_id
FROM member m GROUP BY m.profile;
CREATE TABLE state AS
SELECT p.*, coalesce(s.milli, 0) AS milli, coalesce(s.signals, []) AS signals,
    coalesce((SELECT granted FROM consent c WHERE c.profile = p.profile AND purpose = 'analytics'), true) AS analytics,
    coalesce((SELECT granted FROM consent c WHERE c.profile = p.profile AND purpose = 'personalization'), false) AS personalization,
    coalesce((SELECT granted FROM consent c WHERE c.profile = p.profile AND purpose = 'marketing'), false) AS marketing,
    t.value AS plan
FROM profile p LEFT JOIN score s USING (profile) LEFT JOIN plan t USING (profile);
"""


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit("usage: duckdb_job.py EVENTS.ndjson [--compare OURS.snapshot.ndjson]")
    file, ours = args[0], None
    if "--compare" in args:
        ours = args[args.index("--compare") + 1]
    db = duckdb.connect()
    started = time.time()
    wall = int(started * 1000)
    for statement in JOB.split(";\n"):
        if statement.strip():
            db.execute(statement, {k: v for k, v in (("file", file), ("wall", wall))
                                   if f"${k}" in statement})
    rows = db.execute("SELECT * FROM state").fetchall()
    elapsed = time.time() - started
    lines = sum(1 for _ in open(file, "rb"))
    snapshot = {}
    for (profile, user_id, email, device_id, anonymous_id, milli, signals, analytics,
         personalization, marketing, plan) in rows:
        score = milli / 1000
        score = int(score) if score == int(score) else score
        snapshot[("profiles", profile)] = {
            "user_id": user_id or [], "email": email or [],
            "device_id": device_id or [], "anonymous_id": anonymous_id or []}
        if analytics:
            snapshot[("scores", profile)] = {"score": score, "signals": signals}
        if marketing and milli >= 20_000:
            snapshot[("marketing_audience", profile)] = {"email": email or [], "score": score}
        plan = None if plan is None else json.loads(plan)
        if personalization and plan is not None:
            snapshot[("personalization", profile)] = {"traits.plan": plan, "signals": signals}
    print(f"duckdb: {lines} events in {elapsed:.2f} s ({lines / elapsed:.0f} events/s), "
          f"{len(snapshot)} rows")
    if ours:
        theirs = {}
        with open(ours) as f:
            for line in f:
                row = json.loads(line)
                theirs[(row["view"], row["key"])] = row["row"]
        missing = sum(1 for k in theirs if k not in snapshot)
        extra = sum(1 for k in snapshot if k not in theirs)
        differ = sum(1 for k, v in snapshot.items() if k in theirs and theirs[k] != v)
        example = next((f" e.g. {k}: ours {theirs.get(k)} duckdb {snapshot.get(k)}"
                        for k in list(theirs) + list(snapshot)
                        if theirs.get(k) != snapshot.get(k)), "")
        print(f"compare: {len(theirs)} rows ours, {len(snapshot)} duckdb, {missing} only ours, "
              f"{extra} only duckdb, {differ} differ{example}")


if __name__ == "__main__":
    main()
