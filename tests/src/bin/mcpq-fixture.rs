//! The fixture MCP server as a process: over stdio (default), or over streamable HTTP with
//! `--http ADDR` (for benchmarks and manual runs).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--http") => {
            let addr = args.get(2).map_or("127.0.0.1:0", String::as_str).parse()?;
            let server = mcpq_tests::fixture::HttpFixture::start_on(addr).await;
            println!("{}", server.url());
            tokio::signal::ctrl_c().await?;
            Ok(())
        }
        None => mcpq_tests::fixture::Fixture::new(true).serve_stdio().await,
        Some(other) => {
            anyhow::bail!("unknown argument {other:?} (usage: mcpq-fixture [--http ADDR])")
        }
    }
}
