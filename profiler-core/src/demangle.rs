//! Symbol names as people read them: Rust (legacy `_ZN...17h<hash>E` and v0 `_R`) and C++
//! (Itanium `_Z`) manglings are decoded; anything else is returned as is.

/// Demangles `name`, dropping Rust's hash suffix (it differs between builds and would split
/// identical sites in diffs of two reports).
pub fn demangle(name: &str) -> String {
    if let Ok(rust) = rustc_demangle::try_demangle(name) {
        return format!("{rust:#}");
    }
    if name.starts_with("_Z")
        && let Ok(symbol) = cpp_demangle::Symbol::new(name)
        && let Ok(text) = symbol.demangle(&cpp_demangle::DemangleOptions::default())
    {
        return text;
    }
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::demangle;

    #[test]
    fn rust_legacy_without_hash() {
        assert_eq!(
            demangle("_ZN4core3ptr13drop_in_place17h0123456789abcdefE"),
            "core::ptr::drop_in_place"
        );
    }

    #[test]
    fn rust_v0() {
        assert_eq!(demangle("_RNvCs1234_7mycrate4main"), "mycrate::main");
    }

    #[test]
    fn cpp_with_arguments() {
        assert_eq!(demangle("_ZN3foo3barEi"), "foo::bar(int)");
        assert_eq!(demangle("_Znwm"), "operator new(unsigned long)");
    }

    #[test]
    fn c_names_pass_through() {
        assert_eq!(demangle("malloc"), "malloc");
        assert_eq!(demangle("_Zgarbage"), "_Zgarbage");
    }
}
