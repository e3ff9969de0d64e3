//! Attachment format: test vectors, round trips and every tampering case.
#![allow(clippy::unwrap_used, missing_docs)]

use cove_core::attachment::{
    AttachmentError, AttachmentPointer, ChunkCipher, DEFAULT_CHUNK_SIZE, Decryptor, Encryptor,
    Expected, FileKey, HEADER_LEN, Header, MIN_CHUNK_SIZE, Sealed, ShareLink, TAG_LEN,
    ciphertext_len,
};
use cove_wire::BlobId;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

const CS: u32 = MIN_CHUNK_SIZE;

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

fn encrypt(key: &FileKey, prefix: [u8; 7], cs: u32, pt: &[u8], step: usize) -> (Vec<u8>, Sealed) {
    let mut enc = Encryptor::with_nonce_prefix(key, prefix, cs).unwrap();
    let mut out = Vec::new();
    for piece in pt.chunks(step.max(1)) {
        enc.push(piece, &mut out).unwrap();
    }
    let sealed = enc.finish(&mut out).unwrap();
    (out, sealed)
}

/// Whole chunks sealed in place, as the shipped upload (`cove::transfer`) feeds the
/// encryptor.
fn encrypt_chunks(key: &FileKey, prefix: [u8; 7], cs: u32, pt: &[u8]) -> (Vec<u8>, Sealed) {
    let mut enc = Encryptor::with_nonce_prefix(key, prefix, cs).unwrap();
    let mut out = enc.header().encode().to_vec();
    let chunks: Vec<&[u8]> = if pt.is_empty() {
        vec![&[]]
    } else {
        pt.chunks(cs as usize).collect()
    };
    for (i, chunk) in chunks.iter().enumerate() {
        let mut buf = chunk.to_vec();
        enc.seal_chunk(&mut buf, i + 1 == chunks.len()).unwrap();
        out.extend_from_slice(&buf);
    }
    let sealed = enc.finish(&mut out).unwrap();
    (out, sealed)
}

fn decrypt(
    key: &FileKey,
    expected: Expected,
    blob: &[u8],
    step: usize,
) -> Result<Vec<u8>, (AttachmentError, Vec<u8>)> {
    let mut dec = Decryptor::new(key, expected);
    let mut out = Vec::new();
    for piece in blob.chunks(step.max(1)) {
        if let Err(e) = dec.push(piece, &mut out) {
            return Err((e, out));
        }
    }
    match dec.finish(&mut out) {
        Ok(_) => Ok(out),
        Err(e) => Err((e, out)),
    }
}

fn fixed_key() -> FileKey {
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = i as u8;
    }
    FileKey::from_bytes(k)
}

// ---------------------------------------------------------------------------------------
// Test vectors (generated independently by tests/vectors/attachment/generate.py).

struct Vector {
    name: String,
    key: Vec<u8>,
    prefix: Vec<u8>,
    chunk_size: u32,
    plaintext_len: usize,
    ciphertext_len: usize,
    ciphertext: Option<Vec<u8>>,
    digest: Vec<u8>,
    tags: Vec<Vec<u8>>,
}

fn vectors() -> Vec<Vector> {
    let text = include_str!("../vectors/attachment/vectors.txt");
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut fields = std::collections::HashMap::new();
        for line in block
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (k, v) = line.split_once(": ").unwrap();
            fields.insert(k.to_owned(), v.to_owned());
        }
        if fields.is_empty() {
            continue;
        }
        out.push(Vector {
            name: fields["name"].clone(),
            key: hex::decode(&fields["key"]).unwrap(),
            prefix: hex::decode(&fields["nonce_prefix"]).unwrap(),
            chunk_size: fields["chunk_size"].parse().unwrap(),
            plaintext_len: fields["plaintext_len"].parse().unwrap(),
            ciphertext_len: fields["ciphertext_len"].parse().unwrap(),
            ciphertext: fields.get("ciphertext").map(|h| hex::decode(h).unwrap()),
            digest: hex::decode(&fields["digest"]).unwrap(),
            tags: fields["tags"]
                .split(',')
                .map(|t| hex::decode(t).unwrap())
                .collect(),
        });
    }
    out
}

