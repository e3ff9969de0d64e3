// Checks the share page's drive crypto (server/src/blob/share.html) against the vectors in
// crates/core/tests/vectors/drive_chunk.json, in Node (>= 18, WebCrypto):
//   node crates/core/tests/vectors/drive/check_share_page.js server/src/blob/share.html crates/core/tests/vectors/drive_chunk.json
const fs = require("fs");
const html = fs.readFileSync(process.argv[2], "utf8");
const vec = JSON.parse(fs.readFileSync(process.argv[3], "utf8"));
let body = html.split("<script>")[1].split("</script>")[0];
body = body.replace(/^\s*"use strict";\s*\(function \(\) \{/, "").replace(/run\(\)\.catch[\s\S]*$/, "");
const blobs = new Map();
global.fetch = async (url) => {
  const b = blobs.get(url.split("/").pop());
  return b ? new Response(b, { status: 200, headers: { "content-length": String(b.length) } }) : new Response("", { status: 404 });
};
const test = `
  (async () => {
    const hx = (s) => unhex(s);
    let n = 0;
    for (const v of vec.chunk) {
      const pt = hx(v.plaintext);
      if (pt.length === 0) continue; // a chunk is never empty
      const base = await crypto.subtle.importKey("raw", hx(v.secret), "HKDF", false, ["deriveKey", "deriveBits"]);
      const idBits = new Uint8Array(await crypto.subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt: new Uint8Array(0), info: INFO_ID }, base, 256));
      if (hexOf(idBits) !== v.id_key) throw new Error("id_key " + v.name);
      const idKey = await crypto.subtle.deriveKey({ name: "HKDF", hash: "SHA-256", salt: new Uint8Array(0), info: INFO_ID },
        base, { name: "HMAC", hash: "SHA-256", length: 256 }, false, ["sign"]);
      const blobId = n.toString(16).padStart(32, "0");
      blobs.set(blobId, hx(v.blob));
      const out = await fetchChunk(base, idKey, { id: hx(v.chunk_id), blobId, len: pt.length }, n);
      if (!same(out, pt)) throw new Error("plaintext " + v.name);
      // tampered: flip one byte
      const t = hx(v.blob); t[0] ^= 1; blobs.set(blobId, t);
      let refused = false;
      try { await fetchChunk(base, idKey, { id: hx(v.chunk_id), blobId, len: pt.length }, n); } catch (e) { refused = /failed verification/.test(e.message); }
      if (!refused) throw new Error("tamper not refused " + v.name);
      n++;
    }
    for (const v of vec.seal) {
      if (hexOf(hx(v.aad)) !== hexOf(LINK_AAD)) continue;
      const key = await crypto.subtle.importKey("raw", hx(v.key), "AES-GCM", false, ["decrypt"]);
      const pt = new Uint8Array(await crypto.subtle.decrypt({ name: "AES-GCM", iv: new Uint8Array(12), additionalData: LINK_AAD, tagLength: 128 }, key, hx(v.blob)));
      if (hexOf(pt) !== v.plaintext) throw new Error("seal " + v.name);
      n++;
    }
    console.log("ok", n, "vectors");
  })().catch((e) => { console.error("FAIL", e); process.exit(1); });
`;
new Function("vec", "blobs", body + test)(vec, blobs);
