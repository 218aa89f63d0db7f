//! `dbha-readloop PATH N`: opens a reader and calls `active_alias()` N times. Run
//! under strace by `tests/tests/no_syscalls.rs` to show that reads make no system
//! call.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (path, n) = match &args[..] {
        [_, path, n] => (path, n.parse::<u64>().expect("N")),
        _ => {
            eprintln!("usage: dbha-readloop PATH N");
            std::process::exit(2)
        }
    };
    let reader = dbha::Reader::open(path).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });
    let mut found = 0u64;
    for _ in 0..n {
        found += u64::from(std::hint::black_box(reader.write_alias()).is_some());
    }
    println!("write={found}");
}
