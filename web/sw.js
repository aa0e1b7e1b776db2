// Keeps the page's own files for offline use (the model is cached by the package itself).
// Network first, cache as the fallback: a reload always gets fresh files when the server is up.
const CACHE = 'fastcomposer-app-v1';
const SHELL = ['./', 'index.html', 'main.js', 'png.js', 'style.css', 'pkg/index.js', 'pkg/protocol.js', 'pkg/device.js', 'pkg/worker.js', 'pkg/fastcomposer.js', 'pkg/fastcomposer_bg.wasm'];

self.addEventListener('install', (e) => {
  e.waitUntil(caches.open(CACHE).then((c) => c.addAll(SHELL)).catch(() => {}).then(() => self.skipWaiting()));
});
self.addEventListener('activate', (e) => e.waitUntil(self.clients.claim()));
self.addEventListener('fetch', (e) => {
  const url = new URL(e.request.url);
  if (e.request.method !== 'GET' || url.origin !== self.location.origin || url.pathname.endsWith('.gguf')) return;
  e.respondWith(
    fetch(e.request)
      .then((r) => {
        if (r.ok) { const copy = r.clone(); caches.open(CACHE).then((c) => c.put(e.request, copy)).catch(() => {}); }
        return r;
      })
      .catch(() => caches.match(e.request, { ignoreSearch: true }).then((r) => r || Response.error())),
  );
});
