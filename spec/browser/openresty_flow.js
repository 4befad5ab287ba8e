// Headless Chromium clicks through the example app (examples/openresty) the way a person
// would: start page -> "Connect your digi.me" -> the sandbox's consent page -> Accept ->
// the app's callback -> the file list -> one file. Checks the text on each page and saves
// screenshots.
//
//   node spec/browser/openresty_flow.js APP_URL SCREENSHOT_DIR FILE_NAME EXPECTED_TEXT [MARKUP_NAME]
//
// FILE_NAME is a file of the library whose page must show EXPECTED_TEXT; MARKUP_NAME, a file
// whose name and content are HTML markup: its page must show them as text, and no script
// may run (no dialog opens on any page).
// Run by spec/openresty_app_spec.lua (which starts the sandbox and nginx). Uses Debian's
// Chromium (/usr/bin/chromium) through playwright-core: no browser download. Prints one
// "ok ..." line per step and "screenshot: PATH" lines; exits 1 with the reason on a failure
// (after a screenshot of the page it was on).
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');

const [appUrl, shotDir, fileName, expectedText, markupName] = process.argv.slice(2);
if (!appUrl || !shotDir || !fileName || !expectedText) {
  console.error('usage: openresty_flow.js APP_URL SCREENSHOT_DIR FILE_NAME EXPECTED_TEXT');
  process.exit(2);
}

function check(cond, what) {
  if (!cond) throw new Error('check failed: ' + what);
  console.log('ok ' + what);
}

async function shot(page, name) {
  const file = path.resolve(shotDir, name);
  await page.screenshot({ path: file, fullPage: true });
  console.log('screenshot: ' + file);
}

(async () => {
  fs.mkdirSync(shotDir, { recursive: true });
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'digime-chromium-'));
  let context;
  let page;
  try {
    // headless: true makes playwright pass --headless; a persistent context is how a fresh
    // --user-data-dir is given (playwright refuses the flag in launch()).
    context = await chromium.launchPersistentContext(profile, {
      executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
             '--disable-component-update', '--no-first-run', '--disable-sync'],
      viewport: { width: 1000, height: 900 },
      timeout: 30000,
    });
    page = context.pages()[0] || await context.newPage();
    page.setDefaultTimeout(20000);
    let dialogs = 0;
    page.on('dialog', (d) => { dialogs += 1; d.dismiss().catch(() => {}); });

    await page.goto(appUrl + '/');
    check((await page.textContent('h1')).includes('A digi.me example app'), 'start page');
    const connect = page.getByRole('link', { name: 'Connect your digi.me' });
    check(await connect.isVisible(), 'the "Connect your digi.me" link is shown');
    await shot(page, 'openresty-start.png');

    await connect.click();
    await page.waitForURL(/\/apps\/saas\/authorize\?/);
    const consentText = await page.textContent('body');
    check(consentText.includes('asks for access to your data'), 'the sandbox consent page');
    await shot(page, 'openresty-consent.png');

    await page.click('#accept');
    await page.waitForURL(appUrl + '/files');
    check((await page.textContent('h1')) === 'Your files', 'back in the app: the file list');
    check((await page.textContent('#sync-state')) === 'completed', 'the sync completed');
    const names = await page.$$eval('#files a', (as) => as.map((a) => a.textContent));
    check(names.includes(fileName), 'the list shows ' + JSON.stringify(fileName) +
          ' (' + names.length + ' files)');
    const count = Number(await page.textContent('#file-count'));
    check(count === names.length && count > 0, 'the count matches the list (' + count + ')');
    // The session cookie is HttpOnly: page scripts cannot read it.
    check(!(await page.evaluate(() => document.cookie)).includes('digime_sid'),
          'the session cookie is not visible to scripts');
    await shot(page, 'openresty-flow.png');

    await page.getByRole('link', { name: fileName, exact: true }).click();
    await page.waitForURL(/\/file\?name=/);
    check((await page.textContent('h1')) === fileName, 'the file page of ' + JSON.stringify(fileName));
    check((await page.textContent('#content')).includes(expectedText), 'the file shows its text');
    await shot(page, 'openresty-file.png');

    if (markupName) {
      await page.goto(appUrl + '/files');
      await page.getByRole('link', { name: markupName, exact: true }).click();
      await page.waitForURL(/\/file\?name=/);
      check((await page.textContent('h1')) === markupName, 'a name made of markup shows as text');
      check((await page.textContent('#content')).includes('<script>'), 'content made of markup shows as text');
      check((await page.$$('body script, body img, h1 b')).length === 0, 'no element came from the data');
    }
    check(dialogs === 0, 'no script from the data ran (no dialog opened)');

    await context.close();
    context = null;
    console.log('browser flow passed');
  } catch (e) {
    console.error('browser flow failed: ' + (e && e.stack || e));
    if (page) {
      try { console.error('at ' + page.url()); await shot(page, 'openresty-failure.png'); } catch (_) { /* ignore */ }
    }
    process.exitCode = 1;
  } finally {
    if (context) await context.close().catch(() => {});
    fs.rmSync(profile, { recursive: true, force: true });
  }
})();
