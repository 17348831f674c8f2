// The @tus/server reference for bench/run.py. Usage:
//   node server.js file PORT DIR
//   node server.js s3 PORT ENDPOINT BUCKET [PART_SIZE] [PARTS_IN_FLIGHT]
// Binds 127.0.0.1 and serves tus at /files/.
'use strict'
const http = require('node:http')
const { Server } = require('@tus/server')

const [kind, port, ...rest] = process.argv.slice(2)

function makeStore() {
  if (kind === 'file') {
    const { FileStore } = require('@tus/file-store')
    return new FileStore({ directory: rest[0] })
  }
  if (kind === 's3') {
    const { S3Store } = require('@tus/s3-store')
    const [endpoint, bucket, partSize, inFlight] = rest
    return new S3Store({
      partSize: partSize ? Number(partSize) : undefined,
      maxConcurrentPartUploads: inFlight ? Number(inFlight) : undefined,
      s3ClientConfig: {
        bucket,
        endpoint,
        region: process.env.AWS_DEFAULT_REGION || 'us-east-1',
        forcePathStyle: true,
        credentials: {
          accessKeyId: process.env.AWS_ACCESS_KEY_ID || 'testing',
          secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY || 'testing',
        },
        // Plain bodies, as for our server: moto decodes aws-chunked bodies slowly.
        requestChecksumCalculation: 'WHEN_REQUIRED',
        responseChecksumValidation: 'WHEN_REQUIRED',
      },
    })
  }
  throw new Error(`unknown store ${kind}; expected file or s3`)
}

const tus = new Server({ path: '/files', datastore: makeStore() })
const server = http.createServer((req, res) => tus.handle(req, res))
server.listen(Number(port), '127.0.0.1', () => console.log(`listening on ${port}`))
process.on('SIGTERM', () => server.close(() => process.exit(0)))
