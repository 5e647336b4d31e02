//! The engine's event stream, as [`ContainerEvent`]s: subscribed from the engine's own clock so
//! nothing between the call and the subscription is missed.

use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap};

use bollard::models::{EventMessage, EventMessageTypeEnum};
use bollard::query_parameters::EventsOptions;

use super::DockerEngine;
use super::containers::label_filters;
use super::failure::call;
use crate::engine::{
    ContainerEvent, EngineError, EventKind, EventStream, HealthState, error_chain, labels,
};

/// A container event of interest, from the engine's message; `None` for anything else.
pub(super) fn container_event(message: &EventMessage) -> Option<ContainerEvent> {
    if message
        .typ
        .is_some_and(|t| t != EventMessageTypeEnum::CONTAINER)
    {
        return None;
    }
    let attributes = message.actor.as_ref()?.attributes.as_ref()?;
    let container = attributes.get("name")?.trim_start_matches('/').to_string();
    let action = message.action.as_deref()?;
    let kind = match action {
        "start" => EventKind::Started,
        // Docker always reports the exit code of a `die`; -1 marks one it did not.
        "die" => EventKind::Died {
            exit_code: attributes
                .get("exitCode")
                .and_then(|c| c.parse().ok())
                .unwrap_or(-1),
        },
        "oom" => EventKind::OutOfMemory,
        other => {
            // `health_status: healthy` up to at least API 1.41; a bare action with the status
            // as an attribute is accepted too.
            let status = other.strip_prefix("health_status")?;
            let status = match status.trim_start_matches(':').trim() {
                "" => attributes.get("healthStatus")?.as_str(),
                s => s,
            };
            EventKind::Health(match status {
                "healthy" => HealthState::Healthy,
                "unhealthy" => HealthState::Unhealthy,
                "starting" => HealthState::Starting,
                _ => return None,
            })
        }
    };
    Some(ContainerEvent { container, kind })
}

/// A timestamp as the `since` query parameter of `/events` takes it: `seconds.nanoseconds`.
pub(super) fn since_param(t: jiff::Timestamp) -> String {
    format!("{}.{:09}", t.as_second(), t.subsec_nanosecond())
}

pub(super) fn event_filters(selector: &BTreeMap<String, String>) -> HashMap<String, Vec<String>> {
    let mut filters = label_filters(selector);
    filters.insert("type".to_string(), vec!["container".to_string()]);
    filters.insert(
        "event".to_string(),
        ["start", "die", "health_status", "oom"]
            .iter()
            .map(|e| e.to_string())
            .collect(),
    );
    filters
}

impl DockerEngine {
    pub(super) async fn subscribe(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<EventStream, EngineError> {
        // The subscription starts now, in the engine's clock: with `since`, the engine replays
        // from its (small, engine-wide) buffer what happened between this call and the moment
        // the request reaches it.
        let since = self.engine_now().await?;
        let options = EventsOptions {
            since: Some(since_param(since)),
            until: None,
            filters: Some(event_filters(selector)),
        };
        let object = labels::selector(selector);
        // Not bounded by the call timeout: the stream lives as long as its reader wants.
        let stream = self.docker.events(Some(options)).filter_map(move |item| {
            let out = match item {
                Ok(message) => container_event(&message).map(Ok),
                Err(e) => Some(Err(EngineError::Call {
                    action: "watch events of",
                    object: object.clone(),
                    reason: error_chain(&e),
                })),
            };
            futures_util::future::ready(out)
        });
        // bollard sends the request only when its stream is first polled: a task reads it at
        // once, so events wait here (selected ones only) rather than in the engine's buffer,
        // however late the caller starts reading. The task ends with the reader.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            loop {
                tokio::select! {
                    () = tx.closed() => break,
                    item = stream.next() => match item {
                        Some(item) => {
                            if tx.send(item).is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                }
            }
        });
        Ok(Box::pin(futures_util::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
        })))
    }

    /// The engine's clock now, so an event subscription starts at the engine's present even when
    /// its clock and ours disagree. Falls back to ours if the engine does not say.
    pub(super) async fn engine_now(&self) -> Result<jiff::Timestamp, EngineError> {
        let info = call(self.docker.info())
            .await
            .map_err(|f| f.call("read the time of", &self.endpoint))?;
        Ok(info
            .system_time
            .as_deref()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .unwrap_or_else(jiff::Timestamp::now))
    }
}
