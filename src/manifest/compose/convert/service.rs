//! One compose service: its keys, `image` and `build`, `command` and `x-rollout`, with every
//! other concern handed to the file that owns it.

use serde::de::IgnoredAny;
use serde_saphyr::Location;

use super::variables::with_bare_keys;
use super::volumes::VolumeTable;
use super::{Converter, located};
use crate::manifest::compose::keys::{self, service_key_rule};
use crate::manifest::compose::shell::split_command;
use crate::manifest::compose::types::{ComposeService, Form, Strings, XRolloutService};
use crate::manifest::raw::RawService;
use crate::manifest::yaml::Spanned;

impl Converter<'_> {
    pub(super) fn service(
        &mut self,
        key: &Spanned<String>,
        svc: ComposeService,
        table: &mut VolumeTable,
    ) -> RawService {
        let ComposeService {
            image,
            command,
            environment,
            ports,
            expose,
            depends_on,
            healthcheck,
            volumes,
            x_rollout,
            other_keys,
        } = svc;
        let name = key.value.as_str();

        // `build` matters only beside `image`, below.
        let (build, other_keys): (Vec<_>, Vec<_>) =
            other_keys.into_iter().partition(|k| k.value == "build");
        let build = build.last().map(|b| b.referenced);
        self.other_keys(
            &other_keys,
            service_key_rule,
            keys::SERVICE_KEYS,
            &format!("in service `{name}`"),
        );

        let image = self.image(key, image, build);
        let command = command.as_ref().and_then(|c| self.command(name, c));
        let (env, bare_keys) = match environment.as_ref().map(|e| self.variables(name, e)) {
            Some((env, bare)) => (Some(env), bare),
            None => (None, Vec::new()),
        };
        let ports = self.ports(
            ports.as_deref().unwrap_or_default(),
            expose.as_deref().unwrap_or_default(),
        );
        let depends_on = depends_on.as_ref().map(|d| self.depends_on(d));
        let XRolloutService {
            stateful,
            managed_by,
            secrets,
            health: x_health,
        } = x_rollout.map(|x| x.value).unwrap_or_default();
        let health = self.health(name, x_health, healthcheck.as_ref());
        let volumes = self.volumes(name, volumes.as_deref().unwrap_or_default(), table);
        let secrets = with_bare_keys(secrets, bare_keys);
        RawService {
            image,
            command,
            env,
            secrets,
            ports: Some(ports),
            depends_on,
            health,
            stateful,
            volumes: Some(volumes),
            managed_by,
        }
    }

    /// The image to run: rollout runs images, it does not build them.
    fn image(
        &mut self,
        key: &Spanned<String>,
        image: Option<Spanned<String>>,
        build: Option<Location>,
    ) -> Spanned<String> {
        let name = &key.value;
        match (image, build) {
            (Some(i), b) => {
                if let Some(b) = b {
                    self.warn(
                        b,
                        format!("`build` is ignored: rollout runs the image `{}` and does not build it; build and push it before rolling out", i.value),
                    );
                }
                self.interp_spanned(&i).unwrap_or(i)
            }
            (None, Some(b)) => {
                self.error_help(
                    b,
                    format!("service `{name}` has `build` but no `image`: rollout runs images, it does not build them"),
                    "build the image first (`docker compose build`, or `docker build -t <name>:<tag> .`) and name it in `image:`",
                );
                located("unknown".to_string(), b)
            }
            (None, None) => {
                self.error(key.referenced, format!("service `{name}` has no `image`"));
                located("unknown".to_string(), key.referenced)
            }
        }
    }

    fn command(
        &mut self,
        name: &str,
        c: &Spanned<Form<Strings, IgnoredAny>>,
    ) -> Option<Vec<String>> {
        match &c.value {
            Form::Scalar(s) => {
                let text = self.interp(s, c.referenced)?;
                match split_command(&text) {
                    Ok(words) => Some(words),
                    Err(e) => {
                        self.error(
                            c.referenced,
                            format!("cannot split the command of service `{name}`: {e}"),
                        );
                        None
                    }
                }
            }
            Form::List(items) => items
                .iter()
                .map(|i| self.interp(&i.value, i.referenced))
                .collect(),
            other => {
                self.error(
                    c.referenced,
                    format!(
                        "`command` of service `{name}` is {}; expected a string or a list",
                        other.shape()
                    ),
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::manifest::compose::testing::{error_at, load_str, web};
    use crate::manifest::source::Pos;

    #[test]
    fn build_without_image_explains_that_rollout_runs_images() {
        let d = error_at(&web("    build: .\n"), 4, 5);
        assert_eq!(
            d.message(),
            "service `web` has `build` but no `image`: rollout runs images, it does not build them"
        );
        assert!(d.to_string().contains("build the image first"));

        let imported = load_str(&web("    build: .\n    image: shop-web:2\n")).unwrap();
        assert_eq!(imported.warnings[0].pos(), Some(Pos::new(4, 5)));
        assert!(
            imported.warnings[0]
                .message()
                .starts_with("`build` is ignored")
        );

        let d = error_at(&web("    command: [x]\n"), 3, 3);
        assert_eq!(d.message(), "service `web` has no `image`");
    }
}
