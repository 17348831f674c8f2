// Bundles the Uppy test page (page/uppy-page.js with @uppy/core and @uppy/tus) into dist/.
import * as esbuild from 'esbuild'

await esbuild.build({
  entryPoints: [new URL('./page/uppy-page.js', import.meta.url).pathname],
  outfile: new URL('./dist/uppy-page.js', import.meta.url).pathname,
  bundle: true,
  format: 'iife',
  platform: 'browser',
  target: 'chrome120',
  logLevel: 'warning',
})
