//! The browser app: every file of `web/app/` is served from the binary, with its content type,
//! an ETag that a reload revalidates, and a policy that lets the page run only its own scripts.

use std::path::{Path, PathBuf};

use crate::support::spawn_app;

/// Every file under `web/app/` (hidden files left out, as the build leaves them out).
fn app_files() -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().unwrap().to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let relative = path.strip_prefix(root).unwrap();
                out.push(
                    relative
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy())
                        .collect::<Vec<_>>()
                        .join("/"),
                );
            }
        }
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../web/app");
    let mut files = Vec::new();
    walk(&root, &root, &mut files);
    files.sort();
    files
}

#[tokio::test]
async fn the_page_and_every_file_of_the_app_are_served_from_the_binary_with_their_type() {
    let app = spawn_app().await;
    let http = app.client.http();
    let base = app.client.base();
    let page = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(
        policy.contains("script-src 'self'") && !policy.contains("unsafe-inline"),
        "{policy}"
    );
    assert!(policy.contains("require-trusted-types-for 'script'"), "{policy}");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<script type="module" src="/ui/main.js">"#), "{html}");

    let files = app_files();
    for file in ["index.html", "main.js", "style.css"] {
        assert!(files.iter().any(|f| f == file), "web/app/{file} is missing");
    }
    for file in &files {
        let on_disk = std::fs::read(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../web/app")
                .join(file),
        )
        .unwrap();
        let response = http.get(format!("{base}/ui/{file}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{file}");
        let kind = response.headers()["content-type"].to_str().unwrap().to_owned();
        let expected = match file.rsplit_once('.').unwrap().1 {
            "js" => "text/javascript; charset=utf-8",
            "css" => "text/css; charset=utf-8",
            "html" => "text/html; charset=utf-8",
            "svg" => "image/svg+xml",
            other => panic!("a test case is missing for .{other}"),
        };
        assert_eq!(kind, expected, "{file}");
        assert_eq!(
            response.bytes().await.unwrap(),
            on_disk,
            "{file} is served as it is in web/app"
        );
    }
}

#[tokio::test]
async fn a_reload_revalidates_with_the_etag_and_an_unknown_file_is_404() {
    let app = spawn_app().await;
    let http = app.client.http();
    let base = app.client.base();
    let first = http.get(format!("{base}/ui/main.js")).send().await.unwrap();
    assert_eq!(first.headers()["cache-control"], "no-cache");
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    let again = http
        .get(format!("{base}/ui/main.js"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert!(again.bytes().await.unwrap().is_empty());
    let changed = http
        .get(format!("{base}/ui/main.js"))
        .header("if-none-match", "\"another-version\"")
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    // `..%2f` reaches the app's file lookup as `../Cargo.toml` (a client normalises `/ui/../`
    // before sending it); no path outside the embedded table is ever read.
    for path in [
        "/ui/nope.js",
        "/ui/..%2fCargo.toml",
        "/ui/..%2f..%2fCargo.toml",
        "/ui/%2fetc%2fpasswd",
        "/ui/",
        "/index.html",
    ] {
        let response = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{path}");
    }
}
