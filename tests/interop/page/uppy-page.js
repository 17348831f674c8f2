// The page side of the Uppy interop test, bundled by build.mjs and driven by uppy-browser.mjs.
// window.uploadAndPause: upload with Uppy, pause after the first chunk, resume in the page,
//   pause again after the next chunk and leave the upload there (its URL stays in localStorage).
// window.resumeAfterReload: on a freshly loaded page, add the same file to a new Uppy and let
//   @uppy/tus find the upload in tus-js-client's browser URL storage and finish it.
import Uppy from '@uppy/core'
import Tus from '@uppy/tus'

const LAST_MODIFIED = 1700000000000

async function loadFile(fileUrl, name) {
  const response = await fetch(fileUrl)
  if (!response.ok) throw new Error(`GET ${fileUrl}: ${response.status}`)
  const blob = await response.blob()
  // A fixed lastModified keeps Uppy's file id, and so the tus fingerprint, the same after a reload.
  return new File([blob], name, { type: 'application/octet-stream', lastModified: LAST_MODIFIED })
}

function tusStorage() {
  const entries = {}
  for (let i = 0; i < localStorage.length; i++) {
    const key = localStorage.key(i)
    if (key.startsWith('tus::')) entries[key] = JSON.parse(localStorage.getItem(key))
  }
  return entries
}

function newUppy(options, tusOptions) {
  const uppy = new Uppy({ autoProceed: false })
  // No retries: a failed request must fail the test.
  uppy.use(Tus, { endpoint: options.endpoint, chunkSize: options.chunkSize, retryDelays: [], ...tusOptions })
  return uppy
}

window.uploadAndPause = async (options) => {
  const file = await loadFile(options.fileUrl, options.name)
  const pausedAt = []
  const errors = []
  let fileId
  let resolvePaused
  const paused = new Promise((resolve) => {
    resolvePaused = resolve
  })
  const uppy = newUppy(options, {
    // Awaited by tus-js-client before it sends the next chunk, so pausing here stops
    // exactly on a chunk boundary.
    onAfterResponse(req, res) {
      if (req.getMethod() !== 'PATCH' || res.getStatus() !== 204) return
      pausedAt.push(Number(res.getHeader('Upload-Offset')))
      uppy.pauseResume(fileId)
      if (pausedAt.length === 1) {
        setTimeout(() => uppy.pauseResume(fileId), 100)
      } else {
        resolvePaused()
      }
    },
  })
  uppy.on('upload-error', (_file, error) => {
    errors.push(String(error))
    resolvePaused()
  })
  fileId = uppy.addFile({ name: options.name, type: file.type, data: file })
  uppy.upload().catch((error) => errors.push(String(error)))
  await paused
  return {
    pausedAt,
    errors,
    uploadUrl: uppy.getFile(fileId).tus?.uploadUrl ?? null,
    isPaused: uppy.getFile(fileId).isPaused,
    storage: tusStorage(),
  }
}

window.resumeAfterReload = async (options) => {
  const file = await loadFile(options.fileUrl, options.name)
  const storageBefore = tusStorage()
  const errors = []
  const uppy = newUppy(options, {})
  uppy.on('upload-error', (_file, error) => errors.push(String(error)))
  uppy.addFile({ name: options.name, type: file.type, data: file })
  const result = await uppy.upload()
  return {
    storageBefore,
    errors,
    successful: result.successful.map((f) => f.response.uploadURL),
    failed: result.failed.map((f) => String(f.error)),
  }
}
