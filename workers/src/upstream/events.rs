//! What an upstream tells a worker outside of replies, routed to the call it belongs to:
//! progress and log messages (seen in the transport, in order: [`Observed`]), list changes,
//! resource updates, and the questions it asks its client (relayed to the caller: `ask`).

use std::{collections::HashMap, sync::Arc};

use mcpq_schemas::{LogMessage, Progress, bridge};
#[allow(deprecated)]
// sampling, roots and logging are deprecated by SEP-2577; upstreams still use them
use rmcp::{
    ClientHandler, ErrorData, RoleClient,
    model::{
        ClientCapabilities, ClientConfig, CreateMessageRequestParams, CreateMessageResult,
        ElicitRequestParams, ElicitResult, ErrorCode, Implementation, JsonRpcMessage,
        ListRootsResult, LoggingMessageNotificationParam, ProgressToken, RequestId,
        ResourceUpdatedNotificationParam, ServerNotification,
    },
    service::{
        InboundStreamOrigin, NotificationContext, RequestContext, RxJsonRpcMessage,
        TxJsonRpcMessage,
    },
    transport::Transport,
};
use tokio::sync::{Notify, mpsc};

use super::Subscriptions;
use crate::lock;

/// What a worker declares to its upstreams: everything mcpq relays to callers.
pub(crate) fn worker_capabilities() -> serde_json::Value {
    serde_json::json!({
        "sampling": {"tools": {}, "context": {}},
        "elicitation": {"form": {}, "url": {}},
        "roots": {}
    })
}

/// Whoever answers the questions an upstream asks during one call: the call's caller, reached
/// through NATS (`call::ask`). The upstream layer only routes questions to it.
pub(crate) trait Ask: Send + Sync {
    fn ask<'a>(
        &'a self,
        method: &'a str,
        params: serde_json::Value,
    ) -> futures::future::BoxFuture<'a, Result<serde_json::Value, ErrorData>>;
}

/// What the upstream reports during one call, in the order it reported it.
#[derive(Debug)]
pub(crate) enum CallEvent {
    Progress(Progress),
    Log(LogMessage),
    /// The questions the job's record shows as waiting (`None`: none); the sender hears once
    /// the record says so.
    Input(
        Option<mcpq_schemas::PendingInput>,
        tokio::sync::oneshot::Sender<()>,
    ),
    /// The upstream made the call a task: the record is the caller's task from now on; the
    /// sender hears once the record is written.
    Task(tokio::sync::oneshot::Sender<()>),
}

/// Where each call in flight wants its progress, by the progress token rmcp gave its request.
pub(crate) type ProgressRoutes = Arc<std::sync::Mutex<Progressing>>;

/// Progress routes, and progress that came before its call's route was in place (an upstream
/// may report progress before rmcp hands the request back to the worker).
#[derive(Default)]
pub(crate) struct Progressing {
    routes: HashMap<(u64, ProgressToken), mpsc::UnboundedSender<CallEvent>>,
    early: HashMap<(u64, ProgressToken), Vec<Progress>>,
}

/// How many calls' early progress is kept at most; older ones belonged to calls that ended.
const EARLY_CALLS: usize = 256;

impl Progressing {
    /// Routes the progress of `token` on `session` to `to`, starting with whatever came early.
    /// Tokens are rmcp's numbers, counted per session: only the pair names one request.
    pub(crate) fn add(
        &mut self,
        session: u64,
        token: ProgressToken,
        to: mpsc::UnboundedSender<CallEvent>,
    ) {
        let key = (session, token);
        for progress in self.early.remove(&key).unwrap_or_default() {
            let _ = to.send(CallEvent::Progress(progress));
        }
        self.routes.insert(key, to);
    }

    pub(crate) fn remove(&mut self, session: u64, token: &ProgressToken) {
        let key = (session, token.clone());
        self.routes.remove(&key);
        self.early.remove(&key);
    }

    fn route(&mut self, session: u64, token: ProgressToken, progress: Progress) {
        let token = (session, token);
        match self.routes.get(&token) {
            Some(to) => {
                let _ = to.send(CallEvent::Progress(progress));
            }
            None => {
                if self.early.len() >= EARLY_CALLS {
                    self.early.clear();
                }
                self.early.entry(token).or_default().push(progress);
            }
        }
    }
}

/// Every call in flight on this upstream, by a number of the worker's.
pub(crate) type CallsInFlight = Arc<std::sync::Mutex<HashMap<u64, CallEntry>>>;

