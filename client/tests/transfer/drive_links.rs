//! Cove Drive links (issue 14 item 5) in headless Chromium: a folder of three files uploaded
//! with `content::upload_file` into a tree built directly from operations (no MLS), linked
//! with `link::create`, listed and downloaded by the share page; a tampered chunk, a
//! revoked link and an expired one; and the single-file page's Save link while loading.

use cove::drive::link::{self, Created};
use cove::drive::{DriveError, content};
use cove_core::drive::seal;
use cove_core::drive::{DriveOp, FileVersion, ManifestRef, NodeId, ROOT, Tree, TreeError};
use cove_server::blob::{BlobConfig, BlobStore, FsBlobStore, Gone, TOMBSTONE_RETENTION_MS};
use cove_wire::UserName;
use http::{Method, Request};
use sha2::{Digest, Sha256};

use super::{Env, browser, random_bytes};

const PHOTOS: NodeId = [1; 16];
const YEAR: NodeId = [2; 16];
const BIG: NodeId = [3; 16];
const NOTES: NodeId = [4; 16];
const ODD: NodeId = [5; 16];
/// A file name that is HTML if the page ever inserted names as markup.
const ODD_NAME: &str = "<img src=x onerror=alert(1)>.txt";

/// The linked folder: `Photos/` with `big.bin` (3 MiB, more than two chunks),
/// `notes.txt`, and `2026/` holding the oddly named file.
struct Folder {
    env: Env,
    tree: Tree,
    big: Vec<u8>,
    big_version: FileVersion,
}

async fn upload(env: &Env, name: &str, content: &[u8]) -> FileVersion {
    let path = env.file(name.replace(['<', '>', ' ', '='], "_").as_str(), content);
    content::upload_file(&env.client, &path, None, "laptop", None)
        .await
        .unwrap()
        .version
}

async fn folder() -> Folder {
    let env = Env::start(BlobConfig::default()).await;
    let alice = UserName::new("alice").unwrap();
    let big = random_bytes(3 << 20, 14);
    let big_version = upload(&env, "big.bin", &big).await;
    let notes = upload(&env, "notes.txt", b"remember the milk\n").await;
    let odd = upload(&env, ODD_NAME, b"not markup\n").await;
    let mut tree = Tree::new();
    let ops = [
        DriveOp::Init {
            name: "Drive".into(),
            owner: alice.clone(),
        },
        DriveOp::Mkdir {
            id: PHOTOS,
            parent: ROOT,
            name: "Photos".into(),
        },
        DriveOp::Mkdir {
            id: YEAR,
            parent: PHOTOS,
            name: "2026".into(),
        },
        DriveOp::PutVersion {
            id: BIG,
            parent: PHOTOS,
            name: "big.bin".into(),
            version: big_version.clone(),
        },
        DriveOp::PutVersion {
            id: NOTES,
            parent: PHOTOS,
            name: "notes.txt".into(),
            version: notes,
        },
        DriveOp::PutVersion {
            id: ODD,
            parent: YEAR,
            name: ODD_NAME.into(),
            version: odd,
        },
    ];
    for (seq, op) in ops.iter().enumerate() {
        tree.apply(seq as u64 + 1, &alice, op).unwrap();
    }
    Folder {
        env,
        tree,
        big,
        big_version,
    }
}

/// The link's URL opening the file at `path` (relative to the linked folder) at once.
fn file_url(link: &Created, path: &str) -> String {
    format!("{}.{}", link.url, b64url(path.as_bytes()))
}

