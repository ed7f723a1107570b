//! Names of tables, rings and sockets: a name never escapes the directory.

/// Longest name.
pub const MAX_NAME: usize = 64;

/// Check a table or ring name: `[A-Za-z0-9_-]{1,64}` (no `/`, no `.`, no NUL, not empty), so
/// `<dir>/<name>.table` always stays inside `<dir>`.
pub fn check(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("name is empty".into());
    }
    if name.len() > MAX_NAME {
        return Err(format!("name is {} bytes long, at most {MAX_NAME} allowed", name.len()));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-')) {
        return Err(format!("character {c:?} not allowed (use A-Z, a-z, 0-9, '_' and '-')"));
    }
    Ok(())
}

/// Check a socket file name: like [`check`], and `.` allowed after the first character.
pub fn check_socket(name: &str) -> Result<(), String> {
    if name.starts_with('.') {
        return Err("socket name must not start with '.'".into());
    }
    check(&name.replace('.', "_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["web", "a", "A-b_9", &"x".repeat(64)] {
            assert!(check(ok).is_ok(), "{ok}");
        }
        for bad in ["", "../x", "a/b", "a.b", "a\0b", ".", "..", "é", " a", &"x".repeat(65)] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
        assert!(check_socket("podcache.sock").is_ok());
        assert!(check_socket("../s").is_err());
        assert!(check_socket(".s").is_err());
        assert!(check_socket("a/b.sock").is_err());
    }
}
