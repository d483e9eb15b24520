//! The fixture MCP server over stdio, for tests that need a real child process.

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    mcpq_tests::fixture::Fixture::new(true).serve_stdio().await
}
