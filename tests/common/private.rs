//! Servers a test owns: a private Kafka broker or PostgreSQL instance on ports and in a
//! directory of its own, driven through `scripts/stack.sh`, so a test may stop and restart
//! it without disturbing any other test or the shared stack.

use std::process::Command;

use super::{free_port, stack_script};

#[derive(Clone, Copy)]
enum Kind {
    Kafka,
    Postgres,
}

pub struct PrivateServer {
    kind: Kind,
    dir: tempfile::TempDir,
    port: u16,
    /// What `stack.sh` is told: which instance, on which ports.
    env: Vec<(&'static str, String)>,
}

impl PrivateServer {
    /// A single-node KRaft broker (`kafka-up|kafka-down`), started.
    pub fn kafka() -> Self {
        let port = free_port();
        let controller_port = std::iter::repeat_with(free_port).find(|p| *p != port).unwrap();
        Self::start(Kind::Kafka, port, vec![("KAFKA_PORT", port.to_string()), ("CONTROLLER_PORT", controller_port.to_string())])
    }

    /// A PostgreSQL instance of its own (`pg-instance-up|pg-instance-down`; user
    /// postgres/postgres), started. Stopping it is a crash (`-m immediate`).
    pub fn postgres() -> Self {
        let port = free_port();
        Self::start(Kind::Postgres, port, vec![("PG_INSTANCE_PORT", port.to_string())])
    }

    fn start(kind: Kind, port: u16, mut env: Vec<(&'static str, String)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let dir_var = match kind {
            Kind::Kafka => "KAFKA_INSTANCE_DIR",
            Kind::Postgres => "PG_INSTANCE_DIR",
        };
        env.push((dir_var, dir.path().display().to_string()));
        let server = Self { kind, dir, port, env };
        server.up();
        server
    }

    /// The broker's bootstrap address.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The URL of database `db` on the instance.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres:postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn up(&self) {
        self.stack("up");
    }

    pub fn down(&self) {
        self.stack("down");
    }

    /// The end of the server's log (its directory goes away with the test).
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join(self.log_file())).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn log_file(&self) -> &'static str {
        match self.kind {
            Kind::Kafka => "logs/server.log",
            Kind::Postgres => "postgres.log",
        }
    }

    fn stack(&self, direction: &str) {
        let status = self.command(direction).status().expect("run stack.sh");
        assert!(status.success(), "stack.sh {} failed for a private server; its log ends:\n{}", self.action(direction), self.log_tail());
    }

    fn action(&self, direction: &str) -> String {
        match self.kind {
            Kind::Kafka => format!("kafka-{direction}"),
            Kind::Postgres => format!("pg-instance-{direction}"),
        }
    }

    fn command(&self, direction: &str) -> Command {
        let mut command = Command::new("bash");
        command.arg(stack_script()).arg(self.action(direction)).envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }
}

impl Drop for PrivateServer {
    /// Stops the server however the test ends (no assertion: this may run while a failed
    /// assertion unwinds).
    fn drop(&mut self) {
        let _ = self.command("down").status();
    }
}