#[test]
fn test_vectors_match() {
    let vs = vectors();
    assert_eq!(vs.len(), 6);
    for v in vs {
        let key = FileKey::from_bytes(v.key.as_slice().try_into().unwrap());
        let prefix: [u8; 7] = v.prefix.as_slice().try_into().unwrap();
        let pt = pattern(v.plaintext_len);
        let (blob, sealed) = encrypt(&key, prefix, v.chunk_size, &pt, 10_000);
        assert_eq!(blob.len(), v.ciphertext_len, "{}", v.name);
        assert_eq!(
            sealed.ciphertext_len as usize, v.ciphertext_len,
            "{}",
            v.name
        );
        assert_eq!(
            ciphertext_len(pt.len() as u64, v.chunk_size) as usize,
            v.ciphertext_len
        );
        assert_eq!(
            sealed.digest.unwrap().as_slice(),
            v.digest.as_slice(),
            "{}",
            v.name
        );
        if let Some(ct) = &v.ciphertext {
            assert_eq!(&blob, ct, "{}", v.name);
        }
        // The shipped upload's way (whole chunks sealed in place) gives the same bytes.
        let (chunked, chunked_sealed) = encrypt_chunks(&key, prefix, v.chunk_size, &pt);
        assert_eq!(chunked, blob, "{}: seal_chunk", v.name);
        assert_eq!(chunked_sealed, sealed, "{}: seal_chunk", v.name);
        // Each tag sits at the end of its chunk.
        let stride = v.chunk_size as usize + TAG_LEN;
        for (i, tag) in v.tags.iter().enumerate() {
            let end = (HEADER_LEN + (i + 1) * stride).min(blob.len());
            assert_eq!(
                &blob[end - TAG_LEN..end],
                tag.as_slice(),
                "{} tag {i}",
                v.name
            );
        }
        let expected = Expected {
            digest: Some(v.digest.as_slice().try_into().unwrap()),
            size: Some(v.plaintext_len as u64),
            chunk_size: Some(v.chunk_size),
        };
        assert_eq!(
            decrypt(&key, expected, &blob, 7777).unwrap(),
            pt,
            "{}",
            v.name
        );
    }
}

// ---------------------------------------------------------------------------------------
// Round trips.

fn round_trip(len: usize, cs: u32, seed: u64) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let key = FileKey::generate(&mut rng);
    let mut pt = vec![0u8; len];
    rng.fill_bytes(&mut pt);
    let mut enc = Encryptor::new(&key, &mut rng, cs).unwrap();
    let mut blob = Vec::new();
    let mut rest = pt.as_slice();
    while !rest.is_empty() {
        let n = rng.gen_range(1..=(3 * cs as usize)).min(rest.len());
        enc.push(&rest[..n], &mut blob).unwrap();
        rest = &rest[n..];
    }
    let sealed = enc.finish(&mut blob).unwrap();
    assert_eq!(sealed.plaintext_len, len as u64);
    assert_eq!(blob.len() as u64, ciphertext_len(len as u64, cs));
    let expected = Expected {
        digest: sealed.digest,
        size: Some(len as u64),
        chunk_size: Some(cs),
    };
    let mut dec = Decryptor::new(&key, expected);
    let mut out = Vec::with_capacity(len);
    let mut rest = blob.as_slice();
    while !rest.is_empty() {
        let n = rng.gen_range(1..=(2 * cs as usize)).min(rest.len());
        dec.push(&rest[..n], &mut out).unwrap();
        rest = &rest[n..];
    }
    let opened = dec.finish(&mut out).unwrap();
    assert_eq!(opened.digest, sealed.digest);
    assert!(out == pt, "round trip of {len} bytes differs");
}

