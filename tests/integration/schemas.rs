//! The pinned JSON Schemas under `schemas/json/` match the Rust types (regenerate with
//! `make schemas`), and every pinned example message validates against its schema.

#[test]
fn pinned_json_schemas_match_the_types() {
    let dir = mcpq_tests::repo_root().join("schemas/json");
    let bless = std::env::var_os("MCPQ_BLESS").is_some();
    let mut stale = Vec::new();
    for (name, fresh) in mcpq_schemas::json_schema::pinned() {
        let path = dir.join(name);
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &fresh).unwrap();
            continue;
        }
        let pinned = std::fs::read_to_string(&path).unwrap_or_default();
        if pinned != fresh {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "schemas/json is out of date for {stale:?}: the wire or config types changed. \
         Regenerate with `make schemas` and review the diff"
    );
}
