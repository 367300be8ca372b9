//! Bad inputs are rejected before anything is fetched (no network needed).

use std::path::PathBuf;

use vmk_image::{build_image, AptOutput, ImageError, ImageOptions};

fn opts(out: impl Into<PathBuf>, cache: &std::path::Path) -> ImageOptions {
    let mut o = ImageOptions::new(out);
    o.cache_dir = cache.to_path_buf();
    o.apt_output = AptOutput::Quiet;
    o
}

fn build(o: &ImageOptions) -> ImageError {
    build_image(o, &mut |_| {}).expect_err("the build must fail")
}

#[test]
fn missing_init_script_names_the_file() {
    let t = tempfile::tempdir().unwrap();
    let mut o = opts(t.path().join("out"), &t.path().join("cache"));
    o.init_script = Some(t.path().join("no-such-script.sh"));
    let e = build(&o);
    assert!(matches!(e, ImageError::InitScript { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("no-such-script.sh") && msg.contains("--init-script"),
        "{msg}"
    );
    assert!(
        !t.path().join("cache").exists(),
        "failed before touching the cache"
    );
}

#[test]
fn unwritable_out_dir_is_reported() {
    let t = tempfile::tempdir().unwrap();
    // A path below a regular file cannot be created, even by root.
    let file = t.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let o = opts(file.join("out"), &t.path().join("cache"));
    let e = build(&o);
    assert!(matches!(e, ImageError::OutDir { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("a-file/out") && msg.contains("--out"), "{msg}");
}

#[test]
fn invalid_package_names_are_rejected() {
    let t = tempfile::tempdir().unwrap();
    for bad in ["-oAPT::Get::AllowUnauthenticated=1", "Foo", "a b", "x"] {
        let mut o = opts(t.path().join("out"), &t.path().join("cache"));
        o.packages = vec!["sqlite3".into(), bad.into()];
        let e = build(&o);
        assert!(matches!(e, ImageError::InvalidPackageName { .. }), "{e:?}");
        assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
    }
}

#[test]
fn missing_keyring_says_what_to_install() {
    let t = tempfile::tempdir().unwrap();
    let mut o = opts(t.path().join("out"), &t.path().join("cache"));
    o.keyring = t.path().join("no-keyring.gpg");
    let e = build(&o);
    assert!(matches!(e, ImageError::Keyring { .. }), "{e:?}");
    assert!(e.to_string().contains("debian-archive-keyring"));
}

#[test]
fn unwritable_cache_is_reported() {
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let o = opts(t.path().join("out"), &file.join("cache"));
    let e = build(&o);
    assert!(matches!(e, ImageError::Cache { .. }), "{e:?}");
    assert!(e.to_string().contains("VMK_CACHE"), "{e}");
}
