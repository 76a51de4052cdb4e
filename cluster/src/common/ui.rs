//! The dashboard's static assets (`cluster/ui/`), embedded in the binary at build time: the page,
//! its script and style sheet are plain files in the repository (no JavaScript toolchain, nothing
//! generated), served by the RC (the colony) and by each node (its own view).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "rc.html",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../../ui/rc.html"),
    },
    Asset {
        name: "node.html",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../../ui/node.html"),
    },
    Asset {
        name: "common.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../ui/common.js"),
    },
    Asset {
        name: "rc.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../ui/rc.js"),
    },
    Asset {
        name: "node.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../ui/node.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../ui/style.css"),
    },
];

/// The embedded file `name` with its content type, or 404. Pages are sent with a strict
/// content-security policy: only this origin's scripts, styles and connections.
pub fn asset(name: &str) -> Response {
    let Some(a) = ASSETS.iter().find(|a| a.name == name) else {
        return (StatusCode::NOT_FOUND, "no such dashboard file").into_response();
    };
    let mut r = (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(a.content_type),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        a.body,
    )
        .into_response();
    if a.name.ends_with(".html") {
        r.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                 img-src 'self' data:; frame-ancestors 'none'",
            ),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_embedded_and_every_page_reference_resolves() {
        for a in ASSETS {
            assert!(!a.body.trim().is_empty(), "{} is empty", a.name);
        }
        // Each page's scripts and style sheet are assets.
        for page in ["rc.html", "node.html"] {
            let body = ASSETS.iter().find(|a| a.name == page).unwrap().body;
            for part in body.split("/ui/").skip(1) {
                let name: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '_')
                    .collect();
                if name.ends_with(".js") || name.ends_with(".css") {
                    assert!(
                        ASSETS.iter().any(|a| a.name == name),
                        "{page} refers to /ui/{name}, which is not embedded"
                    );
                }
            }
        }
        assert_eq!(asset("nope.js").status(), StatusCode::NOT_FOUND);
        let r = asset("rc.html");
        assert!(r.headers().contains_key(header::CONTENT_SECURITY_POLICY));
    }
}
