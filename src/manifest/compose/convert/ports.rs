//! A service's `ports` and `expose`: short (`"127.0.0.1:18080:8080/tcp"`) and long syntax,
//! published ports made public, and the transport protocols rollout carries.

use serde::de::IgnoredAny;
use serde_saphyr::Location;

use super::{Converter, like};
use crate::manifest::compose::types::{Form, LongPort};
use crate::manifest::raw::RawPort;
use crate::manifest::yaml::Spanned;

impl Converter<'_> {
    /// The ports of a service: those of `ports`, then the container ports of `expose` that
    /// `ports` does not already list.
    pub(super) fn ports(
        &mut self,
        ports: &[Spanned<Form<IgnoredAny, LongPort>>],
        expose: &[Spanned<String>],
    ) -> Vec<Spanned<RawPort>> {
        let mut raw_ports = Vec::new();
        for p in ports {
            if let Some(rp) = self.port(p) {
                raw_ports.push(like(rp, p));
            }
        }
        for e in expose {
            let Some(text) = self.interp(&e.value, e.referenced) else {
                continue;
            };
            let (number, protocol) = match text.split_once('/') {
                Some((n, p)) => (n, Some(p)),
                None => (text.as_str(), None),
            };
            if !self.l4_protocol(protocol, e.referenced) {
                continue;
            }
            let Some(container) = self.port_number(number, e.referenced) else {
                continue;
            };
            // `expose` often repeats a port that `ports` publishes; it adds nothing then.
            if raw_ports
                .iter()
                .any(|p| p.value.container.value == container.value)
            {
                continue;
            }
            raw_ports.push(like(
                RawPort {
                    name: None,
                    container,
                    public: None,
                    protocol: None,
                },
                e,
            ));
        }
        raw_ports
    }

    fn port(&mut self, p: &Spanned<Form<IgnoredAny, LongPort>>) -> Option<RawPort> {
        match &p.value {
            Form::Scalar(s) => {
                let text = self.interp(s, p.referenced)?;
                let short = match split_short_port(&text) {
                    Ok(short) => short,
                    Err(e) => {
                        self.error_help(
                            p.referenced,
                            format!("invalid port `{text}`: {e}"),
                            "expected `CONTAINER`, `PUBLIC:CONTAINER` or `HOST_IP:PUBLIC:CONTAINER`, optionally followed by `/tcp`",
                        );
                        return None;
                    }
                };
                if !self.l4_protocol(short.protocol, p.referenced) {
                    return None;
                }
                if let Some(ip) = short.host_ip {
                    self.warn(
                        p.referenced,
                        format!("host address `{ip}` is ignored: the edge proxy serves public ports; only ports rollout probes itself are bound to 127.0.0.1"),
                    );
                }
                if short
                    .published
                    .into_iter()
                    .chain([short.container])
                    .any(is_range)
                {
                    self.range(&text, p.referenced);
                    return None;
                }
                let container = self.port_number(short.container, p.referenced);
                let public = match short.published {
                    Some(n) => Some(self.port_number(n, p.referenced)?),
                    None => None,
                };
                Some(RawPort {
                    name: None,
                    container: container?,
                    public,
                    protocol: None,
                })
            }
            Form::Map(long) => {
                let LongPort {
                    target,
                    published,
                    host_ip,
                    protocol,
                    app_protocol,
                    mode,
                    name,
                } = long.as_ref();
                let proto = protocol.as_ref().map(|s| s.value.as_str());
                let at = protocol.as_ref().map_or(p.referenced, |s| s.referenced);
                if !self.l4_protocol(proto, at) {
                    return None;
                }
                if let Some(ip) = host_ip {
                    self.warn(
                        ip.referenced,
                        format!("host address `{}` is ignored: the edge proxy serves public ports; only ports rollout probes itself are bound to 127.0.0.1", ip.value),
                    );
                }
                if let Some(m) = mode {
                    self.warn(
                        m.referenced,
                        "a port's `mode` is ignored: it only concerns swarm",
                    );
                }
                let container = self.port_number(&target.value, target.referenced);
                let public = match published {
                    Some(n) => {
                        let text = self.interp(&n.value, n.referenced)?;
                        Some(self.port_number(&text, n.referenced)?)
                    }
                    None => None,
                };
                // The edge proxy can look inside plain HTTP only; anything else is passed as TCP.
                let protocol = app_protocol.as_ref().map(|a| {
                    let p = if a.value == "http" { "http" } else { "tcp" };
                    like(p.to_string(), a)
                });
                Some(RawPort {
                    name: name.clone(),
                    container: container?,
                    public,
                    protocol,
                })
            }
            other => {
                self.error(
                    p.referenced,
                    format!(
                        "a port is {}; expected `\"18080:8080\"` or a mapping with `target`",
                        other.shape()
                    ),
                );
                None
            }
        }
    }

    /// Compose's transport protocol: rollout carries TCP only.
    fn l4_protocol(&mut self, protocol: Option<&str>, at: Location) -> bool {
        match protocol {
            None | Some("tcp") => true,
            Some("udp") => {
                self.error(
                    at,
                    "udp is not supported: rollout's edge proxy and probes carry TCP only",
                );
                false
            }
            Some(other) => {
                self.error(at, format!("unknown protocol `{other}`; expected `tcp`"));
                false
            }
        }
    }

    fn range(&mut self, text: &str, at: Location) {
        self.error_help(
            at,
            format!("port range `{text}` is not supported"),
            "list each port on its own",
        );
    }

    fn port_number(&mut self, text: &str, at: Location) -> Option<Spanned<i64>> {
        let t = text.trim();
        if is_range(t) {
            self.range(t, at);
            return None;
        }
        match t.parse::<i64>() {
            Ok(n) => Some(Spanned::new(n, at, at)),
            Err(_) => {
                self.error(at, format!("`{t}` is not a port number"));
                None
            }
        }
    }
}

