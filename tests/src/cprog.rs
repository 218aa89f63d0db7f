//! The C test program (`tests/c/reader_test.c`): libdbha installed into a
//! temporary prefix with `reader/install.sh`, the program compiled with the
//! system C compiler through `pkg-config --cflags --libs dbha`.

use crate::{libdbha_dir, require};
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Installs libdbha into `prefix` and compiles reader_test against it through
/// pkg-config; `static_link` links libdbha.a instead of the shared library.
pub fn build(prefix: &Path, static_link: bool, out: &Path) -> PathBuf {
    let pc_path = prefix.join("lib/pkgconfig");
    let mut args = vec!["--cflags", "--libs"];
    if static_link {
        args.push("--static");
    }
    let flags = run(Command::new("pkg-config")
        .env("PKG_CONFIG_PATH", &pc_path)
        .args(&args)
        .arg("dbha"));
    let mut cc = Command::new("cc");
    cc.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("c/reader_test.c"))
        .arg("-o")
        .arg(out);
    let flags: Vec<&str> = flags.split_whitespace().collect();
    if static_link {
        // Only libdbha statically; libc and friends stay shared.
        let (libs, rest): (Vec<&str>, Vec<&str>) = flags.iter().partition(|f| **f == "-ldbha");
        cc.args(rest)
            .arg("-Wl,-Bstatic")
            .args(libs)
            .arg("-Wl,-Bdynamic");
    } else {
        cc.args(flags)
            .arg(format!("-Wl,-rpath,{}", prefix.join("lib").display()));
    }
    run(&mut cc);
    out.to_owned()
}

/// The C compiler and pkg-config, or None (skipped outside CI).
pub fn c_tools() -> Option<()> {
    require("cc", "to compile the C test program")?;
    require("pkg-config", "to find libdbha's flags")?;
    Some(())
}

pub fn install(prefix: &Path) {
    let profile = libdbha_dir();
    run(
        Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../reader/install.sh"))
            .env("CARGO_TARGET_DIR", profile.parent().unwrap())
            .env("DBHA_PROFILE", profile.file_name().unwrap())
            .arg(prefix),
    );
}

/// `reader_test` built against a fresh install in `dir`, or None when the C
/// tools are missing (a failure under CI).
pub fn reader_test(dir: &Path) -> Option<PathBuf> {
    c_tools()?;
    let prefix = dir.join("prefix");
    install(&prefix);
    Some(build(&prefix, false, &dir.join("reader_test")))
}
