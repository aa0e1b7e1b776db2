// The browser benchmarks use the browser tests' harness (the repository root, the test server,
// a headless Debian Chromium on a fresh profile, the machine line): one copy, beside the tests'
// node_modules (`cd tests/browser && npm ci` installs playwright-core for both).
export { ROOT, serve, launch, machine } from '../../tests/browser/harness.mjs';