#[test]
fn round_trips_at_the_edges() {
    for (i, len) in [
        0,
        1,
        CS as usize - 1,
        CS as usize,
        CS as usize + 1,
        3 * CS as usize,
    ]
    .into_iter()
    .enumerate()
    {
        round_trip(len, CS, i as u64);
    }
    let big = DEFAULT_CHUNK_SIZE as usize;
    for len in [0, 1, big, big + 1] {
        round_trip(len, DEFAULT_CHUNK_SIZE, len as u64);
    }
}

#[test]
fn round_trip_large_file() {
    round_trip(64 << 20, DEFAULT_CHUNK_SIZE, 64);
}

#[test]
fn chunk_size_must_be_allowed() {
    let key = fixed_key();
    for cs in [0, 1, 4096, MIN_CHUNK_SIZE - 1, MIN_CHUNK_SIZE + 1, 2 << 20] {
        assert!(matches!(
            Encryptor::with_nonce_prefix(&key, [0; 7], cs),
            Err(AttachmentError::ChunkSize(_))
        ));
    }
}

// ---------------------------------------------------------------------------------------
// Tampering: every case fails, and no plaintext of a failing chunk is released.

struct Fixture {
    key: FileKey,
    pt: Vec<u8>,
    blob: Vec<u8>,
    sealed: Sealed,
}

/// Three chunks: two full ones and a short final one.
fn fixture() -> Fixture {
    let key = fixed_key();
    let pt = pattern(2 * CS as usize + 1000);
    let (blob, sealed) = encrypt(&key, [9; 7], CS, &pt, 4096);
    Fixture {
        key,
        pt,
        blob,
        sealed,
    }
}

fn chunk_range(i: usize) -> std::ops::Range<usize> {
    let stride = CS as usize + TAG_LEN;
    HEADER_LEN + i * stride..HEADER_LEN + (i + 1) * stride
}

/// Must fail without any expectation (pure AEAD/STREAM), and also with the pointer's.
fn assert_refused(f: &Fixture, blob: &[u8], what: &str) {
    for expected in [
        Expected::default(),
        Expected {
            digest: f.sealed.digest,
            size: Some(f.pt.len() as u64),
            chunk_size: Some(CS),
        },
    ] {
        match decrypt(&f.key, expected, blob, 5000) {
            Ok(_) => panic!("{what}: tampered blob accepted"),
            Err((_, released)) => {
                // Whatever was released is a prefix of the real plaintext made of whole
                // authenticated chunks, never bytes of the failing chunk.
                assert!(
                    released.len() % CS as usize == 0,
                    "{what}: partial chunk released"
                );
                assert!(
                    f.pt.starts_with(&released),
                    "{what}: released bytes not authentic"
                );
            }
        }
    }
}

#[test]
fn untouched_fixture_decrypts() {
    let f = fixture();
    let expected = Expected {
        digest: f.sealed.digest,
        size: Some(f.pt.len() as u64),
        chunk_size: Some(CS),
    };
    assert_eq!(decrypt(&f.key, expected, &f.blob, 5000).unwrap(), f.pt);
}

#[test]
fn truncation_is_refused() {
    let f = fixture();
    for cut in [
        0,
        1,
        HEADER_LEN - 1,
        HEADER_LEN,
        HEADER_LEN + 15,
        f.blob.len() - 1,
        f.blob.len() - 17,
    ] {
        assert_refused(&f, &f.blob[..cut], &format!("truncated to {cut}"));
    }
}

#[test]
fn dropping_the_last_chunk_is_refused() {
    let f = fixture();
    let end = chunk_range(1).end;
    assert_refused(&f, &f.blob[..end], "last chunk dropped");
}

#[test]
fn reordering_is_refused() {
    let f = fixture();
    let mut b = f.blob[..HEADER_LEN].to_vec();
    b.extend_from_slice(&f.blob[chunk_range(1)]);
    b.extend_from_slice(&f.blob[chunk_range(0)]);
    b.extend_from_slice(&f.blob[chunk_range(1).end..]);
    assert_refused(&f, &b, "chunks swapped");
}

