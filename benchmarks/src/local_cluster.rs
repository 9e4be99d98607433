//! Three local Redis masters forming a Redis Cluster, for the tests that check the speed view and
//! the lifecycle on a cluster (needs `redis-server` and `redis-cli`, which `scripts/setup.sh`
//! installs).

/// Three local Redis masters forming a cluster, stopped when dropped.
pub struct LocalCluster {
    pub ports: [u16; 3],
    _dir: tempfile::TempDir,
    processes: Vec<std::process::Child>,
}

impl LocalCluster {
    /// A port free now whose cluster bus port (port + 10000) is free too.
    fn free_port(taken: &[u16]) -> u16 {
        loop {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let bus_free = port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok();
            if bus_free && !taken.contains(&port) && !taken.contains(&(port + 10_000)) {
                return port;
            }
        }
    }

    pub fn start() -> LocalCluster {
        let first = LocalCluster::free_port(&[]);
        let second = LocalCluster::free_port(&[first, first + 10_000]);
        let third = LocalCluster::free_port(&[first, first + 10_000, second, second + 10_000]);
        let ports = [first, second, third];
        let dir = tempfile::tempdir().unwrap();
        let processes = ports
            .iter()
            .map(|port| {
                std::process::Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                    .args(["--cluster-enabled", "yes", "--cluster-config-file", &format!("nodes-{port}.conf")])
                    .arg("--dir")
                    .arg(dir.path())
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .expect("redis-server must be installed (scripts/setup.sh installs it)")
            })
            .collect();
        let cluster = LocalCluster { ports, _dir: dir, processes };
        for port in ports {
            cluster.wait_for(port, |reply| reply == "PONG", &["PING"]);
        }
        let nodes: Vec<String> = ports.iter().map(|port| format!("127.0.0.1:{port}")).collect();
        let created = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stdout));
        for port in ports {
            cluster.wait_for(port, |reply| reply.contains("cluster_state:ok"), &["CLUSTER", "INFO"]);
        }
        cluster
    }

    fn wait_for(&self, port: u16, done: impl Fn(&str) -> bool, command: &[&str]) {
        for _ in 0..200 {
            let reply = std::process::Command::new("redis-cli").args(["-p", &port.to_string()]).args(command).output();
            if reply.is_ok_and(|r| done(String::from_utf8_lossy(&r.stdout).trim())) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("redis node {port} never answered {command:?} as expected");
    }

    pub fn url(&self) -> String {
        self.ports.iter().map(|port| format!("redis://127.0.0.1:{port}")).collect::<Vec<_>>().join(",")
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for process in &mut self.processes {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}
