/* cropdoc offline page: the service worker.
 *
 * At install it caches every file of the export (the page, the model, onnxruntime-web),
 * so after the first visit the page loads and diagnoses with no network. Requests are
 * answered from the cache first. VERSION is a hash of the exported files: a new export
 * installs a new cache and deletes the old one of the same scope, never another export's.
 */
"use strict";
const VERSION = "__VERSION__";
const FILES = __FILES__;
const PREFIX = "cropdoc-web:" + self.registration.scope + ":";
const CACHE = PREFIX + VERSION;

self.addEventListener("install", (event) => {
  event.waitUntil(
    caches.open(CACHE)
      .then((cache) => cache.addAll(FILES.map((f) => new Request(f, { cache: "reload" }))))
      .then(() => self.skipWaiting())
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches.keys()
      .then((keys) => Promise.all(
        keys.filter((k) => k.startsWith(PREFIX) && k !== CACHE).map((k) => caches.delete(k))
      ))
      .then(() => self.clients.claim())
  );
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET" || new URL(request.url).origin !== self.location.origin) return;
  event.respondWith(
    caches.open(CACHE)
      .then((cache) => cache.match(request, { ignoreSearch: true }))
      .then((hit) => hit || fetch(request))
  );
});
