//! Resource subscriptions through the queue: a client subscribes through mcpq, the upstream
//! later says the resource changed, and the client hears it — a 2025-era session through
//! `resources/subscribe`, a 2026-07-28 client on a `subscriptions/listen` stream — in front of
//! upstreams of both eras; after unsubscribing it hears nothing more.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use mcpq_tests::eventually;
use rmcp::{
    ClientHandler, RoleClient, ServiceExt,
    model::{
        CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation, ProtocolVersion,
        ResourceUpdatedNotificationParam, ServerNotification, SubscribeRequestParams,
        SubscriptionFilter, UnsubscribeRequestParams,
    },
    service::NotificationContext,
    transport::StreamableHttpClientTransport,
};
use serde_json::json;

use crate::bridge::{modern_and_legacy, modern_client};

/// A 2025-era client that notes every resource update it hears.
#[derive(Clone, Default)]
struct Heard(Arc<Mutex<Vec<String>>>);

impl ClientHandler for Heard {
    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.0.lock().unwrap().push(params.uri);
    }

    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("test-subscriber", "1"),
        )
        .with_protocol_version(ProtocolVersion::V_2025_06_18)
    }
}

impl Heard {
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    async fn until(&self, uri: &str) {
        eventually(
            &format!("an update of {uri}"),
            Duration::from_secs(20),
            || {
                let heard = self.all().iter().any(|u| u == uri);
                async move { heard.then_some(()) }
            },
        )
        .await;
    }
}

fn touch(tool: &str, uri: &str) -> CallToolRequestParams {
    CallToolRequestParams::new(tool.to_string())
        .with_arguments(json!({"uri": uri}).as_object().cloned().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(deprecated)] // resources/subscribe is the 2025-era way, which mcpq serves
async fn subscribed_clients_hear_resource_updates_until_they_unsubscribe() {
    let stack = modern_and_legacy("2025-06-18").await;

    // A 2025-era session on the aggregated endpoint, subscribed to one resource of each.
    let heard = Heard::default();
    let session = heard
        .clone()
        .serve(StreamableHttpClientTransport::from_uri(stack.mcp_url()))
        .await
        .unwrap();
    let watched = "mcpq://modern/test://watched-resource";
    let barrier = "mcpq://legacy/test://static-text";
    for uri in [watched, barrier] {
        session
            .subscribe(SubscribeRequestParams::new(uri))
            .await
            .unwrap();
    }
    session
        .call_tool(touch(
            "modern__test_touch_resource",
            "test://watched-resource",
        ))
        .await
        .unwrap();
    heard.until(watched).await;
    session
        .call_tool(touch("legacy__test_touch_resource", "test://static-text"))
        .await
        .unwrap();
    heard.until(barrier).await;

    // Unsubscribed: a later update is not heard (the barrier's second update comes after it).
    session
        .unsubscribe(UnsubscribeRequestParams::new(watched))
        .await
        .unwrap();
    session
        .call_tool(touch(
            "modern__test_touch_resource",
            "test://watched-resource",
        ))
        .await
        .unwrap();
    session
        .call_tool(touch("legacy__test_touch_resource", "test://static-text"))
        .await
        .unwrap();
    eventually(
        "the barrier's second update",
        Duration::from_secs(20),
        || {
            let twice = heard.all().iter().filter(|u| *u == barrier).count() == 2;
            async move { twice.then_some(()) }
        },
    )
    .await;
    assert_eq!(
        heard.all().iter().filter(|u| *u == watched).count(),
        1,
        "{:?}",
        heard.all()
    );
    let _ = session.cancel().await;

    // A 2026-07-28 client names the resources on its listen stream, here in front of a
    // 2025-era upstream, on the server's own endpoint.
    let client = modern_client(&stack.server_url("legacy")).await;
    let mut listening = client
        .peer()
        .listen(
            SubscriptionFilter::builder()
                .resource_subscription("test://watched-resource")
                .build(),
        )
        .await
        .unwrap();
    // rmcp acknowledges the stream before mcpq has the upstream listen (a job later), so the
    // resource is touched until an update comes.
    let update = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            client
                .call_tool(touch("test_touch_resource", "test://watched-resource"))
                .await
                .unwrap();
            let heard = tokio::time::timeout(Duration::from_millis(500), async {
                loop {
                    if let Ok(Some(ServerNotification::ResourceUpdatedNotification(n))) =
                        listening.next().await
                    {
                        return n.params.uri;
                    }
                }
            })
            .await;
            if let Ok(uri) = heard {
                return uri;
            }
        }
    })
    .await
    .expect("an update on the listen stream");
    assert_eq!(update, "test://watched-resource");
    let _ = listening.cancel().await;
    let _ = client.cancel().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_follow_the_upstreams_list_changed() {
    let stack = modern_and_legacy("2025-06-18").await;
    // A 2026-07-28 upstream says so on a listen stream, a 2025-era one on its session; either
    // way the catalog is listed again and every endpoint serves the new list.
    for server in ["modern", "legacy"] {
        let uri = format!("test://added/{server}");
        let reply = stack
            .call(server, "test_add_resource", json!({"uri": uri}))
            .await;
        assert!(
            matches!(reply.outcome, mcpq_schemas::Outcome::Ok { .. }),
            "{reply:?}"
        );
        let client = modern_client(&stack.server_url(server)).await;
        eventually(
            &format!("{uri} listed by /servers/{server}/mcp"),
            Duration::from_secs(30),
            || {
                let (client, uri) = (&client, uri.clone());
                async move {
                    let listed = client.list_all_resources().await.ok()?;
                    listed.iter().any(|r| r.uri == uri).then_some(())
                }
            },
        )
        .await;
        let _ = client.cancel().await;
    }

    // A 2026-07-28 client's listen streams hear the list changes they asked for, and only the
    // lists that changed: a new tool reaches the tools stream, not the prompts one.
    for server in ["modern", "legacy"] {
        let client = modern_client(&stack.server_url(server)).await;
        let listen = |filter: SubscriptionFilter| {
            let peer = client.peer().clone();
            async move { peer.listen(filter).await.unwrap() }
        };
        let mut tools = listen(SubscriptionFilter::builder().tools_list_changed().build()).await;
        let mut prompts =
            listen(SubscriptionFilter::builder().prompts_list_changed().build()).await;
        client
            .call_tool(touch("test_trigger_tool_change", ""))
            .await
            .unwrap();
        let heard = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Ok(Some(ServerNotification::ToolListChangedNotification(_))) =
                    tools.next().await
                {
                    return;
                }
            }
        })
        .await;
        assert!(
            heard.is_ok(),
            "{server}: no tools list_changed on the listen stream"
        );
        let listed = client.list_all_tools().await.unwrap();
        assert!(
            listed.iter().any(|t| t.name == "test_dynamic_tool_1"),
            "{server}: the new tool is listed"
        );
        let leaked = tokio::time::timeout(Duration::from_millis(500), prompts.next()).await;
        assert!(
            !matches!(
                leaked,
                Ok(Ok(Some(ServerNotification::PromptListChangedNotification(
                    _
                )))) | Ok(Ok(Some(ServerNotification::ToolListChangedNotification(_))))
            ),
            "{server}: the prompts stream heard of a tools change: {leaked:?}"
        );
        let _ = tools.cancel().await;
        let _ = prompts.cancel().await;
        let _ = client.cancel().await;
    }
    stack.stop().await;
}
