// A small static server for the demo and the browser tests (no dependencies).
//   node pkg-scripts/serve.mjs [--port 8080] [--root web] [--map /pkg/=pkg] [--map /models/=models]
// Serves 127.0.0.1 only, with Range support, correct MIME types and the cross-origin isolation
// headers (COOP/COEP) under which the package runs its threaded CPU module. Prints the URL when listening.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const root = path.resolve(opt('--root', 'web'));
const port = Number(opt('--port', process.env.PORT || 8080));
const maps = [];
args.forEach((a, i) => {
  if (a === '--map') {
    const [prefix, dir] = args[i + 1].split('=');
    maps.push([prefix, path.resolve(dir)]);
  }
});

const MIME = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8', '.wasm': 'application/wasm', '.json': 'application/json', '.png': 'image/png',
  '.jpg': 'image/jpeg', '.svg': 'image/svg+xml', '.gguf': 'application/octet-stream', '.ts': 'text/plain',
  '.txt': 'text/plain; charset=utf-8', '.webmanifest': 'application/manifest+json',
};

function resolve(urlPath) {
  let p = decodeURIComponent(urlPath.split('?')[0]);
  for (const [prefix, dir] of maps) {
    if (p.startsWith(prefix)) return safeJoin(dir, p.slice(prefix.length));
  }
  if (p.endsWith('/')) p += 'index.html';
  return safeJoin(root, p);
}

function safeJoin(dir, rel) {
  const full = path.resolve(dir, '.' + path.posix.normalize('/' + rel));
  return full.startsWith(dir) ? full : null;
}

const server = http.createServer((req, res) => {
  const file = resolve(req.url);
  const headers = {
    'Cross-Origin-Opener-Policy': 'same-origin',
    'Cross-Origin-Embedder-Policy': 'require-corp',
    'Cross-Origin-Resource-Policy': 'same-origin',
    'Accept-Ranges': 'bytes',
    'Cache-Control': 'no-cache',
  };
  let st;
  try {
    st = file && fs.statSync(file);
  } catch { st = null; }
  if (!st || !st.isFile()) {
    res.writeHead(404, { ...headers, 'Content-Type': 'text/plain' });
    res.end('not found');
    return;
  }
  headers['Content-Type'] = MIME[path.extname(file)] || 'application/octet-stream';
  headers['Last-Modified'] = st.mtime.toUTCString();
  const range = /bytes=(\d*)-(\d*)/.exec(req.headers.range || '');
  if (range) {
    let start = range[1] === '' ? st.size - Number(range[2]) : Number(range[1]);
    let end = range[1] !== '' && range[2] !== '' ? Number(range[2]) : st.size - 1;
    if (start < 0 || start >= st.size || end < start) {
      res.writeHead(416, { ...headers, 'Content-Range': `bytes */${st.size}` });
      res.end();
      return;
    }
    end = Math.min(end, st.size - 1);
    res.writeHead(206, { ...headers, 'Content-Range': `bytes ${start}-${end}/${st.size}`, 'Content-Length': end - start + 1 });
    if (req.method === 'HEAD') return res.end();
    fs.createReadStream(file, { start, end }).pipe(res);
    return;
  }
  res.writeHead(200, { ...headers, 'Content-Length': st.size });
  if (req.method === 'HEAD') return res.end();
  fs.createReadStream(file).pipe(res);
});

server.listen(port, '127.0.0.1', () => {
  const { port: p } = server.address();
  console.log(`serving ${root} on http://127.0.0.1:${p}/`);
});
