//! The edge proxy as it runs in production: a container built `FROM scratch` from rollout's own
//! static binary, on the environment's network, holding the public port, restarted by the engine,
//! its routing table kept on a volume across restarts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use rollout::engine::Engine;
use rollout::engine::image::{PROXY_ADMIN_PORT, proxy_context, proxy_image};
use rollout::engine::spec::{production_container, production_network, proxy_container};
use rollout::proxy::client::AdminClient;
use rollout::proxy::routes::{Backend, Listener, Protocol, Routes, Weight};

use crate::support::docker::{Cleanup, demo_images, engine, runtime, start_production};
use crate::support::{Project, unique};

fn get(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_proxy_container_forwards_switches_and_survives_restarts() {
    let rt = runtime();
    let name = unique("pxy");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    let public = crate::support::free_port();
    let binary = std::fs::read(crate::support::static_binary()).expect("static rollout");
    let image = proxy_image(&binary);
    rt.block_on(async {
        let engine = engine().await;
        demo_images(&engine).await;
        engine
            .build_image(&image, &proxy_context(binary))
            .await
            .expect("build the proxy image");
    });
    let manifest = format!(
        "apiVersion: rollout/v1\nkind: Environment\nname: {name}\nclient: acme\nservices:\n  web:\n    image: shop-web:2.4.0\n    ports: [ {{ name: http, container: 8080, public: {public} }} ]\n"
    );
    let project = Project::new().manifest(&name, &manifest);
    let env = rt.block_on(start_production(project.path(), "v1", &|_| None));

    let (admin, v1_addr, v2_addr, proxy) = rt.block_on(async {
        let engine = engine().await;
        // A second version of web beside the first, as a blue-green switch would start it.
        let mut v2 = env.clone();
        v2.services[0].image = "shop-web:2.5.0".into();
        engine
            .run_container(&production_container(&v2, &v2.services[0], "v2"))
            .await
            .expect("v2");
        let spec = proxy_container(&env, "v1", "127.0.0.1", &image);
        for (volume, _) in &spec.volumes {
            engine
                .ensure_volume(volume, &spec.labels)
                .await
                .expect("proxy state volume");
        }
        engine.run_container(&spec).await.expect("proxy container");
        let admin_port = engine
            .published_port(&spec.name, PROXY_ADMIN_PORT)
            .await
            .expect("port")
            .expect("admin published");
        let network = production_network(&name);
        let v1 = engine
            .address(&format!("{name}-web-v1"), &network)
            .await
            .expect("address")
            .expect("v1 ip");
        let v2 = engine
            .address(&format!("{name}-web-v2"), &network)
            .await
            .expect("address")
            .expect("v2 ip");
        (
            AdminClient::new(SocketAddr::from(([127, 0, 0, 1], admin_port))),
            SocketAddr::new(v1, 8080),
            SocketAddr::new(v2, 8080),
            spec.name,
        )
    });
    let routes = |v1: u8, v2: u8| Routes {
        listeners: BTreeMap::from([(
            public,
            Listener {
                protocol: Protocol::Http,
                backends: vec![
                    Backend {
                        id: "v1".into(),
                        addr: v1_addr,
                        weight: Weight::new(v1).expect("weight"),
                    },
                    Backend {
                        id: "v2".into(),
                        addr: v2_addr,
                        weight: Weight::new(v2).expect("weight"),
                    },
                ],
            },
        )]),
        drain_ms: Some(1000),
    };
    eventually("the admin API", || rt.block_on(admin.healthz()).is_ok());
    rt.block_on(admin.put_routes(&routes(100, 0)))
        .expect("route to v1");
    eventually("v1 through the public port", || {
        get(public).contains("shop web 2.4.0")
    });
    rt.block_on(admin.put_routes(&routes(0, 100)))
        .expect("switch to v2");
    assert!(
        get(public).contains("shop web 2.5.0"),
        "the switch is immediate"
    );

    // The engine restarts a proxy that crashes (its process killed from outside: `docker kill`
    // would count as stopping it by hand), and the proxy restores its table from its volume.
    let pid = Command::new("docker")
        .args(["inspect", "-f", "{{.State.Pid}}", &proxy])
        .output()
        .expect("inspect");
    let pid = String::from_utf8_lossy(&pid.stdout).trim().to_string();
    assert!(
        Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .expect("kill")
            .success()
    );
    eventually("the proxy back after a kill", || {
        get(public).contains("shop web 2.5.0")
    });
    assert!(
        Command::new("docker")
            .args(["restart", "-t", "2", &proxy])
            .output()
            .expect("docker restart")
            .status
            .success()
    );
    eventually("the proxy back after a restart", || {
        get(public).contains("shop web 2.5.0")
    });
    // Its admin port is published on an ephemeral 127.0.0.1 port, new at each start: look it up.
    let admin_port = rt.block_on(async {
        engine()
            .await
            .published_port(&proxy, PROXY_ADMIN_PORT)
            .await
            .expect("port")
            .expect("admin published")
    });
    let admin = AdminClient::new(SocketAddr::from(([127, 0, 0, 1], admin_port)));
    assert_eq!(rt.block_on(admin.routes()).expect("routes"), routes(0, 100));
    // Only the public port faces the host, and only where it was asked (here 127.0.0.1).
    let bindings = Command::new("docker")
        .args(["inspect", "-f", "{{json .HostConfig.PortBindings}}", &proxy])
        .output()
        .expect("inspect");
    let bindings = String::from_utf8_lossy(&bindings.stdout);
    assert!(!bindings.contains("0.0.0.0"), "{bindings}");
}
