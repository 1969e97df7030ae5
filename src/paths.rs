//! Paths named in the config: relative ones are relative to the config file's folder.
//! A leaf module, so every component resolves its files the same way without depending on
//! the config module.

use std::path::{Path, PathBuf};

/// `value` as given when absolute, else joined to `base` (the config file's folder).
pub fn resolve(base: &Path, value: &str) -> PathBuf {
    let p = Path::new(value);
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}