/// One call in flight: where its log messages go (if its caller wants them), who answers the
/// upstream's questions, and the id of its request upstream once sent.
#[derive(Clone, Default)]
pub(crate) struct CallEntry {
    pub logs: Option<LogRoute>,
    pub asker: Option<Arc<dyn Ask>>,
    pub request_id: Option<RequestId>,
    /// The session its request went on (request ids are counted per session).
    pub session: Option<u64>,
    /// Between rounds of a 2026-07-28 call (its questions are with the caller): no request of
    /// it is upstream, so nothing the upstream sends now is its.
    pub between_rounds: bool,
    /// On the plain path (`call::plain`): what the upstream sends for it comes on its own
    /// stream, so nothing from a session is ever guessed to be its.
    pub plain: bool,
}

/// Where one call's log messages go.
#[derive(Clone)]
pub(crate) struct LogRoute {
    pub to: mpsc::UnboundedSender<CallEvent>,
    pub min_level: String,
}

/// What the upstream tells us outside of replies.
#[derive(Clone)]
pub(crate) struct Events {
    /// Signalled when the upstream says its tools, resources or prompts changed.
    pub offer_changed: Arc<Notify>,
    /// `notifications/progress` go to the call that holds the token.
    pub progress: ProgressRoutes,
    /// `notifications/message` go to the call in flight, when there is exactly one.
    pub calls: CallsInFlight,
    /// `notifications/resources/updated` are announced to dispatchers.
    pub subscriptions: Subscriptions,
    /// List answers kept as the upstream wrote them, for the catalog.
    pub tap: Arc<super::tap::ListTap>,
    /// Which of the upstream's sessions this handler serves (0 before one is opened): what a
    /// session reports is matched to calls on that session only.
    pub session: u64,
}

#[allow(deprecated)] // sampling, roots and logging are deprecated by SEP-2577; upstreams still use them
impl ClientHandler for Events {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.offer_changed.notify_one();
    }

    async fn on_resource_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.offer_changed.notify_one();
    }

    async fn on_prompt_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.offer_changed.notify_one();
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.subscriptions.updated(params.uri);
    }

    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        self.relay("sampling/createMessage", &params, &context)
            .await
    }

    async fn create_elicitation(
        &self,
        params: ElicitRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        self.relay("elicitation/create", &params, &context).await
    }

    /// Asked outside of any call (server-everything asks at once), the worker has no roots.
    async fn list_roots(
        &self,
        context: RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, ErrorData> {
        if lock(&self.calls).is_empty() {
            return Ok(ListRootsResult::default());
        }
        self.relay("roots/list", &serde_json::json!({}), &context)
            .await
    }

    /// The worker can answer whatever the caller of a call can: it asks them (every mode and
    /// feature of each, relayed whole; a caller that did not declare the one a question uses
    /// is refused at once, see `call::ask`).
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            serde_json::from_value::<ClientCapabilities>(worker_capabilities()).unwrap_or_default(),
            Implementation::new("mcpq-worker", env!("CARGO_PKG_VERSION")),
        )
    }
}

impl Events {
    /// The handler of one session: the same shared routes, its own session number.
    pub(crate) fn for_session(&self, session: u64) -> Events {
        Events {
            session,
            ..self.clone()
        }
    }

    /// Sees every notification as the transport delivers it, in order and before the response
    /// that follows it (rmcp hands notifications to the handler in tasks of their own, which
    /// may run after the response — and out of order): progress and log messages are routed to
    /// their call here.
    pub(crate) fn observe(&self, notification: &ServerNotification) {
        match notification {
            ServerNotification::ProgressNotification(n) => {
                let params = &n.params;
                lock(&self.progress).route(
                    self.session,
                    params.progress_token.clone(),
                    Progress {
                        progress: params.progress,
                        total: params.total,
                        message: params.message.clone(),
                    },
                );
            }
            #[allow(deprecated)] // logging is deprecated by SEP-2577; upstreams still log
            ServerNotification::LoggingMessageNotification(n) => self.log(&n.params),
            _ => {}
        }
    }