#[test]
fn splicing_between_files_is_refused() {
    let f = fixture();
    // Another file under the same key but its own nonce prefix, and one under another key.
    let (other_prefix, _) = encrypt(&f.key, [10; 7], CS, &pattern(f.pt.len()), 4096);
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let (other_key, _) = encrypt(&FileKey::generate(&mut rng), [9; 7], CS, &f.pt, 4096);
    for other in [&other_prefix, &other_key] {
        let mut b = f.blob[..chunk_range(0).end].to_vec();
        b.extend_from_slice(&other[chunk_range(1)]);
        b.extend_from_slice(&f.blob[chunk_range(1).end..]);
        assert_refused(&f, &b, "chunk spliced from another file");
    }
    // The header of another file (other nonce prefix) on our chunks.
    let mut b = other_prefix[..HEADER_LEN].to_vec();
    b.extend_from_slice(&f.blob[HEADER_LEN..]);
    assert_refused(&f, &b, "header spliced from another file");
}

#[test]
fn appending_is_refused() {
    let f = fixture();
    for extra in [&[0u8][..], &[0u8; 16][..], &f.blob[chunk_range(0)]] {
        let mut b = f.blob.clone();
        b.extend_from_slice(extra);
        assert_refused(&f, &b, "bytes appended");
    }
}

#[test]
fn bit_flips_are_refused() {
    let f = fixture();
    let positions = [
        0,
        4,
        5,
        8,
        9,
        15,
        16,
        100,
        chunk_range(0).end - 1,
        chunk_range(1).start + 7,
        f.blob.len() - 1,
    ];
    for pos in positions {
        for bit in [0, 7] {
            let mut b = f.blob.clone();
            b[pos] ^= 1 << bit;
            assert_refused(&f, &b, &format!("bit {bit} of byte {pos} flipped"));
        }
    }
}

#[test]
fn two_final_chunks_are_refused() {
    // A malicious sender (holding the key) marks chunk 0 final and sends another chunk.
    let f = fixture();
    let cipher = ChunkCipher::new(&f.key, Header::new(CS, [9; 7]).unwrap());
    let mut b = cipher.header().encode().to_vec();
    for (i, piece) in [&f.pt[..CS as usize], &f.pt[CS as usize..CS as usize + 10]]
        .into_iter()
        .enumerate()
    {
        let mut c = piece.to_vec();
        let tag = cipher.seal(i as u32, true, &mut c);
        b.extend_from_slice(&c);
        b.extend_from_slice(&tag);
    }
    assert!(decrypt(&f.key, Expected::default(), &b, 3000).is_err());
}

#[test]
fn empty_final_chunk_is_refused() {
    let f = fixture();
    let cipher = ChunkCipher::new(&f.key, Header::new(CS, [9; 7]).unwrap());
    let mut b = cipher.header().encode().to_vec();
    let mut c = f.pt[..CS as usize].to_vec();
    let tag = cipher.seal(0, false, &mut c);
    b.extend_from_slice(&c);
    b.extend_from_slice(&tag);
    let tag = cipher.seal(1, true, &mut []);
    b.extend_from_slice(&tag);
    let (err, released) = decrypt(&f.key, Expected::default(), &b, 3000).unwrap_err();
    assert_eq!(err, AttachmentError::EmptyFinalChunk);
    assert_eq!(released.len(), CS as usize);
}

#[test]
fn wrong_key_releases_nothing() {
    let f = fixture();
    let mut rng = ChaCha20Rng::seed_from_u64(77);
    let (err, released) = decrypt(
        &FileKey::generate(&mut rng),
        Expected::default(),
        &f.blob,
        5000,
    )
    .unwrap_err();
    assert_eq!(err, AttachmentError::Authentication { chunk: 0 });
    assert!(released.is_empty());
}