fn b64url(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=c.len() {
            out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

fn chunks(version: &FileVersion) -> Vec<cove_core::drive::ChunkRef> {
    match &version.manifest {
        ManifestRef::Inline(m) => m.chunks.clone(),
        ManifestRef::Blob(_) => panic!("a 3 MiB file's manifest is inline"),
    }
}

/// The page ended in `error` showing `message` (its status line), with nothing offered for
/// saving.
#[track_caller]
fn assert_refused(dom: &str, message: &str) {
    assert!(dom.contains("data-state=\"error\""), "not refused: {dom}");
    assert!(
        dom.contains(&format!("<p id=\"status\">{message}</p>")),
        "expected {message:?}: {dom}"
    );
    assert!(!dom.contains("blob:"), "a download offered: {dom}");
    assert!(!dom.contains("class=\"get\""), "a save link: {dom}");
}

/// The gone page (styled, no script) in the wording for `state`, with `heading`.
#[track_caller]
fn assert_gone(dom: &str, state: &str, heading: &str) {
    assert!(
        dom.contains(&format!("<body data-state=\"{state}\">")),
        "{dom}"
    );
    assert!(dom.contains(&format!("<h1>{heading}</h1>")), "{dom}");
    assert!(!dom.contains("<script"), "{dom}");
    assert!(!dom.contains("Photos") && !dom.contains("big.bin"), "{dom}");
}

/// `GET /s/<id>` over raw HTTPS: the status, the CSP, the body.
async fn share_page(env: &Env, id: &str) -> (u16, String, String) {
    let r = env
        .send(
            Request::builder()
                .method(Method::GET)
                .uri(format!("/s/{id}")),
            vec![],
        )
        .await;
    let csp = r.headers["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    (r.status, csp, r.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_link_lists_the_tree_and_downloads_the_big_file_with_its_sha256() {
    let f = folder().await;
    assert!(chunks(&f.big_version).len() > 2, "{:?}", f.big_version);
    let link = link::create(&f.env.client, &f.tree, &PHOTOS, None)
        .await
        .unwrap();
    assert!(link.url.starts_with(&format!(
        "{}/s/{}#drive.",
        f.env.client.origin(),
        link.sealed.blob.to_hex()
    )));
    assert_eq!(link::url(&f.env.client, &link.sealed), link.url);

    // The listing: every folder and file by name, with sizes; the odd name as text.
    let Some(dom) = browser::dump_dom(&link.url).await else {
        return;
    };
    assert!(dom.contains("data-state=\"done\""), "{dom}");
    assert!(
        dom.contains("<p id=\"status\">Choose a file to download.</p>"),
        "{dom}"
    );
    assert!(dom.contains("<h1 id=\"name\">Photos</h1>"), "{dom}");
    assert!(
        dom.contains("3 files in 1 folder · 3.0 MiB (3145757 bytes)"),
        "{dom}"
    );
    for name in ["2026/", "big.bin", "notes.txt"] {
        assert!(
            dom.contains(&format!("<span class=\"fname\">{name}</span>")),
            "{name}: {dom}"
        );
    }
    assert!(
        dom.contains("<span class=\"fname\">&lt;img src=x onerror=alert(1)&gt;.txt</span>"),
        "{dom}"
    );
    // (An element would serialise with quoted attributes.)
    assert!(
        !dom.contains("<img src=\"x\""),
        "a name became markup: {dom}"
    );
    assert!(
        dom.contains("<span class=\"fsize\">3.0 MiB (3145728 bytes)</span>"),
        "{dom}"
    );
    assert!(
        dom.contains("<span class=\"fsize\">18 bytes</span>"),
        "{dom}"
    );
    assert!(!dom.contains("blob:"), "{dom}");

    // The big file, fetched chunk by chunk, decrypted and verified by the page: the SHA-256
    // it computed over what it produced is the original's.
    let dom = browser::dump_dom(&file_url(&link, "big.bin"))
        .await
        .unwrap();
    let sha = hex::encode(Sha256::digest(&f.big));
    assert!(
        dom.contains(&format!(
            "<span class=\"fstatus\">Decrypted and verified: 3145728 bytes, SHA-256 {sha}.</span>"
        )),
        "{dom}"
    );
    assert!(
        dom.contains("<p id=\"status\">Decrypted and verified: big.bin.</p>"),
        "{dom}"
    );
    assert!(dom.contains("download=\"big.bin\""), "{dom}");
    assert!(dom.contains("href=\"blob:"), "{dom}");

    // A file in a subfolder, by its path.
    let dom = browser::dump_dom(&file_url(&link, &format!("2026/{ODD_NAME}")))
        .await
        .unwrap();
    assert!(
        dom.contains("<p id=\"status\">Decrypted and verified: 2026/&lt;img src=x onerror=alert(1)&gt;.txt.</p>"),
        "{dom}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_chunk_or_link_blob_is_refused_and_nothing_is_offered() {
    let f = folder().await;
    let link = link::create(&f.env.client, &f.tree, &PHOTOS, None)
        .await
        .unwrap();
    let second = &chunks(&f.big_version)[1];
    let path = f.env.blob_path(&second.blob);
    let mut blob = std::fs::read(&path).unwrap();
    blob[100] ^= 1;
    std::fs::write(&path, &blob).unwrap();
    let Some(dom) = browser::dump_dom(&file_url(&link, "big.bin")).await else {
        return;
    };
    assert_refused(
        &dom,
        "Part 1 of the file failed verification: it was modified, or the link is wrong. Nothing was saved.",
    );
    assert!(
        dom.contains("<li class=\"file\" data-path=\"big.bin\" data-state=\"error\">"),
        "{dom}"
    );

    // The link blob itself modified: nothing is listed.
    let path = f.env.blob_path(&link.sealed.blob);
    let mut blob = std::fs::read(&path).unwrap();
    blob[10] ^= 1;
    std::fs::write(&path, &blob).unwrap();
    let dom = browser::dump_dom(&link.url).await.unwrap();
    assert_refused(
        &dom,
        "The link's index failed verification: it was modified, or the link is wrong.",
    );
    assert!(!dom.contains("big.bin"), "{dom}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_link_shows_the_revoked_page_and_an_unknown_id_the_generic_one() {
    let f = folder().await;
    let link = link::create(&f.env.client, &f.tree, &PHOTOS, None)
        .await
        .unwrap();
    link::revoke(&f.env.client, link.sealed.blob).await.unwrap();
    // Again (another device revoking it too, or after expiry): still fine.
    link::revoke(&f.env.client, link.sealed.blob).await.unwrap();
    let (status, csp, body) = share_page(&f.env, &link.sealed.blob.to_hex()).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        csp.starts_with("default-src 'none'; style-src 'sha256-"),
        "{csp}"
    );
    assert!(!csp.contains("script-src"), "{csp}");
    // An id the relay never had: the page that cannot tell.
    let (status, _, body) = share_page(&f.env, "00112233445566778899aabbccddeeff").await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("<h1>This link has expired or was revoked</h1>"),
        "{body}"
    );
    assert!(body.contains("<body data-state=\"gone\">"), "{body}");
    let Some(dom) = browser::dump_dom(&link.url).await else {
        return;
    };
    assert_gone(&dom, "revoked", "This link was revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_link_lists_until_the_sweep_after_its_expiry_then_shows_the_expired_page() {
    let f = folder().await;
    let link = link::create(&f.env.client, &f.tree, &PHOTOS, Some(3600))
        .await
        .unwrap();
    let store = FsBlobStore::open(&f.env.data.path().join("blobs")).unwrap();
    let meta = store.meta(&link.sealed.blob).unwrap().unwrap();
    // An hour after the upload completed (after its creation, before now).
    let now = super::raw::now_ms();
    assert!(
        (meta.created_ms + 3_600_000..=now + 3_600_000).contains(&meta.expires_ms),
        "{meta:?} at {now}"
    );
    assert_eq!(store.sweep(meta.expires_ms - 1).unwrap(), 0);
    let Some(dom) = browser::dump_dom(&link.url).await else {
        return;
    };
    assert!(dom.contains("<h1 id=\"name\">Photos</h1>"), "{dom}");
    // The files' chunks are kept (Retention::Keep): only the link goes.
    assert_eq!(store.sweep(meta.expires_ms).unwrap(), 1);
    assert!(store.meta(&link.sealed.blob).unwrap().is_none());
    assert_eq!(store.gone(&link.sealed.blob).unwrap(), Some(Gone::Expired));
    let dom = browser::dump_dom(&link.url).await.unwrap();
    assert_gone(&dom, "expired", "This link has expired");
    // The tombstone is forgotten after 90 days: then the page cannot tell.
    store
        .sweep(meta.expires_ms + TOMBSTONE_RETENTION_MS + 1)
        .unwrap();
    assert_eq!(store.gone(&link.sealed.blob).unwrap(), None);
    let (status, _, body) = share_page(&f.env, &link.sealed.blob.to_hex()).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("<h1>This link has expired or was revoked</h1>"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_link_lists_its_one_file() {
    let f = folder().await;
    let link = link::create(&f.env.client, &f.tree, &NOTES, None)
        .await
        .unwrap();
    let Some(dom) = browser::dump_dom(&file_url(&link, "notes.txt")).await else {
        return;
    };
    assert!(dom.contains("<h1 id=\"name\">notes.txt</h1>"), "{dom}");
    assert!(
        dom.contains("<p id=\"status\">Decrypted and verified: notes.txt.</p>"),
        "{dom}"
    );
    let sha = hex::encode(Sha256::digest(b"remember the milk\n"));
    assert!(dom.contains(&sha), "{dom}");
}

/// The single-file share page as served (its state while loading, before any script ran)
/// offers no Save link: the element is hidden and has no target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_share_pages_save_link_is_hidden_and_dead_while_loading() {
    let env = Env::start(BlobConfig::default()).await;
    let p = env
        .client
        .upload_file(&env.file("a.txt", b"hello"))
        .await
        .unwrap();
    let page = env
        .send(
            Request::builder()
                .method(Method::GET)
                .uri(format!("/s/{}", p.blob_id.to_hex())),
            vec![],
        )
        .await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.body.contains("<body data-state=\"loading\">"));
    assert!(page.body.contains("<a id=\"save\" hidden>Save file</a>"));
    assert_eq!(page.body.matches("id=\"save\"").count(), 1);
    assert!(page.body.contains("[hidden] { display: none !important; }"));
}

/// The link blob opens with the key from the URL into the documented JSON: the linked
/// folder's name, its subfolder, each file's latest version with its secret and chunks; a
/// file link holds its one file; an out-of-range expiry and a trashed file are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_document_holds_the_folder_as_documented() {
    let mut f = folder().await;
    let link = link::create(&f.env.client, &f.tree, &PHOTOS, None)
        .await
        .unwrap();
    let sealed = f
        .env
        .client
        .download_bytes(link.sealed.blob, 1 << 20)
        .await
        .unwrap();
    assert_eq!(sealed.len() as u64, link.sealed.len);
    let key_part = link.url.split_once("#drive.").unwrap().1;
    assert_eq!(key_part, b64url(&link.sealed.key.0));
    let json = seal::open(&link.sealed.key, seal::LINK_AAD, &sealed).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(doc["v"], 1);
    assert_eq!(doc["name"], "Photos");
    assert_eq!(doc["kind"], "folder");
    assert_eq!(doc["folders"], serde_json::json!(["2026"]));
    let files = doc["files"].as_array().unwrap();
    let mut paths: Vec<&str> = files.iter().map(|x| x["path"].as_str().unwrap()).collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [format!("2026/{ODD_NAME}").as_str(), "big.bin", "notes.txt"]
    );
    let big = files.iter().find(|x| x["path"] == "big.bin").unwrap();
    let v = &f.big_version;
    assert_eq!(big["size"], v.size);
    assert_eq!(big["modified_ms"], v.modified_ms);
    assert_eq!(big["sha256"], hex::encode(Sha256::digest(&f.big)));
    assert_eq!(big["secret"], b64url(&v.secret.0));
    let want: Vec<serde_json::Value> = chunks(v)
        .iter()
        .map(
            |c| serde_json::json!({"id": hex::encode(c.id), "blob": c.blob.to_hex(), "len": c.len}),
        )
        .collect();
    assert_eq!(big["chunks"], serde_json::Value::Array(want));
    assert_eq!(
        big.as_object().unwrap().len(),
        6,
        "undocumented fields: {big}"
    );

    // A file link: one file, its path its name, no folders.
    let link = link::create(&f.env.client, &f.tree, &NOTES, None)
        .await
        .unwrap();
    let sealed = f
        .env
        .client
        .download_bytes(link.sealed.blob, 1 << 20)
        .await
        .unwrap();
    let json = seal::open(&link.sealed.key, seal::LINK_AAD, &sealed).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(
        (&doc["name"], &doc["kind"], &doc["folders"]),
        (
            &serde_json::json!("notes.txt"),
            &serde_json::json!("file"),
            &serde_json::json!([])
        )
    );
    assert_eq!(doc["files"][0]["path"], "notes.txt");

    // An expiry the relay would refuse is refused before anything is uploaded.
    let before = super::blob_rows(&f.env);
    for secs in [0, link::MAX_EXPIRY_SECS + 1] {
        let err = link::create(&f.env.client, &f.tree, &NOTES, Some(secs))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, DriveError::Invalid(m) if m == "a link expires after 1 second to 3650 days"),
            "{err:?}"
        );
    }
    assert_eq!(super::blob_rows(&f.env), before);

    // A trashed file cannot be linked.
    let alice = UserName::new("alice").unwrap();
    let next = f.tree.applied() + 1;
    f.tree
        .apply(next, &alice, &DriveOp::Trash { id: NOTES })
        .unwrap();
    let err = link::create(&f.env.client, &f.tree, &NOTES, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, DriveError::Tree(TreeError::NotFound(_))),
        "{err:?}"
    );
}

