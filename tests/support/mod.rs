//! Helpers shared by the end-to-end tests: the `esi-proxy` binary, built once per run.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The path of the `esi-proxy` binary of this build profile, building it if it is missing.
pub fn bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test binary path");
        // target/<profile>/deps/tests-<hash> -> target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(|d| d.parent())
            .expect("target/<profile>")
            .to_path_buf();
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "-p", "esi-proxy", "--bin", "esi-proxy"]);
        if release {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "building esi-proxy failed");
        profile_dir.join(format!("esi-proxy{}", std::env::consts::EXE_SUFFIX))
    })
    .clone()
}
