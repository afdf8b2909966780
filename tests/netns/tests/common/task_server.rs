//! The task side and the client side of the service tests (lb, ingress,
//! trace): a small Python server run in a task's container, and a client
//! script that makes fresh connections to it.

use std::{
    os::unix::process::CommandExt,
    process::{Child, Command, Stdio},
};

use netlab::{Container, Lab};

/// Answers on TCP 8080 and UDP 9090 with "<name> <client address>", and
/// on TCP 8081 once per message for as long as the connection lasts.
const SERVER: &str = r#"
import socket, sys, threading
name = sys.argv[1]
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 9090))
    while True:
        data, addr = s.recvfrom(2048)
        s.sendto(f"{name} {addr[0]}".encode(), addr)
threading.Thread(target=udp, daemon=True).start()
def flow(c, client):
    while c.recv(100):
        c.sendall(f"{name} {client}".encode())
def flows():
    f = socket.socket()
    f.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    f.bind(("0.0.0.0", 8081))
    f.listen(64)
    while True:
        c, addr = f.accept()
        threading.Thread(target=flow, args=(c, addr[0]), daemon=True).start()
threading.Thread(target=flows, daemon=True).start()
t = socket.socket()
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", 8080))
t.listen(64)
while True:
    c, addr = t.accept()
    c.sendall(f"{name} {addr[0]}".encode())
    c.close()
"#;

/// `python3 -c CLIENT proto host port count`: makes `count` fresh
/// connections (tcp) or connected sockets (udp, so that an ICMP unreachable
/// is reported) to host:port and prints one answer per line, or
/// "ERR <why>" when none came.
pub const CLIENT: &str = r#"
import socket, sys
proto, host, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for _ in range(count):
    try:
        if proto == "tcp":
            s = socket.create_connection((host, port), timeout=2)
            print(s.recv(200).decode())
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(2)
            s.connect((host, port))
            s.send(b"x")
            print(s.recv(200).decode())
        s.close()
    except Exception as e:
        print("ERR", e)
"#;

/// The task that wrote `answer`, a line of [`CLIENT`]'s output ("<task>
/// <client address>"), or the whole line when it is an error ("ERR <why>").
pub fn task_of(answer: &str) -> &str {
    match answer.split_whitespace().next() {
        Some(task) if task != "ERR" => task,
        _ => answer,
    }
}

/// Whether [`CLIENT`] printed `count` answers and each satisfies `each`:
/// a client that printed nothing (it could not run) never passes.
pub fn every_answer(answers: &[String], count: usize, each: impl Fn(&str) -> bool) -> bool {
    answers.len() == count && answers.iter().all(|a| each(a))
}

/// A process that dies with the test (SIGTERM when the test process goes).
pub fn spawn_dying_with_us(command: &mut Command) -> Child {
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    command.spawn().expect("spawn")
}

/// [`SERVER`] in a task's container, answering as `name`; killed (by pid)
/// on drop.
pub struct Server(Child);

impl Server {
    pub fn start(container: &Container, name: &str) -> Self {
        Server(spawn_dying_with_us(
            Command::new("nsenter")
                .arg(format!("--net={}", container.netns_path().display()))
                .args(["--", "python3", "-c", SERVER, name])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        ))
    }
}

/// One task of the service `web` on each of `nodes`, numbered from 1 in
/// that order: container `web<n>`, task name `web.<n>`, running [`SERVER`].
pub fn start_web_tasks(lab: &mut Lab, nodes: &[&str]) -> Vec<Server> {
    let mut servers = Vec::new();
    for (n, node) in (1..).zip(nodes) {
        let name = format!("web{n}");
        let (container, _) = lab
            .attach_container_with(
                node,
                &name,
                "appnet",
                &["--service", "web", "--name", &format!("web.{n}")],
            )
            .expect("task");
        servers.push(Server::start(&container, &name));
    }
    servers
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
