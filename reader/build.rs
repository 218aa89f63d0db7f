//! Gives libdbha.so its soname, so that programs link against libdbha.so.0 and a
//! compatible upgrade replaces the library under them.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libdbha.so.0");
}