#[test]
fn swapped_blob_fails_the_digest_and_size_checks() {
    // The relay serves another complete, valid blob under the same key (e.g. an older
    // version): AEAD passes, the pointer's digest and size do not.
    let f = fixture();
    let (other, _) = encrypt(&f.key, [9; 7], CS, &pattern(f.pt.len() + 1), 4096);
    let expected = Expected {
        digest: f.sealed.digest,
        size: None,
        chunk_size: Some(CS),
    };
    assert_eq!(
        decrypt(&f.key, expected, &other, 5000).unwrap_err().0,
        AttachmentError::DigestMismatch
    );
    let expected = Expected {
        digest: None,
        size: Some(f.pt.len() as u64),
        chunk_size: Some(CS),
    };
    assert!(matches!(
        decrypt(&f.key, expected, &other, 5000).unwrap_err().0,
        AttachmentError::SizeMismatch { .. }
    ));
    let expected = Expected {
        chunk_size: Some(DEFAULT_CHUNK_SIZE),
        ..Expected::default()
    };
    assert!(matches!(
        decrypt(&f.key, expected, &f.blob, 5000).unwrap_err().0,
        AttachmentError::ChunkSizeMismatch { .. }
    ));
}

// ---------------------------------------------------------------------------------------
// Pointer and share link.

fn pointer() -> AttachmentPointer {
    AttachmentPointer {
        blob_id: BlobId([0x42; 16]),
        key: fixed_key(),
        digest: [7; 32],
        size: 12345,
        name: "report final.pdf".into(),
        media_type: "application/pdf".into(),
        chunk_size: DEFAULT_CHUNK_SIZE,
    }
}

#[test]
fn pointer_round_trips_and_redacts_its_key() {
    let p = pointer();
    let bytes = postcard::to_allocvec(&p).unwrap();
    let back: AttachmentPointer = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, p);
    let dbg = format!("{p:?}");
    assert!(dbg.contains("redacted"));
    assert!(!dbg.contains(&hex::encode(p.key.as_bytes())));
    assert!(!dbg.contains("0, 1, 2, 3"));
}

#[test]
fn pointer_with_bad_fields_is_refused() {
    for bad in [
        AttachmentPointer {
            name: "../etc/passwd".into(),
            ..pointer()
        },
        AttachmentPointer {
            name: String::new(),
            ..pointer()
        },
        AttachmentPointer {
            name: "a\nb".into(),
            ..pointer()
        },
        AttachmentPointer {
            media_type: "text/plain; x".into(),
            ..pointer()
        },
        AttachmentPointer {
            chunk_size: 1000,
            ..pointer()
        },
    ] {
        let bytes = postcard::to_allocvec(&bad).unwrap();
        assert!(
            postcard::from_bytes::<AttachmentPointer>(&bytes).is_err(),
            "{bad:?}"
        );
    }
}

#[test]
fn share_links_round_trip() {
    let p = pointer();
    let link = ShareLink::from_pointer("https://relay.example:8443/", &p);
    let url = link.to_url();
    assert!(
        url.starts_with("https://relay.example:8443/s/42424242424242424242424242424242#AAECAwQF")
    );
    let back = ShareLink::parse(&url).unwrap();
    assert_eq!(back, link);
    assert_eq!(back.name.as_deref(), Some("report final.pdf"));
    for bad in [
        "http://h/s/42424242424242424242424242424242#AAEC",
        "https://h/s/4242#AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        "https://h/x/42424242424242424242424242424242#AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        "https://h/s/42424242424242424242424242424242",
        "https://h/s/42424242424242424242424242424242#AAEC",
    ] {
        assert!(ShareLink::parse(bad).is_err(), "{bad}");
    }
    let key_only = format!(
        "https://h:1/s/{}#{}",
        p.blob_id,
        &url[url.find('#').unwrap() + 1..url.find('#').unwrap() + 44]
    );
    let parsed = ShareLink::parse(&key_only).unwrap();
    assert_eq!(parsed.key, p.key);
    assert_eq!(parsed.digest, None);
}

