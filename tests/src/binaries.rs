//! The workspace's binaries, built once per test process with the test's own profile.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The path of a workspace binary (`gateway`, `gateway-publish`), built on first use with the
/// profile and target dir of the running test executable. `$E2E_GATEWAY_BIN` overrides the
/// gateway's path.
pub fn binary(name: &str) -> PathBuf {
    if name == "gateway"
        && let Some(binary) = std::env::var_os("E2E_GATEWAY_BIN")
    {
        return PathBuf::from(binary);
    }
    static PROFILE_DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match PROFILE_DIR.get_or_init(build) {
        Ok(dir) => dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX)),
        Err(e) => panic!("{e}"),
    }
}

/// Builds the gateway and publisher binaries into `<target>/<profile>/`, the directory of the
/// running test executable (`<target>/<profile>/deps/<test>`), and returns that directory.
fn build() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("no current_exe: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("{} is not in <target>/<profile>/deps", exe.display()))?;
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| format!("{} has no parent", profile_dir.display()))?;
    let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") => "dev",
        Some(name) => name,
        None => return Err(format!("no profile in {}", profile_dir.display())),
    };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("the tests crate is not inside the workspace")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut command = std::process::Command::new(&cargo);
    // The variables cargo sets for this test describe the tests crate; passed on, they make
    // build scripts (ring's) rerun and invalidate the outer build.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let per_crate = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|prefix| key.starts_with(prefix));
        if per_crate || key == "CARGO_PRIMARY_PACKAGE" || key == "CARGO_TARGET_TMPDIR" {
            command.env_remove(key.as_ref());
        }
    }
    let output = command
        .current_dir(workspace)
        .args([
            "build",
            "-p",
            "gateway",
            "-p",
            "publisher",
            "--bins",
            "--profile",
            profile,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .output()
        .map_err(|e| format!("cannot run {cargo:?}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`cargo build -p gateway -p publisher --bins --profile {profile}` failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(profile_dir.to_path_buf())
}
