//! What a failed Docker call was, and how it becomes an [`EngineError`]: a lost connection
//! (retried by `engine::retry`) told apart from the engine's own answers, and every call bounded
//! by a timeout so a hung engine never hangs rollout.

use std::future::Future;
use std::time::Duration;

use bollard::errors::Error as BollardError;

use super::CALL_TIMEOUT;
use crate::engine::{EngineError, error_chain};

/// Why one bollard call did not succeed.
pub(super) enum Failure {
    Timeout(Duration),
    Docker(BollardError),
}

impl Failure {
    pub(super) fn status(&self) -> Option<u16> {
        match self {
            Failure::Docker(BollardError::DockerResponseServerError { status_code, .. }) => {
                Some(*status_code)
            }
            _ => None,
        }
    }

    pub(super) fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// The engine's own message for a refused call, else the whole reason.
    pub(super) fn message(&self) -> String {
        match self {
            Failure::Docker(BollardError::DockerResponseServerError { message, .. }) => {
                message.clone()
            }
            other => other.reason(),
        }
    }

    pub(super) fn reason(&self) -> String {
        match self {
            Failure::Timeout(limit) => {
                format!("the engine did not answer within {}s", limit.as_secs())
            }
            Failure::Docker(e) => error_chain(e),
        }
    }

    pub(super) fn call(self, action: &'static str, object: &str) -> EngineError {
        if self.is_connection_lost() {
            return EngineError::Lost {
                action,
                object: object.to_string(),
                reason: self.reason(),
            };
        }
        EngineError::Call {
            action,
            object: object.to_string(),
            reason: self.reason(),
        }
    }

    /// The engine did not answer, or the connection to it failed (socket gone, refused, reset,
    /// closed mid-answer): worth asking again; an answer from the engine is not.
    pub(super) fn is_connection_lost(&self) -> bool {
        let Failure::Docker(e) = self else {
            return true;
        };
        if matches!(e, BollardError::DockerResponseServerError { .. }) {
            return false;
        }
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<std::io::Error>()
                && matches!(
                    io.kind(),
                    std::io::ErrorKind::NotFound
                        | std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::NotConnected
                )
            {
                return true;
            }
            if let Some(h) = s.downcast_ref::<hyper::Error>()
                && (h.is_closed() || h.is_incomplete_message() || h.is_canceled())
            {
                return true;
            }
            source = s.source();
        }
        // hyper-util's client wraps connect failures without exposing the type.
        let text = error_chain(e);
        text.contains("client error (Connect)") || text.contains("connection closed")
    }
}

pub(super) async fn timed<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, BollardError>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Failure::Docker(e)),
        Err(_) => Err(Failure::Timeout(limit)),
    }
}

pub(super) async fn call<T>(
    fut: impl Future<Output = Result<T, BollardError>>,
) -> Result<T, Failure> {
    timed(CALL_TIMEOUT, fut).await
}
