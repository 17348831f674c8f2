// Runs one tus-js-client upload in Node and prints one JSON line with what happened.
// Usage: node tus-node.mjs '<json options>'; driven by test_interop_tus_js.py.
//
// Options: endpoint, file, input ("file" | "buffer" | "stream"), chunkSize, metadata,
// uploadLengthDeferred, uploadDataDuringCreation, parallelUploads, uploadUrl,
// urlStorage (a path: FileUrlStorage, which also turns on fingerprint resuming),
// resume (look for a previous upload in urlStorage and continue it),
// abortAfterChunks (abort, without terminating, once that many chunks were accepted),
// protocol ('tus-v1', 'ietf-draft-03' or 'ietf-draft-05').
import * as fs from 'node:fs'
import { PassThrough } from 'node:stream'
import * as tus from 'tus-js-client'

const options = JSON.parse(process.argv[2])

function input() {
  switch (options.input ?? 'file') {
    case 'file':
      return fs.createReadStream(options.file)
    case 'buffer':
      return fs.readFileSync(options.file)
    case 'stream':
      // A plain Readable (not an fs.ReadStream), so the client cannot know its size.
      return fs.createReadStream(options.file, { highWaterMark: 256 * 1024 }).pipe(new PassThrough())
    default:
      throw new Error(`unknown input ${options.input}`)
  }
}

function run() {
  return new Promise((resolve, reject) => {
    const result = { chunks: 0, aborted: false, previousUploads: [] }
    const settings = {
      endpoint: options.endpoint,
      metadata: options.metadata ?? {},
      // No retries: a failure must surface in the test, not be papered over.
      retryDelays: null,
      removeFingerprintOnSuccess: false,
      onError: reject,
      onSuccess: () => {
        result.url = upload.url
        resolve(result)
      },
      onChunkComplete: (_size, accepted) => {
        result.chunks += 1
        result.bytesAccepted = accepted
        if (options.abortAfterChunks && result.chunks === options.abortAfterChunks && !result.aborted) {
          result.aborted = true
          result.url = upload.url
          upload.abort(false).then(() => resolve(result), reject)
        }
      },
    }
    for (const key of ['chunkSize', 'uploadLengthDeferred', 'uploadDataDuringCreation', 'parallelUploads', 'uploadUrl', 'protocol']) {
      if (options[key] !== undefined) settings[key] = options[key]
    }
    if (options.urlStorage) {
      settings.urlStorage = new tus.FileUrlStorage(options.urlStorage)
      settings.storeFingerprintForResuming = true
    }
    const upload = new tus.Upload(input(), settings)
    if (!options.resume) {
      upload.start()
      return
    }
    upload.findPreviousUploads().then((previous) => {
      result.previousUploads = previous.map((p) => p.uploadUrl)
      if (previous.length > 0) upload.resumeFromPreviousUpload(previous[0])
      upload.start()
    }, reject)
  })
}

try {
  const result = await run()
  process.stdout.write(`${JSON.stringify(result)}\n`)
} catch (err) {
  process.stderr.write(`tus-js-client failed: ${err && err.stack ? err.stack : err}\n`)
  process.exit(1)
}
