pub fn demo(_short: bool) -> i32 {
    0
}
