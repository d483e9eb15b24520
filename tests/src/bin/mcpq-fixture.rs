//! The fixture MCP servers as processes:
//!
//!     mcpq-fixture                          the test fixture over stdio
//!     mcpq-fixture --http ADDR              the test fixture over streamable HTTP
//!     mcpq-fixture conformance [--http ADDR] [--revision YYYY-MM-DD]
//!                                           the conformance fixture, over stdio or HTTP,
//!                                           optionally serving one protocol revision only

use rmcp::model::ProtocolVersion;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    match args.first().map(String::as_str) {
        Some("--http") => {
            let addr = args.get(1).map_or("127.0.0.1:0", String::as_str).parse()?;
            let server = mcpq_tests::fixture::HttpFixture::start_on(addr).await;
            println!("{}", server.url());
            tokio::signal::ctrl_c().await?;
            Ok(())
        }
        None => mcpq_tests::fixture::Fixture::new(true).serve_stdio().await,
        Some("conformance") => {
            let pinned = match flag("--revision") {
                Some(r) => Some(
                    ProtocolVersion::KNOWN_VERSIONS
                        .iter()
                        .find(|v| v.as_str() == r)
                        .cloned()
                        .ok_or_else(|| anyhow::anyhow!("unknown revision {r:?}"))?,
                ),
                None => None,
            };
            match flag("--http") {
                Some(addr) => {
                    let server =
                        mcpq_tests::conformance::HttpConformance::start(addr.parse()?, pinned)
                            .await;
                    println!("{}", server.url());
                    tokio::signal::ctrl_c().await?;
                    Ok(())
                }
                None => {
                    mcpq_tests::conformance::Conformance::new(pinned)
                        .serve_stdio()
                        .await
                }
            }
        }
        Some(other) => anyhow::bail!(
            "unknown argument {other:?} (usage: mcpq-fixture [--http ADDR | conformance [--http ADDR] [--revision R]])"
        ),
    }
}
