//! The workspace's binaries (`gateway`, `gateway-publish`), built once per process with the
//! cargo profile and target directory of the running executable, so a test or a benchmark
//! never runs a stale or differently built gateway.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The packages whose binaries [`build_binaries`] builds.
const PACKAGES: [&str; 2] = ["gateway", "publisher"];

/// The path of a workspace binary (`gateway`, `gateway-publish`), built on first use by
/// [`build_binaries`]. `$E2E_GATEWAY_BIN` overrides the gateway's path.
///
/// # Panics
///
/// When the build fails.
pub fn binary(name: &str) -> PathBuf {
    if name == "gateway"
        && let Some(binary) = std::env::var_os("E2E_GATEWAY_BIN")
    {
        return PathBuf::from(binary);
    }
    match build_binaries() {
        Ok(dir) => dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX)),
        Err(e) => panic!("{e}"),
    }
}

/// Builds the gateway's and the publisher's binaries, once per process, into
/// [`profile_dir`], and returns that directory.
pub fn build_binaries() -> io::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build().map_err(|e| e.to_string()))
        .clone()
        .map_err(io::Error::other)
}

/// `<target>/<profile>`, where cargo put the running executable (or, for a test, the `deps/`
/// folder it is in) and puts the workspace's binaries built with the same profile.
pub fn profile_dir() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| io::Error::other(format!("{} has no directory", exe.display())))?;
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir = dir
            .parent()
            .ok_or_else(|| io::Error::other(format!("{} has no parent", dir.display())))?;
    }
    Ok(dir.to_path_buf())
}

fn build() -> io::Result<PathBuf> {
    let profile_dir = profile_dir()?;
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| io::Error::other(format!("{} has no parent", profile_dir.display())))?;
    let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") => "dev",
        Some(name) => name,
        None => {
            return Err(io::Error::other(format!(
                "no profile in {}",
                profile_dir.display()
            )));
        }
    };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| io::Error::other("the testkit crate is not inside the workspace"))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut command = Command::new(&cargo);
    // The variables cargo sets for the running test or binary describe its crate; passed on,
    // they make build scripts (ring's) rerun and invalidate the outer build.
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
    command.current_dir(workspace).arg("build");
    for package in PACKAGES {
        command.args(["-p", package]);
    }
    let output = command
        .args(["--bins", "--profile", profile])
        .arg("--target-dir")
        .arg(target_dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run {cargo:?}: {e}")))?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "`cargo build -p gateway -p publisher --bins --profile {profile}` failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(profile_dir)
}