/// `3000-3005`, as opposed to a negative number, which `resolve` reports as out of range.
fn is_range(port: &str) -> bool {
    port.split_once('-')
        .is_some_and(|(a, b)| !a.trim().is_empty() && !b.trim().is_empty())
}

struct ShortPort<'a> {
    host_ip: Option<&'a str>,
    published: Option<&'a str>,
    container: &'a str,
    protocol: Option<&'a str>,
}

/// `[HOST_IP:][PUBLISHED:]CONTAINER[/PROTOCOL]`, where an IPv6 host is written in brackets.
fn split_short_port(s: &str) -> Result<ShortPort<'_>, String> {
    let (addr, protocol) = match s.rsplit_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let (bracketed, rest) = match addr.strip_prefix('[') {
        Some(r) => match r.split_once("]:") {
            Some((ip, rest)) => (Some(ip), rest),
            None => return Err("an IPv6 host address must be followed by `]:`".into()),
        },
        None => (None, addr),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (host_ip, published, container) = match (bracketed, parts.as_slice()) {
        (None, [c]) => (None, None, *c),
        (None, [p, c]) => (None, Some(*p), *c),
        (None, [ip, p, c]) => (Some(*ip), Some(*p), *c),
        (Some(ip), [p, c]) => (Some(ip), Some(*p), *c),
        _ => return Err("too many `:`".into()),
    };
    Ok(ShortPort {
        host_ip: host_ip.filter(|ip| !ip.is_empty()),
        published: published.filter(|p| !p.is_empty()),
        container,
        protocol,
    })
}

#[cfg(test)]
mod tests {
    use crate::manifest::compose::testing::{error_at, errors, load_str, service, web};
    use crate::manifest::env::Protocol;
    use crate::manifest::source::Pos;

    #[test]
    fn udp_ports_are_rejected() {
        let d = error_at(
            &web("    image: a:1\n    ports: [\"5353:53/udp\"]\n"),
            5,
            13,
        );
        assert_eq!(
            d.message(),
            "udp is not supported: rollout's edge proxy and probes carry TCP only"
        );
        let d = error_at(
            &web("    image: a:1\n    ports:\n      - { target: 53, protocol: udp }\n"),
            6,
            33,
        );
        assert!(d.message().starts_with("udp is not supported"));
    }

    #[test]
    fn port_forms() {
        let text = web(
            "    image: a:1\n    ports:\n      - 80\n      - \"127.0.0.1:18443:443/tcp\"\n      - \"[::1]::9090\"\n      - target: 8081\n        published: 18081\n        app_protocol: http\n        host_ip: 0.0.0.0\n    expose: [\"80\", 9100/tcp]\n",
        );
        let imported = load_str(&text).unwrap_or_else(|e| panic!("{e}"));
        let ports: Vec<(u16, Option<u16>, Protocol)> = service(&imported.environment, "web")
            .ports
            .iter()
            .map(|p| (p.container, p.public, p.protocol))
            .collect();
        assert_eq!(
            ports,
            [
                (80, None, Protocol::Http),
                (443, Some(18443), Protocol::Http),
                (9090, None, Protocol::Http),
                (8081, Some(18081), Protocol::Http),
                (9100, None, Protocol::Http),
            ]
        );
        let warned: Vec<Option<Pos>> = imported.warnings.iter().map(|w| w.pos()).collect();
        assert_eq!(
            warned,
            [
                Some(Pos::new(7, 9)),
                Some(Pos::new(8, 9)),
                Some(Pos::new(12, 18))
            ]
        );
        assert!(
            imported.warnings[0]
                .message()
                .starts_with("host address `127.0.0.1` is ignored")
        );
    }

    #[test]
    fn unquoted_short_ports_are_read_as_written() {
        let imported = load_str(&web(
            "    image: a:1\n    ports:\n      - 18081:81\n      - 8080:8080/tcp\n",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let ports: Vec<(u16, Option<u16>)> = service(&imported.environment, "web")
            .ports
            .iter()
            .map(|p| (p.container, p.public))
            .collect();
        assert_eq!(ports, [(81, Some(18081)), (8080, Some(8080))]);
    }

    #[test]
    fn port_ranges_and_bad_ports_are_rejected() {
        let es = errors(&web(
            "    image: a:1\n    ports: [\"3000-3005:3000-3005\", \"http\", \"70000:80\"]\n",
        ));
        let found: Vec<(Option<Pos>, &str)> = es.iter().map(|d| (d.pos(), d.message())).collect();
        assert_eq!(
            found,
            [
                (
                    Some(Pos::new(5, 13)),
                    "port range `3000-3005:3000-3005` is not supported"
                ),
                (Some(Pos::new(5, 36)), "`http` is not a port number"),
                (
                    Some(Pos::new(5, 44)),
                    "public port 70000 is out of range; expected a port from 1 to 65535"
                ),
            ]
        );
    }
}
