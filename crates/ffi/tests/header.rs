//! The committed C header is what cbindgen makes of the sources now.
//!
//! Regenerate it with `PODCACHE_BLESS=1 cargo test -p podcache-ffi --test header`.

use std::path::Path;

#[test]
fn committed_header_matches_the_sources() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen could not generate the header");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let generated = String::from_utf8(generated).expect("the header is UTF-8");
    let committed_path = crate_dir.join("include/podcache.h");
    if std::env::var_os("PODCACHE_BLESS").is_some() {
        std::fs::write(&committed_path, &generated).expect("write include/podcache.h");
        return;
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(|| committed.lines().count().min(generated.lines().count()) + 1, |i| i + 1);
        panic!(
            "crates/ffi/include/podcache.h is out of date with the Rust sources (first difference at line \
             {line}).\nRegenerate it and commit the result:\n    PODCACHE_BLESS=1 cargo test -p podcache-ffi \
             --test header"
        );
    }
}
