// Sends events to a running `throughline serve` with the official RudderStack Node SDK
// (@rudderstack/rudder-sdk-node) and Segment's Node SDK (@segment/analytics-node), both
// unchanged and pointed at the server, then checks the resulting profiles.
//
// Usage: node node_sdk_check.js HOST WRITE_KEY
// Prints one JSON line: {"rudder_sent": <ms>}, the real time just before the RudderStack
// events were sent. The RudderStack client runs on a device clock one hour slow: it stamps
// `originalTimestamp` and `sentAt` with that clock and leaves `timestamp` to the server, which
// must derive the real time (`originalTimestamp + receivedAt - sentAt`), not an hour ago.
'use strict';

const RudderAnalytics = require('@rudderstack/rudder-sdk-node');
const { Analytics: SegmentAnalytics } = require('@segment/analytics-node');

const [host, key] = process.argv.slice(2);

async function getRows(view) {
  const response = await fetch(`${host}/v1/views/${view}`);
  const text = await response.text();
  const rows = {};
  for (const line of text.split('\n').filter((l) => l.length > 0)) {
    const row = JSON.parse(line);
    rows[row.key] = row.row;
  }
  return rows;
}

/// Runs `f` with the global clock (`Date`, `Date.now`) `skewMs` off the real one.
async function withClockSkew(skewMs, f) {
  const RealDate = Date;
  class SkewedDate extends RealDate {
    constructor(...args) {
      if (args.length === 0) {
        super(RealDate.now() + skewMs);
      } else {
        super(...args);
      }
    }
    static now() {
      return RealDate.now() + skewMs;
    }
  }
  global.Date = SkewedDate;
  try {
    return await f();
  } finally {
    global.Date = RealDate;
  }
}

async function main() {
  // RudderStack: originalTimestamp and sentAt from a device clock an hour slow, no timestamp.
  const rudderSent = Date.now();
  await withClockSkew(-3600 * 1000, async () => {
  const rudder = new RudderAnalytics(key, {
    dataPlaneUrl: host,
    flushAt: 20,
    flushInterval: 100,
    logLevel: 'error',
  });
  rudder.identify({ userId: 'rs-user-1', anonymousId: 'rs-anon-1', traits: { email: 'RS.User@Example.com' } });
  rudder.page({ anonymousId: 'rs-anon-1', name: 'Pricing', properties: { path: '/pricing' } });
  rudder.track({
    userId: 'rs-user-1',
    event: 'Signed Up',
    properties: { source: 'node' },
  });
  rudder.track({ anonymousId: 'rs-anon-2', event: 'Product Added', properties: { price: 9.5 } });
  rudder.alias({ previousId: 'rs-anon-2', userId: 'rs-user-2' });
  await rudder.flush();
  });

  // Segment: the same calls through Segment's Node SDK.
  const segment = new SegmentAnalytics({ writeKey: key, host, maxEventsInBatch: 20, flushInterval: 100 });
  const errors = [];
  segment.on('error', (e) => errors.push(JSON.stringify(e, Object.getOwnPropertyNames(e || {})).slice(0, 400)));
  segment.identify({ userId: 'sg-user-1', anonymousId: 'sg-anon-1', traits: { email: 'SG.User@Example.com' } });
  segment.page({ anonymousId: 'sg-anon-1', name: 'Pricing', properties: { path: '/pricing' } });
  segment.track({ userId: 'sg-user-1', event: 'Signed Up', properties: { source: 'node' } });
  segment.track({ anonymousId: 'sg-anon-2', event: 'Product Added', properties: { price: 9.5 } });
  segment.alias({ previousId: 'sg-anon-2', userId: 'sg-user-2' });
  await segment.closeAndFlush({ timeout: 20000 });
  if (errors.length > 0) {
    throw new Error(`the Segment SDK reported errors: ${errors.map(String).join('; ')}`);
  }

  const deadline = Date.now() + 30000;
  for (;;) {
    const profiles = await getRows('profiles');
    const scores = await getRows('scores');
    const ok = ['rs', 'sg'].every((p) => {
      const u1 = profiles[`user_id:${p}-user-1`];
      const u2 = profiles[`user_id:${p}-user-2`];
      return u1 && u2 && scores[`user_id:${p}-user-1`] && scores[`user_id:${p}-user-1`].score === 30 &&
        scores[`user_id:${p}-user-2`] && scores[`user_id:${p}-user-2`].score === 2.5 &&
        JSON.stringify(u1.email) === JSON.stringify([`${p}.user@example.com`]) &&
        JSON.stringify(u1.anonymous_id) === JSON.stringify([`${p}-anon-1`]) &&
        JSON.stringify(u2.anonymous_id) === JSON.stringify([`${p}-anon-2`]);
    });
    if (ok) {
      console.log(JSON.stringify({ rudder_sent: rudderSent }));
      return;
    }
    if (Date.now() > deadline) {
      throw new Error(`profiles not as expected: ${JSON.stringify(profiles)} ${JSON.stringify(scores)}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e && e.stack ? e.stack : String(e));
    process.exit(1);
  },
);
