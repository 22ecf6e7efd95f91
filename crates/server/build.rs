//! Embeds the browser app (`web/app/`, every file under it) in the binary: writes
//! `$OUT_DIR/web_files.rs`, a table of each file's path, bytes (`include_bytes!`), content type
//! and ETag, which `src/web.rs` serves. Cargo runs this again when anything under the folder
//! changes, files added or removed included.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest.join("../../web/app");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    collect(&root, &root, &mut files);
    files.sort();
    let mut table = String::from("&[\n");
    for (path, absolute) in &files {
        let bytes = std::fs::read(absolute).unwrap_or_else(|e| panic!("cannot read {absolute}: {e}"));
        let content_type = content_type(path.as_str())
            .unwrap_or_else(|| panic!("web/app/{path}: no content type is known for this file's extension"));
        writeln!(
            table,
            "    WebFile {{ path: {path:?}, bytes: include_bytes!({absolute:?}), content_type: {content_type:?}, etag: \"\\\"{:016x}\\\"\" }},",
            fnv1a(&bytes)
        )
        .expect("writing to a String");
    }
    table.push(']');
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("web_files.rs");
    std::fs::write(&out, table).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
}

/// Every file under `dir`, as (path relative to `root` with `/`, absolute path).
fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, String)>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.expect("a directory entry");
        let path = entry.path();
        // Editors' and systems' hidden files (`.DS_Store`, `.app.js.swp`) are not the app's.
        if path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        let kind = entry.file_type().expect("a file type");
        // Symbolic links are not followed: the app is the folder's own files, and a link could
        // loop or reach outside it.
        if kind.is_symlink() {
            println!(
                "cargo:warning=web/app: {} is a symbolic link; it is not embedded",
                path.display()
            );
            continue;
        }
        if kind.is_dir() {
            collect(root, &path, files);
            continue;
        }
        let relative = path.strip_prefix(root).expect("under the root");
        let relative: Vec<String> = relative
            .components()
            .map(|c| {
                c.as_os_str()
                    .to_str()
                    .unwrap_or_else(|| panic!("web/app: {} has a name that is not UTF-8", path.display()))
                    .to_owned()
            })
            .collect();
        let absolute = path.canonicalize().expect("an existing file");
        files.push((relative.join("/"), absolute.to_string_lossy().into_owned()));
    }
}

fn content_type(path: &str) -> Option<&'static str> {
    let extension = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase())?;
    Some(match extension.as_str() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" => "application/json",
        "webmanifest" => "application/manifest+json",
        "txt" => "text/plain; charset=utf-8",
        _ => return None,
    })
}

/// FNV-1a, 64 bits: enough to tell two versions of a file apart for an ETag.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