/// A link document that opens (its author holds the key) but breaks the format is refused
/// with the field at fault, and nothing is listed: a path escaping with `..`, chunk lengths
/// that do not add up to the size, an unknown version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_link_document_is_refused_with_its_reason() {
    let env = Env::start(BlobConfig::default()).await;
    let file = |path: &str, size: u64| {
        serde_json::json!({"path": path, "size": size, "modified_ms": 0,
            "sha256": hex::encode([0u8; 32]), "secret": b64url(&[1; 32]),
            "chunks": [{"id": hex::encode([2u8; 32]), "blob": hex::encode([3u8; 16]), "len": 10}]})
    };
    let cases = [
        (
            serde_json::json!({"v": 1, "name": "x", "kind": "folder", "folders": [],
                "files": [file("a/../secret.txt", 10)]}),
            "file path",
        ),
        (
            serde_json::json!({"v": 1, "name": "x", "kind": "folder", "folders": [],
                "files": [file("a.txt", 11)]}),
            "sizes",
        ),
        (
            serde_json::json!({"v": 2, "name": "x", "kind": "folder", "folders": [],
                "files": []}),
            "version",
        ),
    ];
    for (doc, reason) in cases {
        let key = cove_core::drive::FileSecret([7; 32]);
        let sealed = seal::seal(&key, seal::LINK_AAD, &serde_json::to_vec(&doc).unwrap());
        let blob = env.client.upload_bytes(sealed).await.unwrap();
        let url = format!(
            "{}/s/{}#drive.{}",
            env.client.origin(),
            blob.to_hex(),
            b64url(&key.0)
        );
        let Some(dom) = browser::dump_dom(&url).await else {
            return;
        };
        assert_refused(&dom, &format!("The link's index is malformed ({reason})."));
        assert!(dom.contains("<div id=\"tree\"></div>"), "{dom}");
    }
}
