//! A service's `depends_on`: the services it starts after. A condition is kept only as
//! ordering.

use super::Converter;
use crate::manifest::compose::types::{DependsOn, DependsOnCondition, Form};
use crate::manifest::yaml::Spanned;

impl Converter<'_> {
    pub(super) fn depends_on(&mut self, d: &Spanned<DependsOn>) -> Vec<Spanned<String>> {
        match &d.value {
            Form::Null => Vec::new(),
            Form::List(names) => names.clone(),
            Form::Map(m) => {
                let mut names = Vec::new();
                for (dep, cond) in &m.0 {
                    match &cond.value {
                        Form::Null => {}
                        Form::Map(c) => self.condition(&dep.value, c),
                        other => self.error(
                            cond.referenced,
                            format!(
                                "dependency `{}` is {}; expected a mapping such as `{{ condition: service_healthy }}`",
                                dep.value,
                                other.shape(),
                            ),
                        ),
                    }
                    names.push(dep.clone());
                }
                names
            }
            Form::Scalar(_) => {
                self.error(
                    d.referenced,
                    "`depends_on` is a single value; expected a list of services or a mapping",
                );
                Vec::new()
            }
        }
    }

    fn condition(&mut self, dep: &str, c: &DependsOnCondition) {
        let DependsOnCondition {
            condition,
            restart,
            required,
        } = c;
        if let Some(cond) = condition {
            match cond.value.as_str() {
                "service_started" | "service_healthy" => {}
                "service_completed_successfully" => self.warn(
                    cond.referenced,
                    format!("`service_completed_successfully` is treated as `service_started`: rollout starts this service after `{dep}` but does not wait for `{dep}` to exit"),
                ),
                other => self.error(
                    cond.referenced,
                    format!("unknown condition `{other}`; expected service_started, service_healthy or service_completed_successfully"),
                ),
            }
        }
        if let Some(r) = restart {
            self.warn(r.referenced, "`restart` of a dependency is ignored");
        }
        if let Some(r) = required
            && !r.value
        {
            self.warn(
                r.referenced,
                format!("`required: false` is ignored: `{dep}` must be a service of this file"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::manifest::compose::testing::{error_at, load_str, service};
    use crate::manifest::source::Pos;

    #[test]
    fn depends_on_cycle_is_reported_by_resolve() {
        let text = "x-rollout: { client: acme }\nservices:\n  api:\n    image: a:1\n    depends_on: [db]\n  db:\n    image: d:1\n    depends_on:\n      api: { condition: service_healthy }\n";
        let d = error_at(text, 3, 3);
        assert_eq!(d.message(), "dependsOn has a cycle: api -> db -> api");
    }

    #[test]
    fn depends_on_conditions() {
        let text = "x-rollout: { client: acme }\nservices:\n  migrate: { image: m:1 }\n  api:\n    image: a:1\n    depends_on:\n      migrate:\n        condition: service_completed_successfully\n        required: false\n";
        let imported = load_str(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            service(&imported.environment, "api").depends_on,
            ["migrate"]
        );
        let warned: Vec<Option<Pos>> = imported.warnings.iter().map(|w| w.pos()).collect();
        assert_eq!(warned, [Some(Pos::new(8, 20)), Some(Pos::new(9, 19))]);
        assert!(
            imported.warnings[0]
                .message()
                .contains("treated as `service_started`")
        );

        let d = error_at(
            &format!(
                "{text}  web:\n    image: w:1\n    depends_on: {{ api: {{ condition: service_ready }} }}\n"
            ),
            12,
            37,
        );
        assert!(d.message().starts_with("unknown condition `service_ready`"));
    }
}