    /// A log message names no request, so it can only be given to the call it belongs to
    /// when one call alone is in flight on this session (a call between rounds is not); otherwise it is not guessed at (and
    /// never shown to another caller), only logged here.
    #[allow(deprecated)] // logging is deprecated by SEP-2577; upstreams still log
    fn log(&self, params: &LoggingMessageNotificationParam) {
        let level = serde_json::to_value(params.level)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "info".into());
        let calls = lock(&self.calls);
        let mut only = calls
            .values()
            .filter(|c| !c.between_rounds && !c.plain && c.session == Some(self.session));
        match (only.next().and_then(|c| c.logs.as_ref()), only.next()) {
            (Some(route), None) if bridge::log_passes(&level, &route.min_level) => {
                let _ = route.to.send(CallEvent::Log(LogMessage {
                    level,
                    logger: params.logger.clone(),
                    data: params.data.clone(),
                }));
            }
            _ => tracing::debug!(level, data = %params.data, "upstream log message"),
        }
    }

    /// Relays a question of the upstream to the caller of the call it belongs to: the call
    /// whose request's response stream carried it, or else the only call in flight.
    async fn relay<P: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        params: &P,
        context: &RequestContext<RoleClient>,
    ) -> Result<R, ErrorData> {
        let origin = match context.extensions.get::<InboundStreamOrigin>() {
            Some(InboundStreamOrigin::OutboundRequest(id)) => Some(id.clone()),
            _ => None,
        };
        let asker = {
            let calls = lock(&self.calls);
            let by_origin = origin.and_then(|id| {
                calls
                    .values()
                    .find(|c| c.session == Some(self.session) && c.request_id.as_ref() == Some(&id))
                    .cloned()
            });
            let only = || {
                let mut all = calls
                    .values()
                    .filter(|c| !c.between_rounds && !c.plain && c.session == Some(self.session));
                match (all.next(), all.next()) {
                    (Some(call), None) => Some(call.clone()),
                    _ => None,
                }
            };
            by_origin.or_else(only).map(|c| c.asker)
        };
        let Some(asker) = asker else {
            return Err(ErrorData::internal_error(
                format!("mcpq cannot tell which of the calls in flight {method} belongs to"),
                None,
            ));
        };
        let Some(asker) = asker else {
            return Err(ErrorData::new(
                ErrorCode::METHOD_NOT_FOUND,
                format!("nobody can answer {method} for this call"),
                None,
            ));
        };
        let params = serde_json::to_value(params)
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        let answer = asker.ask(method, params).await?;
        serde_json::from_value(answer).map_err(|e| {
            ErrorData::invalid_params(
                format!("the caller's answer to {method} is not valid: {e}"),
                None,
            )
        })
    }
}

/// A transport whose incoming notifications `Events` sees first, in order.
pub(super) struct Observed<T> {
    inner: T,
    events: Events,
    /// This transport's list requests, for the catalog (see `tap`).
    conversation: super::tap::Conversation,
}

impl<T> Observed<T> {
    pub(super) fn new(inner: T, events: Events, conversation: super::tap::Conversation) -> Self {
        Observed {
            inner,
            events,
            conversation,
        }
    }
}

impl<T: Transport<RoleClient>> Transport<RoleClient> for Observed<T> {
    type Error = T::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.conversation.asked(&item);
        self.inner.send(item)
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        let message = self.inner.receive().await?;
        if let JsonRpcMessage::Notification(n) = &message {
            self.events.observe(&n.notification);
        }
        Some(message)
    }

    fn close(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.inner.close()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod session_tests {
    use rmcp::model::NumberOrString;

    use super::*;

    #[test]
    fn the_same_token_on_two_sessions_names_two_calls() {
        let mut routes = Progressing::default();
        let (a, mut heard_a) = mpsc::unbounded_channel();
        let (b, mut heard_b) = mpsc::unbounded_channel();
        let token = ProgressToken(NumberOrString::Number(3));
        routes.add(1, token.clone(), a);
        routes.add(2, token.clone(), b);
        let progress = |n: f64| Progress {
            progress: n,
            total: None,
            message: None,
        };
        routes.route(1, token.clone(), progress(1.0));
        routes.route(2, token.clone(), progress(2.0));
        let Ok(CallEvent::Progress(got)) = heard_a.try_recv() else {
            panic!("session 1's call hears its progress")
        };
        assert_eq!(got.progress, 1.0);
        assert!(heard_a.try_recv().is_err(), "and nothing of session 2's");
        let Ok(CallEvent::Progress(got)) = heard_b.try_recv() else {
            panic!("session 2's call hears its progress")
        };
        assert_eq!(got.progress, 2.0);
        routes.remove(1, &token);
        routes.route(2, token, progress(3.0));
        assert!(
            matches!(heard_b.try_recv(), Ok(CallEvent::Progress(_))),
            "session 2's route stays"
        );
    }
}
