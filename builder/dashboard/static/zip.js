// A stored (uncompressed) zip of the photos dropped on the page, built in the browser: photos are
// compressed already (JPEG, PNG, WebP), and the page loads no library (no build step, no CDN).
// The service checks every archive it reads (sizes, names, bombs) as it does any user's zip.
"use strict";

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function uniqueNames(files) {
  const seen = new Set();
  return files.map((file) => {
    let name = file.name.replace(/[\\/]/g, "_") || "photo";
    for (let i = 2; seen.has(name); i++) name = name.replace(/(\.[^.]*)?$/, `-${i}$1`);
    seen.add(name);
    return name;
  });
}

// Blob of a zip holding `files` (File objects) at its top level, stored.
async function storedZip(files) {
  const encoder = new TextEncoder();
  const names = uniqueNames(files);
  const parts = [], central = [];
  let offset = 0;
  for (let i = 0; i < files.length; i++) {
    const data = new Uint8Array(await files[i].arrayBuffer());
    const name = encoder.encode(names[i]);
    const crc = crc32(data);
    const local = new DataView(new ArrayBuffer(30));
    local.setUint32(0, 0x04034b50, true);
    local.setUint16(4, 20, true);  // version needed: 2.0
    local.setUint16(6, 0x0800, true);  // names are UTF-8
    local.setUint16(8, 0, true);  // stored
    local.setUint16(12, 0x21, true);  // 1980-01-01: reproducible archives
    local.setUint32(14, crc, true);
    local.setUint32(18, data.length, true);
    local.setUint32(22, data.length, true);
    local.setUint16(26, name.length, true);
    parts.push(local.buffer, name, data);
    const entry = new DataView(new ArrayBuffer(46));
    entry.setUint32(0, 0x02014b50, true);
    entry.setUint16(4, 20, true);
    entry.setUint16(6, 20, true);
    entry.setUint16(8, 0x0800, true);
    entry.setUint16(14, 0x21, true);
    entry.setUint32(16, crc, true);
    entry.setUint32(20, data.length, true);
    entry.setUint32(24, data.length, true);
    entry.setUint16(28, name.length, true);
    entry.setUint32(42, offset, true);
    central.push(entry.buffer, name);
    offset += 30 + name.length + data.length;
  }
  const size = central.reduce((n, part) => n + part.byteLength, 0);
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true);
  end.setUint16(8, files.length, true);
  end.setUint16(10, files.length, true);
  end.setUint32(12, size, true);
  end.setUint32(16, offset, true);
  return new Blob([...parts, ...central, end.buffer], { type: "application/zip" });
}
