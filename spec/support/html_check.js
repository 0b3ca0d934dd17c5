// spec/support/html_check.js — opens HTML report files in the real headless
// Chromium (Debian's /usr/bin/chromium, driven over the DevTools protocol by
// playwright-core) and prints, as one JSON document on stdout, what a reader
// would get from each page: its console errors and page errors, every request
// it made (all but the file itself are blocked), dialogs opened, the number
// of <script> elements, per <figure> its SVG marks and its table's cells,
// and how it prints (print media: the navigation, the table wrappers, the
// figures shown; the size and pages of the PDF Chromium prints).
//
//   node spec/support/html_check.js NODE_MODULES_DIR [--screenshot OUT.png] FILE...
//
// Exit 0 with the JSON; exit 1 with one line on stderr when the browser
// cannot be driven.
'use strict';
const path = require('path');

const args = process.argv.slice(2);
const modules = args.shift();
let screenshot = null;
if (args[0] === '--screenshot') { args.shift(); screenshot = args.shift(); }
const { chromium } = require(path.join(modules, 'playwright-core'));

async function inspect(context, file) {
  const url = 'file://' + path.resolve(file);
  const page = await context.newPage();
  const out = { file, console_errors: [], page_errors: [], requests: [], blocked: [], dialogs: [] };
  page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') out.console_errors.push(m.type() + ': ' + m.text()); });
  page.on('pageerror', (e) => out.page_errors.push(String(e)));
  page.on('dialog', (d) => { out.dialogs.push(d.message()); d.dismiss(); });
  await page.route('**/*', (route) => {
    const u = route.request().url();
    out.requests.push(u);
    if (u === url) return route.continue();
    out.blocked.push(u);
    return route.abort();
  });
  await page.goto(url, { waitUntil: 'load' });
  Object.assign(out, await page.evaluate(() => {
    const figures = [...document.querySelectorAll('figure')].map((f) => ({
      id: f.id,
      caption: (f.querySelector('figcaption') || {}).textContent || null,
      svg: f.querySelectorAll('svg').length,
      bars: f.querySelectorAll('svg rect.bar').length,
      columns: [...f.querySelectorAll('table thead th')].map((th) => th.dataset.column),
      heads: [...f.querySelectorAll('table thead th')].map((th) => th.textContent),
      rows: [...f.querySelectorAll('table tbody tr')].map((tr) =>
        [...tr.children].map((c) => ({ text: c.textContent, value: c.dataset.value === undefined ? null : c.dataset.value }))),
    }));
    return {
      title: document.title,
      scripts: document.querySelectorAll('script').length,
      nodata: (document.getElementById('nodata') || {}).textContent || null,
      sections: [...document.querySelectorAll('main section')].map((s) => s.id),
      counted: [...document.querySelectorAll('main section .counted')].map((p) => p.textContent),
      figures,
      text: document.body.innerText,
    };
  }));
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  // as printed: the @media print rules, and the PDF Chromium makes of the page
  await page.emulateMedia({ media: 'print' });
  out.print = await page.evaluate(() => {
    const nav = document.querySelector('nav');
    const scroll = document.querySelector('.scroll');
    return {
      nav: nav ? getComputedStyle(nav).display : null,
      scroll_overflow: scroll ? getComputedStyle(scroll).overflowX : null,
      figures_shown: [...document.querySelectorAll('figure')].filter((f) => f.getBoundingClientRect().height > 0).length,
    };
  });
  const pdf = await page.pdf({ format: 'A4' });
  out.print.pdf_bytes = pdf.length;
  out.print.pdf_pages = (pdf.toString('latin1').match(/\/Type\s*\/Page[^s]/g) || []).length;
  await page.close();
  return out;
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.GENAUDIT_CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  try {
    const context = await browser.newContext({ viewport: { width: 1000, height: 800 }, javaScriptEnabled: true });
    const pages = [];
    for (const f of args) pages.push(await inspect(context, f));
    process.stdout.write(JSON.stringify(pages));
  } finally {
    await browser.close();
  }
})().catch((e) => {
  process.stderr.write('html_check: ' + String(e && e.message || e).split('\n')[0] + '\n');
  process.exit(1);
});
