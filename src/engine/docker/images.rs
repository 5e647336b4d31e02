//! Images on Docker: built locally from an in-memory context (nothing is ever pulled), and the
//! small utility image the volume copies run in.

use crate::engine::Engine;
use bollard::errors::Error as BollardError;
use bollard::query_parameters::BuildImageOptions;
use futures_util::StreamExt;

use super::failure::call;
use super::{BUILD_TAIL_LINES, BUILD_TIMEOUT, DockerEngine};
use crate::engine::image::{BuildContext, UTIL_IMAGE};
use crate::engine::{EngineError, error_chain, image};

impl DockerEngine {
    pub(super) async fn build(&self, tag: &str, context: &BuildContext) -> Result<(), EngineError> {
        let build_error = |reason: String| EngineError::Build {
            tag: tag.to_string(),
            reason,
        };
        let body = context
            .to_tar()
            .map_err(|e| build_error(format!("packing the build context: {e}")))?;
        let options = BuildImageOptions {
            dockerfile: "Dockerfile".to_string(),
            t: Some(tag.to_string()),
            rm: true,
            forcerm: true,
            ..Default::default()
        };
        let run = async {
            let mut stream = self.docker.build_image(
                options,
                None,
                Some(bollard::body_full(bytes::Bytes::from(body))),
            );
            let mut tail: Vec<String> = Vec::new();
            while let Some(item) = stream.next().await {
                match item {
                    Ok(info) => {
                        if let Some(line) = info.stream.as_deref().map(str::trim_end)
                            && !line.is_empty()
                        {
                            tracing::trace!(tag, "{line}");
                            if tail.len() == BUILD_TAIL_LINES {
                                tail.remove(0);
                            }
                            tail.push(line.to_string());
                        }
                    }
                    Err(e) => {
                        let mut reason = match e {
                            BollardError::DockerStreamError { error } => error,
                            other => error_chain(&other),
                        };
                        if !tail.is_empty() {
                            reason.push_str("\n  after: ");
                            reason.push_str(&tail.join("\n         "));
                        }
                        return Err(reason);
                    }
                }
            }
            Ok(())
        };
        match tokio::time::timeout(BUILD_TIMEOUT, run).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(build_error(reason)),
            Err(_) => Err(build_error(format!(
                "the build did not finish within {}s",
                BUILD_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Builds [`UTIL_IMAGE`] unless the engine has it.
    pub(super) async fn ensure_util_image(&self) -> Result<(), EngineError> {
        match call(self.docker.inspect_image(UTIL_IMAGE)).await {
            Ok(_) => return Ok(()),
            Err(f) if f.is_not_found() => {}
            Err(f) => return Err(f.call("inspect image", UTIL_IMAGE)),
        }
        let context = image::util_context().map_err(|e| EngineError::Build {
            tag: UTIL_IMAGE.to_string(),
            reason: e.to_string(),
        })?;
        self.build_image(UTIL_IMAGE, &context).await
    }
}
