//! A long-lived flow (one TCP connection or one UDP socket for its whole
//! life) from a lab namespace, for the tests of what happens to open flows
//! (lb, drain).

use std::{
    io::{BufRead, Write},
    path::Path,
    process::{Child, Command, Stdio},
};

/// `python3 -c FLOW host proto port`: every input line sends a message and
/// prints the answer (or "ERR <why>"), so that the flow keeps its 5-tuple.
const FLOW: &str = r#"
import socket, sys
host, proto, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if proto == "tcp":
    s = socket.create_connection((host, port), timeout=2)
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
for line in sys.stdin:
    try:
        if proto == "tcp":
            s.sendall(b"x")
            print(s.recv(200).decode(), flush=True)
        else:
            s.sendto(b"x", (host, port))
            print(s.recvfrom(200)[0].decode(), flush=True)
    except Exception as e:
        print("ERR", e, flush=True)
"#;

/// A flow to host:port from the namespace at `netns`; killed (by pid) on
/// drop.
pub struct Flow {
    child: Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Flow {
    pub fn start(netns: &Path, host: &str, proto: &str, port: &str) -> Self {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["--", "python3", "-c", FLOW, host, proto, port])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("flow");
        let stdout = child.stdout.take().expect("stdout");
        Flow {
            child,
            lines: std::io::BufReader::new(stdout).lines(),
        }
    }

    /// Sends one message; the answer (or "ERR ...").
    pub fn ask(&mut self) -> String {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        if writeln!(stdin, "go").and_then(|()| stdin.flush()).is_err() {
            return "ERR closed".into();
        }
        self.lines
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| "ERR closed".into())
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
