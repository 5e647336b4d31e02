//! A service's health: compose's `healthcheck` as rollout's exec probe, unless `x-rollout.health`
//! replaces it.

use serde_saphyr::Location;

use super::{Converter, like, located};
use crate::manifest::compose::types::{Form, Healthcheck};
use crate::manifest::raw::RawHealth;
use crate::manifest::yaml::{Spanned, Text};

impl Converter<'_> {
    /// The service's probe: `x-rollout.health` if given, else its `healthcheck` (with the
    /// position of its key).
    pub(super) fn health(
        &mut self,
        name: &str,
        x_health: Option<Spanned<RawHealth>>,
        healthcheck: Option<&(Location, Healthcheck)>,
    ) -> Option<Spanned<RawHealth>> {
        match (x_health, healthcheck) {
            (Some(h), Some((hc_at, _))) => {
                self.warn(
                    *hc_at,
                    format!(
                        "`healthcheck` of service `{name}` is replaced by its `x-rollout.health`"
                    ),
                );
                Some(h)
            }
            (Some(h), None) => Some(h),
            (None, Some((hc_at, hc))) => self.healthcheck(name, *hc_at, hc),
            (None, None) => None,
        }
    }

    fn healthcheck(
        &mut self,
        name: &str,
        hc_at: Location,
        hc: &Healthcheck,
    ) -> Option<Spanned<RawHealth>> {
        let Healthcheck {
            test,
            interval,
            timeout,
            start_period,
            start_interval,
            retries,
            disable,
        } = hc;
        if disable.as_ref().is_some_and(|d| d.value) {
            return None;
        }
        if let Some(s) = start_interval {
            self.warn(
                s.referenced,
                "`start_interval` is ignored: rollout probes at `interval` from the start",
            );
        }
        let Some(test) = test else {
            self.error_help(
                hc_at,
                format!("the healthcheck of service `{name}` has no `test`: rollout cannot use the image's own HEALTHCHECK"),
                "write the check, e.g. `test: [\"CMD\", \"/bin/check\"]`, or `disable: true`",
            );
            return None;
        };
        let words: Vec<Spanned<String>> = match &test.value {
            Form::Scalar(s) if s == "NONE" => return None,
            Form::Scalar(s) => vec![like("CMD-SHELL".to_string(), test), like(s.clone(), test)],
            Form::List(items) => items.clone(),
            other => {
                self.error(
                    test.referenced,
                    format!("a healthcheck `test` is {}; expected a list such as `[\"CMD\", \"/bin/check\"]`", other.shape()),
                );
                return None;
            }
        };
        let command: Vec<String> = match words.split_first() {
            Some((first, _)) if first.value == "NONE" => return None,
            Some((first, rest)) if first.value == "CMD" && !rest.is_empty() => rest
                .iter()
                .map(|w| self.interp(&w.value, w.referenced))
                .collect::<Option<_>>()?,
            Some((first, [script])) if first.value == "CMD-SHELL" => {
                let script = self.interp(&script.value, script.referenced)?;
                vec!["/bin/sh".into(), "-c".into(), script]
            }
            Some((first, _)) if first.value == "CMD-SHELL" => {
                self.error(
                    test.referenced,
                    "`CMD-SHELL` takes exactly one string, the shell command",
                );
                return None;
            }
            Some((first, _)) if first.value == "CMD" => {
                self.error(test.referenced, "`CMD` needs a command after it");
                return None;
            }
            _ => {
                self.error(
                    test.referenced,
                    "a healthcheck `test` list starts with `CMD`, `CMD-SHELL` or `NONE`",
                );
                return None;
            }
        };
        let mut timing = |t: &Option<Spanned<String>>| {
            t.as_ref()
                .and_then(|t| self.interp_spanned(t))
                .map(|t| like(Text(t.value.clone()), &t))
        };
        let health = RawHealth {
            http: None,
            tcp: None,
            exec: Some(like(command, test)),
            interval: timing(interval),
            timeout: timing(timeout),
            start_period: timing(start_period),
            retries: retries.clone(),
        };
        Some(located(health, hc_at))
    }
}

#[cfg(test)]
mod tests {
    use crate::manifest::compose::testing::{error_at, load_str, service, strings, web};
    use crate::manifest::env::Probe;

    #[test]
    fn bad_duration_is_located_in_the_compose_file() {
        let d = error_at(
            &web(
                "    image: a:1\n    healthcheck:\n      test: [CMD, /bin/check]\n      interval: 10secs\n",
            ),
            7,
            17,
        );
        assert_eq!(
            d.message(),
            "unknown unit `secs` in duration `10secs`; expected one of ms, s, m, h, d"
        );
    }

    #[test]
    fn healthcheck_forms() {
        let probe = |hc: &str| {
            let imported = load_str(&web(&format!("    image: a:1\n    healthcheck:\n{hc}")))
                .unwrap_or_else(|e| panic!("{e}"));
            service(&imported.environment, "web")
                .health
                .clone()
                .map(|h| h.probe)
        };
        assert_eq!(probe("      test: NONE\n"), None);
        assert_eq!(probe("      test: [NONE]\n"), None);
        assert_eq!(
            probe("      test: [CMD, check]\n      disable: true\n"),
            None
        );
        assert_eq!(
            probe("      test: [CMD-SHELL, \"curl -f localhost:$${PORT:-80}\"]\n"),
            Some(Probe::Exec {
                command: strings(&["/bin/sh", "-c", "curl -f localhost:${PORT:-80}"])
            })
        );
        let d = error_at(
            &web("    image: a:1\n    healthcheck:\n      test: [CURL, x]\n"),
            6,
            13,
        );
        assert_eq!(
            d.message(),
            "a healthcheck `test` list starts with `CMD`, `CMD-SHELL` or `NONE`"
        );
        let d = error_at(
            &web("    image: a:1\n    healthcheck:\n      interval: 5s\n"),
            5,
            5,
        );
        assert!(d.message().contains("has no `test`"), "{d}");
    }
}