#[test]
fn hashing_elsewhere_skips_the_digest_but_not_authentication() {
    let f = fixture();
    let mut dec = Decryptor::new(
        &f.key,
        Expected {
            digest: Some([0; 32]),
            ..Expected::default()
        },
    )
    .hash_elsewhere();
    let mut out = Vec::new();
    dec.push(&f.blob, &mut out).unwrap();
    let opened = dec.finish(&mut out).unwrap();
    assert_eq!(opened.digest, None);
    assert_eq!(out, f.pt);
    let mut b = f.blob.clone();
    b[100] ^= 1;
    let mut dec = Decryptor::new(&f.key, Expected::default()).hash_elsewhere();
    assert!(
        dec.push(&b, &mut Vec::new())
            .and_then(|()| dec.finish(&mut Vec::new()).map(|_| ()))
            .is_err()
    );
}

/// Fuzz-style: arbitrary bytes never decrypt and never panic, whatever the split; arbitrary
/// pointer and link encodings never panic.
#[test]
fn arbitrary_input_is_refused_without_panicking() {
    let mut rng = ChaCha20Rng::seed_from_u64(1234);
    let key = fixed_key();
    let f = fixture();
    for round in 0..300 {
        let len = rng.gen_range(0..3 * CS as usize);
        let mut junk = vec![0u8; len];
        rng.fill_bytes(&mut junk);
        if round % 3 == 0 && junk.len() >= HEADER_LEN {
            // A valid header, so the chunk logic is reached.
            junk[..HEADER_LEN].copy_from_slice(&f.blob[..HEADER_LEN]);
        }
        assert!(decrypt(&key, Expected::default(), &junk, rng.gen_range(1..70_000)).is_err());
        let _ = postcard::from_bytes::<AttachmentPointer>(&junk[..junk.len().min(600)]);
        let text = String::from_utf8_lossy(&junk[..junk.len().min(300)]).into_owned();
        let _ = ShareLink::parse(&format!("https://h/s/{}#{text}", "ab".repeat(16)));
    }
}

/// Whole-chunk sealing refuses what would produce a blob no decryptor accepts: a short
/// chunk that is not the last, a chunk after the last, an empty last chunk after others.
#[test]
fn seal_chunk_refuses_misuse() {
    let key = fixed_key();
    let cs = CS as usize;
    let mut enc = Encryptor::with_nonce_prefix(&key, [3; 7], CS).unwrap();
    let mut short = vec![0u8; cs - 1];
    assert_eq!(
        enc.seal_chunk(&mut short, false),
        Err(AttachmentError::ChunkMisuse)
    );
    let mut full = vec![0u8; cs];
    enc.seal_chunk(&mut full, false).unwrap();
    let mut empty = Vec::new();
    assert_eq!(
        enc.seal_chunk(&mut empty, true),
        Err(AttachmentError::ChunkMisuse),
        "an empty final chunk after others"
    );
    let mut last = vec![1u8; 10];
    enc.seal_chunk(&mut last, true).unwrap();
    let mut after = vec![1u8; 10];
    assert_eq!(
        enc.seal_chunk(&mut after, true),
        Err(AttachmentError::ChunkMisuse),
        "nothing after the last chunk"
    );
    // The blob it made opens.
    let mut blob = enc.header().encode().to_vec();
    blob.extend_from_slice(&full);
    blob.extend_from_slice(&last);
    let sealed = enc.finish(&mut blob).unwrap();
    assert_eq!(sealed.plaintext_len, cs as u64 + 10);
    let expected = Expected {
        digest: sealed.digest,
        size: Some(cs as u64 + 10),
        chunk_size: Some(CS),
    };
    let mut plain = vec![0u8; cs];
    plain.extend_from_slice(&[1u8; 10]);
    assert_eq!(decrypt(&key, expected, &blob, 4096).unwrap(), plain);
}
