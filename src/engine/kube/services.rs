//! Traffic through Services ([`ServiceTraffic`]): the blue-green switch moves a Service's
//! selector, a canary splits it ([`super::canary`]), the old pods are waited out of its
//! EndpointSlices ([`super::watch`]), a canary's figures come from Prometheus.

use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service as KService;
use kube::api::{Api, DeleteParams, Patch, PatchParams};

use super::api::{api_error, delete_ok};
use super::objects::service_for;
use super::{FIELD_MANAGER, KubeEngine, canary, namespace};
use crate::engine::{EngineError, ServiceTraffic, Split, Unrouted};

/// Traffic moves through Services: a selector switch, a canary split, their endpoints watched.
#[async_trait]
impl ServiceTraffic for KubeEngine {
    /// The blue-green switch: Service `service` is applied whole, selecting exactly the pods of
    /// Deployment `container`. Nothing else changes; the previous Deployment keeps running until
    /// it is removed.
    async fn route_service(
        &self,
        env: &str,
        service: &str,
        container: &str,
    ) -> Result<(), EngineError> {
        let ns = namespace(env);
        let absent = || EngineError::Call {
            action: "switch",
            object: format!("Service {service}"),
            reason: format!("its target, Deployment {container}, is not in {ns}"),
        };
        let d: Deployment = self.read_present(&self.api(&ns), container, absent).await?;
        let Some(svc) = service_for(service, &d) else {
            // No port: nothing reaches it through a Service.
            return Ok(());
        };
        let api: Api<KService> = self.api(&ns);
        api.patch(
            service,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&svc),
        )
        .await
        .map_err(|e| api_error(e, "switch", &format!("Service {service}")))?;
        Ok(())
    }

    /// Watches the Service's EndpointSlices until no endpoint is a pod of `container`
    /// ([`watch`]: a 410 Gone lists them again).
    async fn wait_unrouted(
        &self,
        env: &str,
        service: &str,
        container: &str,
        limit: Duration,
    ) -> Result<Unrouted, EngineError> {
        self.wait_out_of_endpoints(&namespace(env), service, container, limit)
            .await
    }

    /// A canary: weights on the HTTPRoute that sends to the service, else a replica ratio
    /// ([`canary`]).
    async fn split_service(
        &self,
        env: &str,
        service: &str,
        stable: &str,
        candidate: &str,
        percent: u8,
    ) -> Result<Split, EngineError> {
        self.split(env, service, stable, candidate, percent).await
    }

    async fn end_split(
        &self,
        env: &str,
        service: &str,
        kept: Option<&str>,
    ) -> Result<(), EngineError> {
        self.unsplit(env, service, kept).await
    }

    fn measures(&self) -> bool {
        self.prometheus.is_some()
    }

    /// The Service of a service dropped from the manifest (and a canary Service a crash left).
    async fn remove_route(&self, env: &str, service: &str) -> Result<(), EngineError> {
        let api: Api<KService> = self.api(&namespace(env));
        for name in [service.to_string(), canary::canary_service(service)] {
            delete_ok(
                api.delete(&name, &DeleteParams::background()).await,
                &format!("Service {name}"),
            )?;
        }
        Ok(())
    }

    /// The candidate's figures from Prometheus, when rollout.yaml names one.
    async fn measure(
        &self,
        env: &str,
        service: &str,
        candidate: &str,
        window: Duration,
    ) -> Result<Option<crate::prometheus::Measured>, EngineError> {
        let Some(settings) = &self.prometheus else {
            return Ok(None);
        };
        let ns = namespace(env);
        let vars = crate::prometheus::Vars {
            namespace: &ns,
            service,
            deployment: candidate,
            window,
        };
        crate::prometheus::measure(settings, &vars)
            .await
            .map(Some)
            .map_err(|reason| EngineError::Call {
                action: "measure",
                object: format!(
                    "the {service} candidate ({candidate}) in Prometheus {}",
                    settings.url
                ),
                reason,
            })
    }
}
