//! Where an object lives: the store's key format, shared by the store and
//! by every in-memory view of it, so a resource in one namespace is one
//! contiguous range in both.

/// Storage key for one object.
pub fn key(group: &str, resource: &str, namespace: &str, name: &str) -> String {
    format!("{group}\0{resource}\0{namespace}\0{name}")
}

/// Prefix of every object of a resource, optionally in one namespace.
pub fn prefix(group: &str, resource: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("{group}\0{resource}\0{ns}\0"),
        None => format!("{group}\0{resource}\0"),
    }
}
