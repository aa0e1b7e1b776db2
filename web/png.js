// PNG text chunks: a generated image's settings travel inside its file, as other Stable Diffusion
// front ends write them (a `parameters` text in the A1111 layout, which their "PNG info" tools
// read) plus our own `fastcomposer` JSON. Read back by `readText` (the demo's tests).

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

const latin1 = (s) => /^[\x20-\x7e\xa0-\xff\n]*$/.test(s);

// A tEXt chunk (Latin-1 text) or, for other text, an uncompressed iTXt chunk (UTF-8).
function textChunk(keyword, text) {
  const enc = new TextEncoder();
  const body = latin1(text)
    ? [...enc.encode(keyword), 0, ...Array.from(text, (ch) => ch.charCodeAt(0))]
    : [...enc.encode(keyword), 0, 0, 0, 0, 0, ...enc.encode(text)];
  const type = latin1(text) ? 'tEXt' : 'iTXt';
  const chunk = new Uint8Array(12 + body.length);
  const view = new DataView(chunk.buffer);
  view.setUint32(0, body.length);
  chunk.set(enc.encode(type), 4);
  chunk.set(body, 8);
  view.setUint32(8 + body.length, crc32(chunk.subarray(4, 8 + body.length)));
  return chunk;
}

/** `png` (a Blob) with `entries` ({ keyword: text }) as text chunks right after its header. */
export async function withText(png, entries) {
  const bytes = new Uint8Array(await png.arrayBuffer());
  const ihdrEnd = 8 + 12 + new DataView(bytes.buffer).getUint32(8); // signature, then IHDR
  const chunks = Object.entries(entries).map(([k, v]) => textChunk(k, v));
  return new Blob([bytes.subarray(0, ihdrEnd), ...chunks, bytes.subarray(ihdrEnd)], { type: 'image/png' });
}

/** The text chunks of PNG bytes: { keyword: text }. */
export function readText(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const dec = new TextDecoder();
  const out = {};
  for (let o = 8; o + 12 <= bytes.length;) {
    const len = view.getUint32(o);
    const type = dec.decode(bytes.subarray(o + 4, o + 8));
    const data = bytes.subarray(o + 8, o + 8 + len);
    const nul = data.indexOf(0);
    if (type === 'tEXt') out[dec.decode(data.subarray(0, nul))] = String.fromCharCode(...data.subarray(nul + 1));
    if (type === 'iTXt') {
      // keyword \0 compression flag, method, language \0, translated keyword \0, text
      let p = nul + 3;
      p = data.indexOf(0, p) + 1;
      p = data.indexOf(0, p) + 1;
      out[dec.decode(data.subarray(0, nul))] = dec.decode(data.subarray(p));
    }
    o += 12 + len;
  }
  return out;
}
