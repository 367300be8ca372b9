//! Guest images (Debian kernel + busybox initrd) for tests that boot a real guest.

use std::path::{Path, PathBuf};

use vmk_image::{AptOutput, ImageInfo, ImageOptions};

/// A built image: its directory (what a VM definition's `boot.image` names) and what the
/// build reports (kernel and initrd paths among it).
pub struct Image {
    pub dir: PathBuf,
    pub info: ImageInfo,
}

/// Builds the image `TMP/NAME-image` with `vmk_image::build_image`, its init script (if
/// any) written to `TMP/NAME-script.sh`, quietly; `configure` adds packages or modules.
/// Packages come from `$VMK_CACHE` or ~/.cache/vmk, else from Debian's mirror; without
/// either the test fails here.
///
/// `tmp` is the calling test's `env!("CARGO_TARGET_TMPDIR")`. Call it once per test binary
/// and image (behind a `OnceLock`): the tests of a binary run in parallel, and two builds
/// into one directory race (one truncated the script while the other packed it).
pub fn build(
    tmp: &Path,
    name: &str,
    script: Option<&str>,
    configure: impl FnOnce(&mut ImageOptions),
) -> Image {
    let dir = tmp.join(format!("{name}-image"));
    let mut opts = ImageOptions::new(&dir);
    if let Some(script) = script {
        let path = tmp.join(format!("{name}-script.sh"));
        std::fs::write(&path, script).expect("write the init script");
        opts.init_script = Some(path);
    }
    opts.apt_output = AptOutput::Quiet;
    configure(&mut opts);
    let info = vmk_image::build_image(&opts, &mut |_| {})
        .expect("build the guest image (needs Debian's mirror or a warm ~/.cache/vmk)");
    Image { dir, info }
}
