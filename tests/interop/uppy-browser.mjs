// Drives the Uppy page in headless Chromium (Debian's /usr/bin/chromium, never a
// downloaded browser) and prints one JSON line: {first, second}.
// Usage: node uppy-browser.mjs '<json: pageUrl, endpoint, fileUrl, name, chunkSize, userDataDir>'
import { chromium } from 'playwright-core'

const options = JSON.parse(process.argv[2])
const args = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
]

const context = await chromium.launchPersistentContext(options.userDataDir, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  args,
})
try {
  const page = context.pages()[0] ?? (await context.newPage())
  page.on('console', (message) => process.stderr.write(`[page ${message.type()}] ${message.text()}\n`))
  page.on('pageerror', (error) => process.stderr.write(`[page error] ${error.stack ?? error}\n`))
  page.setDefaultTimeout(60_000)

  await page.goto(options.pageUrl)
  const first = await page.evaluate((o) => window.uploadAndPause(o), options)
  // A reload drops Uppy and tus-js-client from memory; only localStorage remembers the upload.
  await page.reload()
  const second = await page.evaluate((o) => window.resumeAfterReload(o), options)
  process.stdout.write(`${JSON.stringify({ first, second })}\n`)
} finally {
  await context.close()
}
