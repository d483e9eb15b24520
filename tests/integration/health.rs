//! Health checks and readiness: an upstream going down is alerted to a local webhook once, its
//! recovery once, and nothing while it flaps faster than the minimum interval; `/readyz`
//! follows NATS while `/healthz` follows the process.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use mcpq_dispatcher::HttpOptions;
use mcpq_schemas::{health::Alert, nats::connect};
use mcpq_tests::{eventually, fixture::HttpFixture, stack::Stack};
use serde_json::Value;

/// A webhook receiver: every JSON body posted, by path.
async fn receiver() -> (String, Arc<Mutex<Vec<(String, Value)>>>) {
    let seen: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().fallback(axum::routing::post(
        move |uri: axum::http::Uri, body: axum::Json<Value>| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push((uri.path().to_string(), body.0));
                "ok"
            }
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_down_is_alerted_once_back_up_once_and_flapping_is_quiet() {
    let web = HttpFixture::start().await;
    let (hooks, seen) = receiver().await;
    let stack = Stack::start_config(&format!(
        r#"version: "1.0"
alerts:
  - {{url: "{hooks}/json", kind: json}}
  - {{url: "{hooks}/slack", kind: slack}}
servers:
  - name: web
    type: http
    endpoint: "{url}"
    health: {{interval: 200ms, timeout: 500ms, unhealthyAfter: 3, minAlertInterval: 10s}}
"#,
        url = web.url()
    ))
    .await;
    let json_alerts = || -> Vec<Alert> {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|(path, _)| path == "/json")
            .map(|(_, body)| serde_json::from_value(body.clone()).unwrap())
            .collect()
    };
    let slack_texts = || -> Vec<String> {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|(path, _)| path == "/slack")
            .map(|(_, body)| body["text"].as_str().unwrap().to_string())
            .collect()
    };
    let js = async_nats::jetstream::new(connect(&stack.nats.url(), "health").await.unwrap());
    let health = js
        .get_key_value(mcpq_schemas::names::HEALTH_BUCKET)
        .await
        .unwrap();
    let record = || {
        let health = health.clone();
        async move {
            let bytes = health.get("web").await.ok()??;
            serde_json::from_slice::<mcpq_schemas::health::HealthRecord>(&bytes).ok()
        }
    };
    eventually("web seen up", Duration::from_secs(30), || {
        let r = record();
        async move { r.await.filter(|r| r.up).map(|_| ()) }
    })
    .await;
    assert!(json_alerts().is_empty(), "up from the start is no news");

    // Down: one alert, within a few health intervals (3 failed pings of 200 ms).
    web.fixture.go_down();
    let down = eventually("the down alert", Duration::from_secs(10), || {
        let alerts = json_alerts();
        async move { (!alerts.is_empty()).then_some(alerts) }
    })
    .await;
    assert_eq!(down.len(), 1);
    assert_eq!(
        (down[0].server.as_str(), down[0].state.as_str()),
        ("web", "down")
    );
    assert!(down[0].error.is_some());

    // Back up: one recovery (after the minimum interval since the last alert).
    web.fixture.come_up();
    let both = eventually("the recovery alert", Duration::from_secs(20), || {
        let alerts = json_alerts();
        async move { (alerts.len() >= 2).then_some(alerts) }
    })
    .await;
    assert_eq!(both.len(), 2);
    assert_eq!(both[1].state, "up");

    // Flapping faster than the minimum interval: down, up, down, up within 10 s (about 2 s when
    // the machine is idle; the margin is for a loaded one).
    for _ in 0..2 {
        web.fixture.go_down();
        eventually("seen down while flapping", Duration::from_secs(10), || {
            let r = record();
            async move { r.await.filter(|r| !r.up).map(|_| ()) }
        })
        .await;
        web.fixture.come_up();
        eventually("seen up while flapping", Duration::from_secs(10), || {
            let r = record();
            async move { r.await.filter(|r| r.up).map(|_| ()) }
        })
        .await;
    }
    // It settled where the last alert left it: once the interval is over, still no news.
    let last = record().await.unwrap();
    let quiet_until = last.alerted_at_ms + 10_000 + 1_000;
    while mcpq_schemas::now_ms() < quiet_until {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        json_alerts().len(),
        2,
        "no alert while flapping: {:?}",
        json_alerts()
    );
    let texts = slack_texts();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(
        texts[0].contains("web is down") && texts[1].contains("web is up"),
        "{texts:?}"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_nats_and_healthz_the_process() {
    let web = HttpFixture::start().await;
    let mut stack = Stack::start(&crate::two_fixtures(&web.url())).await;
    let addr = stack
        .another_dispatcher_with(HttpOptions {
            sample_every: Duration::from_millis(300),
            ..HttpOptions::default()
        })
        .await;
    let get = |path: &'static str| async move {
        reqwest::get(format!("http://{addr}{path}"))
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    let status_is = |path: &'static str, want: u16, what: &'static str| async move {
        eventually(what, Duration::from_secs(30), || async move {
            (get(path).await == want).then_some(())
        })
        .await
    };
    status_is("/readyz", 200, "ready").await;
    stack.nats.stop();
    status_is("/readyz", 503, "not ready without NATS").await;
    assert_eq!(get("/healthz").await, 200, "alive all the same");
    stack.nats.start_again();
    status_is("/readyz", 200, "ready again").await;
}
