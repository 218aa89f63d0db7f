//! Gives libdbha.so its soname, libdbha.so.MAJOR (the package's major version, as
//! reader/install.sh names the link), so that programs link against it and a
//! compatible upgrade replaces the library under them.
fn main() {
    let major =
        std::env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets CARGO_PKG_VERSION_MAJOR");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libdbha.so.{major}");
}
