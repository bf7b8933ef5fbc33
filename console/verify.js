// In-browser verification (spec/console.md, "Verification"): what the
// console marks verified it has checked here, not taken from the server.
// BLAKE3 is written out below (WebCrypto has none); Ed25519 and SHA-256
// are WebCrypto's. Formats: spec/attestation.md (envelopes, signatures),
// spec/ledger.md (the Merkle tree, checkpoints as signed notes).
"use strict";

const PulseVerify = (() => {
  // ---- BLAKE3 (default hash, 32-byte output) ----
  const IV = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
  const PERMUTE = [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8];
  const CHUNK_START = 1, CHUNK_END = 2, PARENT = 4, ROOT = 8;
  const CHUNK = 1024, BLOCK = 64;

  function rotr(x, n) { return (x >>> n) | (x << (32 - n)); }

  function g(s, a, b, c, d, x, y) {
    s[a] = (s[a] + s[b] + x) | 0; s[d] = rotr(s[d] ^ s[a], 16);
    s[c] = (s[c] + s[d]) | 0; s[b] = rotr(s[b] ^ s[c], 12);
    s[a] = (s[a] + s[b] + y) | 0; s[d] = rotr(s[d] ^ s[a], 8);
    s[c] = (s[c] + s[d]) | 0; s[b] = rotr(s[b] ^ s[c], 7);
  }

  // The compression function: the first 8 words are the output.
  function compress(cv, m, counter, len, flags) {
    const s = [cv[0], cv[1], cv[2], cv[3], cv[4], cv[5], cv[6], cv[7],
      IV[0], IV[1], IV[2], IV[3], counter >>> 0, Math.floor(counter / 4294967296) >>> 0, len, flags];
    let w = m.slice();
    for (let r = 0; r < 7; r++) {
      g(s, 0, 4, 8, 12, w[0], w[1]); g(s, 1, 5, 9, 13, w[2], w[3]);
      g(s, 2, 6, 10, 14, w[4], w[5]); g(s, 3, 7, 11, 15, w[6], w[7]);
      g(s, 0, 5, 10, 15, w[8], w[9]); g(s, 1, 6, 11, 12, w[10], w[11]);
      g(s, 2, 7, 8, 13, w[12], w[13]); g(s, 3, 4, 9, 14, w[14], w[15]);
      if (r < 6) w = PERMUTE.map((i) => w[i]);
    }
    const out = new Array(8);
    for (let i = 0; i < 8; i++) out[i] = (s[i] ^ s[i + 8]) >>> 0;
    return out;
  }

  function words(bytes, at, len) {
    const w = new Array(16).fill(0);
    for (let i = 0; i < len; i++) w[i >> 2] |= bytes[at + i] << (8 * (i & 3));
    return w;
  }

  // A node's output before it is known whether it is the root.
  function chunkOutput(bytes, at, len, counter) {
    let cv = IV;
    const blocks = Math.max(1, Math.ceil(len / BLOCK));
    for (let b = 0; b < blocks - 1; b++) {
      cv = compress(cv, words(bytes, at + b * BLOCK, BLOCK), counter, BLOCK,
        b === 0 ? CHUNK_START : 0);
    }
    const last = len - (blocks - 1) * BLOCK;
    return { cv, block: words(bytes, at + (blocks - 1) * BLOCK, last), counter, len: last,
      flags: (blocks === 1 ? CHUNK_START : 0) | CHUNK_END };
  }

  function parentOutput(left, right) {
    return { cv: IV, block: left.concat(right), counter: 0, len: BLOCK, flags: PARENT };
  }

  function chainingValue(o) { return compress(o.cv, o.block, o.counter, o.len, o.flags); }

  function blake3(bytes) {
    const chunks = Math.max(1, Math.ceil(bytes.length / CHUNK));
    const stack = [];
    for (let c = 0; c < chunks - 1; c++) {
      let cv = chainingValue(chunkOutput(bytes, c * CHUNK, CHUNK, c));
      // Merge completed subtrees: as many as trailing zeros of c + 1.
      let done = c + 1;
      while ((done & 1) === 0) {
        cv = chainingValue(parentOutput(stack.pop(), cv));
        done >>>= 1;
      }
      stack.push(cv);
    }
    let out = chunkOutput(bytes, (chunks - 1) * CHUNK, bytes.length - (chunks - 1) * CHUNK, chunks - 1);
    while (stack.length) out = parentOutput(stack.pop(), chainingValue(out));
    const root = compress(out.cv, out.block, out.counter, out.len, out.flags | ROOT);
    const h = new Uint8Array(32);
    for (let i = 0; i < 32; i++) h[i] = (root[i >> 2] >>> (8 * (i & 3))) & 0xff;
    return h;
  }

  // ---- bytes ----
  const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  function unhex(s) {
    if (!/^([0-9a-f]{2})*$/.test(s)) throw new Error("not lower-case hex");
    const b = new Uint8Array(s.length / 2);
    for (let i = 0; i < b.length; i++) b[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
    return b;
  }
  function unbase64(s) {
    const bin = atob(s);
    return Uint8Array.from(bin, (c) => c.charCodeAt(0));
  }
  function concat(...parts) {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) { out.set(p, at); at += p.length; }
    return out;
  }
  const equal = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
  const utf8 = (s) => new TextEncoder().encode(s);

  // did:key of an Ed25519 key: z + base58btc(0xed 0x01 ‖ 32 key bytes).
  const B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
  function didKey(did) {
    if (!did.startsWith("did:key:z")) throw new Error("not a did:key: " + did);
    let n = 0n;
    for (const c of did.slice(9)) {
      const v = B58.indexOf(c);
      if (v < 0) throw new Error("not base58: " + did);
      n = n * 58n + BigInt(v);
    }
    const bytes = [];
    while (n > 0n) { bytes.unshift(Number(n & 0xffn)); n >>= 8n; }
    if (bytes.length !== 34 || bytes[0] !== 0xed || bytes[1] !== 0x01) {
      throw new Error("not an Ed25519 did:key: " + did);
    }
    return new Uint8Array(bytes.slice(2));
  }

  // ---- CBOR, the subset statements use ----
  function cbor(bytes) {
    let at = 0;
    const head = () => {
      const b = bytes[at++];
      const major = b >> 5, info = b & 31;
      let n;
      if (info < 24) n = info;
      else if (info <= 27) {
        n = 0;
        for (let i = 0; i < 1 << (info - 24); i++) n = n * 256 + bytes[at++];
      } else throw new Error("unsupported CBOR length");
      return [major, n, info];
    };
    const item = () => {
      const [major, n, info] = head();
      switch (major) {
        case 0: return n;
        case 2: { const v = bytes.subarray(at, at + n); at += n; return v; }
        case 3: { const v = new TextDecoder().decode(bytes.subarray(at, at + n)); at += n; return v; }
        case 4: { const a = []; for (let i = 0; i < n; i++) a.push(item()); return a; }
        case 5: { const m = {}; for (let i = 0; i < n; i++) { const k = item(); m[k] = item(); } return m; }
        case 7: if (info === 20) return false; if (info === 21) return true; if (info === 22) return null;
      }
      throw new Error("unsupported CBOR item " + major);
    };
    const v = item();
    if (at !== bytes.length) throw new Error("bytes after the CBOR item");
    return v;
  }

  // ---- Ed25519 and SHA-256 (WebCrypto) ----
  async function ed25519(publicKey, signature, message) {
    const key = await crypto.subtle.importKey("raw", publicKey, { name: "Ed25519" }, false, ["verify"]);
    return crypto.subtle.verify({ name: "Ed25519" }, key, signature, message);
  }
  async function sha256(bytes) {
    return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  }

  // ---- the log ----
  const leafHash = (entry) => blake3(concat(Uint8Array.of(0), entry));
  const nodeHash = (l, r) => blake3(concat(Uint8Array.of(1), l, r));

  // RFC 9162 §2.1.3.2 with BLAKE3 (spec/ledger.md, "Inclusion proofs").
  function verifyInclusion(index, size, leaf, proof, root) {
    if (index >= size) return false;
    let fn = index, sn = size - 1, r = leaf;
    for (const p of proof) {
      if (sn === 0) return false;
      if (fn % 2 === 1 || fn === sn) {
        r = nodeHash(p, r);
        while (fn % 2 === 0 && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
      } else {
        r = nodeHash(r, p);
      }
      fn = Math.floor(fn / 2); sn = Math.floor(sn / 2);
    }
    return sn === 0 && equal(r, root);
  }

  // spec/ledger.md, "Verifying a consistency proof": the error, or null.
  function consistencyError(m, n, oldRoot, newRoot, proof) {
    if (m > n) return "the old size is larger than the new size";
    if (m === n) {
      if (proof.length) return "a proof between equal sizes must be empty";
      return equal(oldRoot, newRoot) ? null : "equal sizes with different roots";
    }
    if (m === 0) {
      if (proof.length) return "a proof from the empty tree must be empty";
      return equal(oldRoot, blake3(new Uint8Array(0))) ? null : "the empty tree's root is blake3 of no bytes";
    }
    const nodes = Number.isInteger(Math.log2(m)) ? [oldRoot].concat(proof) : proof.slice();
    if (!nodes.length) return "proof is empty";
    let fn = m - 1, sn = n - 1;
    while (fn % 2 === 1) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
    let fr = nodes[0], sr = nodes[0];
    for (const c of nodes.slice(1)) {
      if (sn === 0) return "proof is longer than needed";
      if (fn % 2 === 1 || fn === sn) {
        fr = nodeHash(c, fr); sr = nodeHash(c, sr);
        if (fn % 2 === 0) {
          while (fn % 2 === 0 && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
        }
      } else {
        sr = nodeHash(sr, c);
      }
      fn = Math.floor(fn / 2); sn = Math.floor(sn / 2);
    }
    if (sn !== 0) return "proof is shorter than needed";
    if (!equal(fr, oldRoot)) return "the old root does not match";
    if (!equal(sr, newRoot)) return "the new root does not match";
    return null;
  }

  // A checkpoint note signed by the log key (spec/ledger.md, "Signed
  // note"): {origin, size, root} once its signature checks, else throws.
  async function verifyCheckpoint(note, logDid) {
    const key = didKey(logDid);
    const split = note.indexOf("\n\n");
    if (split < 0) throw new Error("the note has no signature block");
    const text = note.slice(0, split + 1);
    const lines = text.split("\n");
    const origin = lines[0];
    const size = Number(lines[1]);
    if (!/^[0-9]+$/.test(lines[1] || "")) throw new Error("the note's size line is not a number");
    const root = unbase64(lines[2] || "");
    if (root.length !== 32) throw new Error("the note's root is not 32 bytes");
    const id = (await sha256(concat(utf8(origin), Uint8Array.of(0x0a, 0x01), key))).subarray(0, 4);
    for (const line of note.slice(split + 2).split("\n")) {
      if (!line.startsWith("\u2014 ")) continue;
      const [name, sig64] = line.slice(2).split(" ");
      if (name !== origin || !sig64) continue;
      const raw = unbase64(sig64);
      if (raw.length !== 68 || !equal(raw.subarray(0, 4), id)) continue;
      if (await ed25519(key, raw.subarray(4), utf8(text))) return { origin, size, root };
      throw new Error("the log key's signature on the checkpoint does not verify");
    }
    throw new Error("no signature by the log key on the checkpoint");
  }

  const CONTEXT = utf8("pulse-ledger/attestation/v1\u0000");

  // A statement's envelope: its body's fields once every signature it
  // needs checks (spec/attestation.md, "Signatures"), else throws.
  async function verifyStatement(envelope) {
    const e = cbor(envelope);
    if (!e || !(e.body instanceof Uint8Array) || !Array.isArray(e.sigs)) {
      throw new Error("not an envelope");
    }
    const body = cbor(e.body);
    const rotate = String(body.kind).endsWith(".rotate");
    const message = concat(CONTEXT, e.body);
    if (e.sigs.length !== (rotate ? 2 : 1)) throw new Error("wrong number of signatures");
    if (!(await ed25519(didKey(body.signer), e.sigs[0], message))) {
      throw new Error("the signer's signature does not verify");
    }
    if (rotate && !(await ed25519(didKey(body.new_key), e.sigs[1], message))) {
      throw new Error("the new key's signature does not verify");
    }
    return body;
  }

  // Equivocation evidence (spec/console.md): null when both statements
  // verify, are signed by the same key and claim the same subject and seq
  // with different bodies — proof that the key signed two histories —
  // else why not.
  async function equivocationError(e) {
    try {
      const a = await verifyStatement(unbase64(e.logged_envelope));
      const b = await verifyStatement(unbase64(e.rejected_envelope));
      if (a.signer !== b.signer) return "signed by different keys";
      if (a.subject !== e.subject || b.subject !== e.subject) return "not about " + e.subject;
      if (a.seq !== e.seq || b.seq !== e.seq) return "not both at seq " + e.seq;
      if (e.logged_envelope === e.rejected_envelope) return "the same statement twice";
      return null;
    } catch (err) {
      return err.message;
    }
  }

  // A chain page as the API returns it (spec/console.md): each entry
  // {index, ok, why, body} — ok only when its signatures, its link to
  // the statement before it, and its inclusion proof in the checkpoint
  // (whose own signature is checked against the log key) all check.
  async function verifyChain(page, logDid) {
    let checkpoint = null, cpError = null;
    try {
      checkpoint = await verifyCheckpoint(page.checkpoint.note, logDid);
    } catch (err) {
      cpError = err.message;
    }
    const results = [];
    let prevId = null;
    for (const entry of page.entries) {
      const envelope = unbase64(entry.envelope);
      const r = { index: entry.index, ok: false, why: "", body: null };
      try {
        r.body = await verifyStatement(envelope);
        if (r.body.seq > 0 && prevId && !equal(r.body.prev, prevId)) {
          throw new Error("its prev is not the ID of the statement before it");
        }
        if (!checkpoint) throw new Error("checkpoint: " + cpError);
        const proof = entry.inclusion_proof.map(unhex);
        if (!verifyInclusion(entry.index, checkpoint.size, leafHash(envelope), proof, checkpoint.root)) {
          throw new Error("its inclusion proof does not lead to the checkpoint's root");
        }
        r.ok = true;
      } catch (err) {
        r.why = err.message;
      }
      prevId = blake3(envelope);
      results.push(r);
    }
    return { checkpoint, checkpointError: cpError, entries: results };
  }

  // MTH of the leaf hashes (RFC 9162 §2.1.1 with BLAKE3).
  function treeRoot(leaves) {
    if (leaves.length === 0) return blake3(new Uint8Array(0));
    if (leaves.length === 1) return leaves[0];
    let k = 1;
    while (k * 2 < leaves.length) k *= 2;
    return nodeHash(treeRoot(leaves.slice(0, k)), treeRoot(leaves.slice(k)));
  }

  return { blake3, hex, unhex, unbase64, leafHash, treeRoot, equivocationError, verifyInclusion, consistencyError, verifyCheckpoint,
    verifyStatement, verifyChain };
})();
