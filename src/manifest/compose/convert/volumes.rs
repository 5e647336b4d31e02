//! Volumes: the top-level declarations, and the named volumes a service mounts. Rollout
//! copies named volumes into test versions, so each belongs to one service.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde_saphyr::Location;

use super::{Converter, like, located, sanitize};
use crate::manifest::compose::types::{Form, LongVolume, VolumeDecl};
use crate::manifest::raw::{OrderedMap, RawVolume};
use crate::manifest::yaml::Spanned;

/// The compose volumes of the file: their rollout names, and which service mounts each.
#[derive(Default)]
pub(super) struct VolumeTable {
    declared: BTreeMap<String, String>,
    used_by: BTreeMap<String, String>,
}

impl Converter<'_> {
    /// The top-level `volumes:` declarations, each with the rollout name it gets.
    pub(super) fn volume_table(
        &mut self,
        decls: OrderedMap<Spanned<Form<IgnoredAny, VolumeDecl>>>,
    ) -> VolumeTable {
        let mut table = VolumeTable::default();
        let mut taken: BTreeMap<String, String> = BTreeMap::new();
        for (key, decl) in &decls.0 {
            match &decl.value {
                Form::Null => {}
                Form::Map(d) => {
                    let VolumeDecl {
                        external: _,
                        driver,
                        driver_opts,
                        labels,
                        name,
                    } = d.as_ref();
                    if let Some(n) = name {
                        self.warn(
                            n.referenced,
                            format!("the volume's `name` is ignored: rollout names the docker volume after the environment, the service and `{}`", key.value),
                        );
                    }
                    for (opt, what) in [
                        (driver, "driver"),
                        (driver_opts, "driver_opts"),
                        (labels, "labels"),
                    ] {
                        if let Some(o) = opt {
                            self.warn(
                                o.referenced,
                                format!("the volume's `{what}` is ignored: rollout creates volumes with the engine's defaults"),
                            );
                        }
                    }
                }
                other => self.error(
                    decl.referenced,
                    format!(
                        "volume `{}` is declared as {}; expected a mapping or nothing",
                        key.value,
                        other.shape()
                    ),
                ),
            }
            let name = sanitize(&key.value).unwrap_or_else(|| key.value.clone());
            if let Some(first) = taken.insert(name.clone(), key.value.clone()) {
                self.error(
                    key.referenced,
                    format!(
                        "volumes `{first}` and `{}` would both be named `{name}` in rollout, which allows only lowercase letters, digits and `-`",
                        key.value,
                    ),
                );
            }
            table.declared.insert(key.value.clone(), name);
        }
        table
    }

    /// The volumes a service mounts, each recorded in `table` as used by the service.
    pub(super) fn volumes(
        &mut self,
        service: &str,
        volumes: &[Spanned<Form<IgnoredAny, LongVolume>>],
        table: &mut VolumeTable,
    ) -> Vec<Spanned<RawVolume>> {
        let mut raw_volumes = Vec::new();
        for v in volumes {
            if let Some(rv) = self.volume(service, v, table) {
                raw_volumes.push(like(rv, v));
            }
        }
        raw_volumes
    }

    fn volume(
        &mut self,
        service: &str,
        v: &Spanned<Form<IgnoredAny, LongVolume>>,
        table: &mut VolumeTable,
    ) -> Option<RawVolume> {
        let (source, target) = match &v.value {
            Form::Scalar(s) => {
                let text = self.interp(s, v.referenced)?;
                let mut parts = text.splitn(3, ':');
                let first = parts.next().unwrap_or_default().to_string();
                let (source, target) = match parts.next() {
                    Some(t) => (Some(first), t.to_string()),
                    None => (None, first),
                };
                if let Some(mode) = parts.next()
                    && mode.split(',').any(|m| m == "ro")
                {
                    self.warn(
                        v.referenced,
                        "`:ro` is ignored: rollout mounts volumes read-write",
                    );
                }
                (
                    source.map(|s| located(s, v.referenced)),
                    located(target, v.referenced),
                )
            }
            Form::Map(long) => {
                let LongVolume {
                    kind,
                    source,
                    target,
                    read_only,
                    volume,
                    bind: _,
                    tmpfs: _,
                    image: _,
                    consistency,
                } = long.as_ref();
                match kind.value.as_str() {
                    "volume" => {}
                    "bind" => {
                        self.bind_mount(kind.referenced);
                        return None;
                    }
                    other => {
                        self.error(
                            kind.referenced,
                            format!("`{other}` mounts are not supported: rollout mounts named volumes only (`type: volume`)"),
                        );
                        return None;
                    }
                }
                if read_only.as_ref().is_some_and(|r| r.value) {
                    self.warn(
                        v.referenced,
                        "`read_only` is ignored: rollout mounts volumes read-write",
                    );
                }
                if let Some(o) = volume {
                    self.warn(
                        o.referenced,
                        "volume options (`nocopy`, `subpath`) are ignored",
                    );
                }
                if let Some(o) = consistency {
                    self.warn(o.referenced, "`consistency` is ignored");
                }
                let source = match source {
                    Some(s) => Some(self.interp_spanned(s)?),
                    None => None,
                };
                (source, self.interp_spanned(target)?)
            }
            other => {
                self.error(
                    v.referenced,
                    format!("a volume is {}; expected `name:/path` or a mapping with `type`, `source` and `target`", other.shape()),
                );
                return None;
            }
        };
        let Some(source) = source else {
            self.error_help(
                v.referenced,
                format!(
                    "anonymous volume `{}` is not supported: rollout copies named volumes into test versions",
                    target.value,
                ),
                format!(
                    "name it, e.g. `{service}-data:{}`, and declare it under the top-level `volumes:`",
                    target.value,
                ),
            );
            return None;
        };
        let s = source.value.as_str();
        if s.starts_with(['.', '/', '~']) || s.contains(['/', '\\']) {
            self.bind_mount(source.referenced);
            return None;
        }
        let Some(name) = table.declared.get(s).cloned() else {
            self.error_help(
                source.referenced,
                format!("volume `{s}` of service `{service}` is not declared"),
                format!(
                    "declare it under the top-level `volumes:`, e.g.\n      volumes:\n        {s}:"
                ),
            );
            return None;
        };
        let owner = table
            .used_by
            .entry(s.to_string())
            .or_insert_with(|| service.to_string());
        if owner != service {
            let other = owner.clone();
            self.error_help(
                source.referenced,
                format!("volume `{s}` is shared by services `{other}` and `{service}`: rollout gives each service its own volumes, so they would not share data"),
                "give each service its own volume, or let one service own the data and serve it to the other",
            );
            return None;
        }
        Some(RawVolume {
            name: like(name, &source),
            path: target,
        })
    }

    fn bind_mount(&mut self, at: Location) {
        self.error_help(
            at,
            "bind mounts are not supported: rollout copies named volumes into test versions",
            "use a named volume declared under the top-level `volumes:`, and bake fixed files into the image",
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::manifest::compose::testing::{error_at, load_str, service, web};
    use crate::manifest::source::Pos;

    #[test]
    fn bind_mount_is_rejected() {
        let d = error_at(
            &web("    image: a:1\n    volumes:\n      - ./data:/var/lib/data\n"),
            6,
            9,
        );
        assert_eq!(
            d.message(),
            "bind mounts are not supported: rollout copies named volumes into test versions"
        );
        let d = error_at(
            &web(
                "    image: a:1\n    volumes:\n      - type: bind\n        source: /srv\n        target: /data\n",
            ),
            6,
            15,
        );
        assert!(d.message().starts_with("bind mounts are not supported"));
    }

    #[test]
    fn anonymous_undeclared_and_shared_volumes_are_rejected() {
        let d = error_at(
            &web("    image: a:1\n    volumes: [/var/lib/data]\n"),
            5,
            15,
        );
        assert!(
            d.message()
                .starts_with("anonymous volume `/var/lib/data` is not supported"),
            "{d}"
        );
        assert!(d.to_string().contains("web-data:/var/lib/data"), "{d}");

        let d = error_at(&web("    image: a:1\n    volumes: [\"data:/d\"]\n"), 5, 15);
        assert_eq!(
            d.message(),
            "volume `data` of service `web` is not declared"
        );

        let text = "x-rollout: { client: acme }\nservices:\n  web: { image: a:1, volumes: [\"up:/u\"] }\n  worker: { image: b:1, volumes: [\"up:/u\"] }\nvolumes: { up: }\n";
        let d = error_at(text, 4, 35);
        assert!(
            d.message()
                .starts_with("volume `up` is shared by services `web` and `worker`"),
            "{d}"
        );
    }

    #[test]
    fn volume_names_become_valid_rollout_names() {
        let text = "x-rollout: { client: acme }\nservices:\n  db:\n    image: pg:16\n    volumes: [\"DB_Data:/data:ro\"]\nvolumes:\n  DB_Data:\n";
        let imported = load_str(text).unwrap();
        let db = service(&imported.environment, "db");
        assert_eq!(db.volumes[0].name, "db-data");
        assert_eq!(imported.warnings.len(), 1);
        assert_eq!(imported.warnings[0].pos(), Some(Pos::new(5, 15)));
        assert!(
            imported.warnings[0]
                .message()
                .starts_with("`:ro` is ignored")
        );
    }
}
