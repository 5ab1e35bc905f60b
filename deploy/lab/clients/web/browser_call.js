#!/usr/bin/env node
// Headless Chromium (Debian's, through playwright-core) with call.html: registers a user over WSS
// through access-edge, then calls another user or answers a call, with Chromium's fake camera
// and microphone and relay-only ICE; prints one line per step and the call's getStats() counters.
//
//   node browser_call.js '{"wss": "wss://edge.example.com:8443", "user": "alice",
//     "password": "...", "domain": "example.com", "iceServers": [{"urls": [...],
//     "username": "...", "credential": "..."}], "call": "bob", "seconds": 8}'
//
// Without "call" it answers the first call and waits (10 s at most) for the caller to hang up.
// Lines: REGISTERED, CONFIRMED, STATS <json> (every second, "seconds" long), CONSOLE call ended:
// <who> <why>, END. Set CHROMIUM to another browser binary.
const path = require('path');
const {chromium} = require('playwright-core');

async function main() {
  const o = JSON.parse(process.argv[2]);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream', '--no-sandbox',
           // The lab's certificates come from its own CA and name no lab address.
           '--ignore-certificate-errors'],
  });
  try {
    const page = await browser.newPage();
    page.on('console', (m) => {
      if (m.type() === 'error' || m.text().startsWith('call ')) console.log('CONSOLE', m.text());
    });
    await page.goto('file://' + path.join(__dirname, 'call.html'));
    await page.addScriptTag({path: o.jssip || path.join(process.cwd(), 'jssip.js')});
    await page.evaluate((a) => start(a), {wss: o.wss, user: o.user, password: o.password, domain: o.domain,
                                          iceServers: o.iceServers, policy: o.policy || 'relay'});
    console.log('REGISTERED');
    if (o.call) {
      await page.evaluate((t) => call(t), `sip:${o.call}@${o.domain}`);
    } else {
      await page.waitForFunction(() => confirmed(), null, {timeout: (o.timeout || 60) * 1000, polling: 100});
    }
    console.log('CONFIRMED');
    for (let i = 0; i < (o.seconds || 8); i++) {
      await page.waitForTimeout(1000);
      console.log('STATS ' + JSON.stringify(await page.evaluate(() => stats())));
    }
    if (o.call) {
      await page.evaluate(() => hangup());
    } else {  // the caller hangs up: wait for its BYE (the page logs "call ended: remote ...")
      await page.waitForFunction(() => !confirmed(), null, {timeout: 10000, polling: 100}).catch(() => {});
    }
    await page.waitForTimeout(500);
    console.log('END');
  } finally {
    await browser.close();
  }
}

main().catch((e) => { console.log('ERROR ' + e.message); process.exit(1); });
