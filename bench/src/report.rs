//! `dbha-bench all`: every benchmark in turn, and the blocks of BENCHMARKS.md
//! rewritten from their output.

use std::path::Path;
use std::process::{Command, Stdio};

/// The sections `all` fills, in order: (marker name, arguments).
const SECTIONS: [(&str, &[&str]); 18] = [
    ("reader", &["reader"]),
    ("scaling", &["scaling"]),
    ("switch", &["switch"]),
    ("footprint", &["footprint"]),
    ("live", &["live"]),
    ("restart", &["restart"]),
    ("haproxy", &["haproxy"]),
    ("probe-cost", &["probe-cost"]),
    ("window", &["window"]),
    ("django", &["django"]),
    (
        "django-1s",
        &["django", "--interval", "1s", "--fault", "stop"],
    ),
    ("soak", &["soak"]),
    ("soak-operators", &["soak-operators"]),
    ("dcs", &["dcs"]),
    ("dcs-soak", &["dcs-soak"]),
    ("mysql", &["mysql"]),
    ("django-mariadb", &["django", "--mariadb"]),
    ("python", &[]),
];

fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_kib: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = dbha_agent::status::utc(std::time::SystemTime::now());
    format!(
        "Machine: {cores} cores ({cpu}, {}), {} GiB, Linux {}. Run: {}.",
        std::env::consts::ARCH,
        (mem_kib + (1 << 19)) >> 20,
        read("/proc/sys/kernel/osrelease").trim(),
        &date[..10]
    )
}

pub fn all(quick: bool) {
    let exe = std::env::current_exe().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut outputs = Vec::new();
    for (name, args) in SECTIONS {
        eprintln!("== {name}");
        let mut cmd = if name == "python" {
            let python = root.join(".venv/bin/python");
            if !python.exists() {
                eprintln!(
                    "skipping the Python benchmark: {} is missing (tests/setup.sh makes it)",
                    python.display()
                );
                continue;
            }
            let mut c = Command::new(python);
            c.arg(root.join("bench/python_bench.py"))
                .env("DBHA_TARGET_DIR", dbha_tests::target_dir());
            c
        } else {
            let mut c = Command::new(&exe);
            c.args(args);
            c
        };
        if quick {
            cmd.arg("--quick");
        }
        let out = cmd
            .stderr(Stdio::inherit())
            .output()
            .expect("run a benchmark");
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        println!("{text}\n");
        assert!(out.status.success(), "the {name} benchmark failed");
        outputs.push((name, text));
    }
    if quick {
        return;
    }
    let path = root.join("BENCHMARKS.md");
    let mut doc = std::fs::read_to_string(&path).expect("BENCHMARKS.md");
    for (name, text) in std::iter::once(("machine", machine())).chain(outputs) {
        let (open, close) = (
            format!("<!-- bench:{name} -->"),
            format!("<!-- /bench:{name} -->"),
        );
        match (doc.find(&open), doc.find(&close)) {
            (Some(a), Some(b)) if a < b => {
                doc.replace_range(a + open.len()..b, &format!("\n{text}\n"));
            }
            _ => eprintln!("BENCHMARKS.md has no {open} ... {close} block: not rewritten"),
        }
    }
    std::fs::write(&path, doc).expect("write BENCHMARKS.md");
    eprintln!("rewrote {}", path.display());
}
