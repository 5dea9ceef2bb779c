//! End to end: `raft-kv certs`, HTTPS with the cluster's CA, and the bearer tokens of the HTTP
//! API (admin endpoints, and data endpoints with `--data-token-file`), against real node
//! processes on 127.0.0.1; the client commands over HTTPS; the launcher's `--tls`.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::https::{Https, Reply};
use common::{Node, eventually, free_port, layout, log_file, temp};
use raft_kv::certs::{self, CertsRequest};

/// Runs the binary with `args` (and `envs`) to its end.
fn raft_kv(args: &[&str], envs: &[(&str, &Path)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_raft-kv"))
        .args(args)
        .envs(envs.iter().map(|(name, value)| (*name, value.as_os_str())))
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts a JSON error with `status` and `reason`.
fn assert_error(reply: &Reply, status: u16, reason: &str) {
    assert_eq!(reply.status, status, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["reason"], reason, "{body}");
    assert!(body["error"].as_str().is_some_and(|message| !message.is_empty()), "{body}");
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("the file exists").permissions().mode() & 0o777
}

#[cfg(unix)]
#[test]
fn certs_writes_private_files_only_for_the_owner_and_refuses_to_overwrite() {
    let (_dir, path) = temp();
    let out = path.join("tls");
    let out_arg = out.display().to_string();
    let first = raft_kv(&["certs", "--nodes", "2", "--out", &out_arg, "--data-token"], &[]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    for name in ["ca.key", "node-1.key", "node-2.key", "admin.token", "data.token"] {
        assert_eq!(mode(&out.join(name)), 0o600, "{name}");
    }
    for name in ["ca.pem", "node-1.pem", "node-2.pem"] {
        assert!(std::fs::read_to_string(out.join(name)).expect(name).starts_with("-----BEGIN CERTIFICATE-----"));
    }
    let key = std::fs::read_to_string(out.join("node-1.key")).expect("a key");
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8: {key}");
    let token = std::fs::read_to_string(out.join("admin.token")).expect("a token");
    assert_eq!(token.trim().len(), 2 * certs::TOKEN_BYTES);
    assert!(token.trim().bytes().all(|byte| byte.is_ascii_hexdigit()));
    assert!(!out.join("node-3.pem").exists());

    let ca = std::fs::read(out.join("ca.pem")).expect("the CA");
    let again = raft_kv(&["certs", "--nodes", "2", "--out", &out_arg], &[]);
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("exists"), "{}", text(&again.stderr));
    assert_eq!(std::fs::read(out.join("ca.pem")).expect("the CA"), ca, "a refused run wrote nothing");

    // A key made readable by others is private again after --force.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(out.join("ca.key"), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let forced = raft_kv(&["certs", "--nodes", "2", "--out", &out_arg, "--force"], &[]);
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    assert_ne!(std::fs::read(out.join("ca.pem")).expect("the CA"), ca, "a new CA");
    assert_eq!(mode(&out.join("ca.key")), 0o600);
}

/// Certificates for `nodes` nodes in `dir`, with a data token.
fn certificates(dir: &Path, nodes: u64) {
    let request =
        CertsRequest { out: dir.to_path_buf(), nodes, cluster_id: 1, days: 1, data_token: true, force: false };
    certs::generate(&request).expect("certificates");
}

/// An HTTPS cluster whose data endpoints need a token: the CA and the tokens decide who gets
/// what, redirects stay on https, the client commands follow them, and a node joins over HTTPS.
#[test]
fn an_https_cluster_checks_certificates_and_tokens() {
    let (_dir, path) = temp();
    let tls = path.join("tls");
    certificates(&tls, 4);
    let data_token = tls.join("data.token");
    let layout = layout(4, 3);
    let tls_args = |id: u64| {
        let mut args = vec!["--data".to_owned(), common::data_dir(&path, id)];
        args.extend(["--tls".to_owned(), tls.display().to_string()]);
        args.extend(["--data-token-file".to_owned(), data_token.display().to_string()]);
        args
    };
    let nodes: Vec<Node> = (0..3)
        .map(|index| {
            let id = index as u64 + 1;
            let mut args = tls_args(id);
            args.extend(["--peers".to_owned(), layout.peers.clone(), "--bootstrap".to_owned()]);
            Node::start(id, layout.raft[index], layout.http[index], log_file(&path, id, 1), &args)
        })
        .collect();
    let anonymous = Https::new(&tls.join("ca.pem"));
    let data = anonymous.with_token_file(&data_token);
    let admin = anonymous.with_token_file(&tls.join("admin.token"));
    let http = |id: u64| layout.http[id as usize - 1];
    let leader_of = |client: &Https| {
        eventually("a leader", || {
            let reply = client.call("GET", http(1), "/cluster/status", &[]).ok()?;
            reply.json()["leader"].as_u64()
        })
    };
    let mut leader = leader_of(&data);
    assert!(nodes.iter().all(|node| !std::fs::read_to_string(&node.log).unwrap_or_default().contains("plain mode")));

    // Data endpoints: no token 401 (with the challenge), a wrong one 403, the data or admin token.
    let missing = anonymous.call("PUT", http(leader), "/kv/k", b"v").expect("an answer");
    assert_error(&missing, 401, "unauthorized");
    assert!(missing.challenge.as_deref().is_some_and(|value| value.starts_with("Bearer")), "{missing:?}");
    assert_error(&anonymous.call("GET", http(1), "/cluster/status", &[]).expect("an answer"), 401, "unauthorized");
    let wrong = anonymous.with_token("not-the-token");
    assert_error(&wrong.call("PUT", http(leader), "/kv/k", b"v").expect("an answer"), 403, "forbidden");
    assert_eq!(data.call("PUT", http(leader), "/kv/k", b"v").expect("an answer").status, 200);
    let read = admin.call("GET", http(leader), "/kv/k", &[]).expect("an answer");
    assert_eq!((read.status, read.text().as_str()), (200, "v"));

    // A write sent to a follower is redirected to the leader's https:// address.
    leader = leader_of(&data);
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let redirect = data.call("PUT", http(follower), "/kv/k2", b"v2").expect("an answer");
    assert_eq!(redirect.status, 307, "{}", redirect.text());
    assert_eq!(redirect.location, Some(format!("https://{}/kv/k2", http(leader))));

    // The client commands: --tls DIR (the admin token), and --ca / --token-file as variables.
    let tls_arg = tls.display().to_string();
    let node_arg = http(follower).to_string();
    let put = raft_kv(&["put", "k2", "via-cli", "--tls", &tls_arg, "--node", &node_arg], &[]);
    assert!(put.status.success(), "{}{}", text(&put.stdout), text(&put.stderr));
    let ca = tls.join("ca.pem");
    let envs = [("RAFT_KV_CA", ca.as_path()), ("RAFT_KV_TOKEN_FILE", data_token.as_path())];
    let get = raft_kv(&["get", "k2", "--node", &node_arg], &envs);
    assert!(get.status.success(), "{}", text(&get.stderr));
    assert_eq!(text(&get.stdout).trim(), "via-cli");
    let without_token = raft_kv(&["get", "k2", "--node", &node_arg], &envs[..1]);
    assert!(!without_token.status.success());
    assert!(text(&without_token.stdout).contains("unauthorized"), "{}", text(&without_token.stdout));
    let plain_cli = raft_kv(&["get", "k2", "--node", &node_arg], &[]);
    assert!(!plain_cli.status.success(), "plain http to an https port: {}", text(&plain_cli.stdout));

    // Plain HTTP to the HTTPS port gets no HTTP answer; a client that does not trust the CA
    // fails the handshake.
    assert!(common::call("GET", http(1), "/cluster/status", &[]).is_none());
    // Connections that never start their handshake do not hold up others: each waits in a task
    // of its own (for up to `HANDSHAKE_TIMEOUT`, longer than the deadline here).
    let silent: Vec<std::net::TcpStream> =
        (0..3).map(|_| std::net::TcpStream::connect(http(1)).expect("a connection")).collect();
    let deadline = raft_kv::tls::HANDSHAKE_TIMEOUT / 2;
    let meanwhile = data.call_within(deadline, "GET", http(1), "/cluster/status", &[]).expect("an answer");
    assert_eq!(meanwhile.status, 200);
    drop(silent);
    let (_other_dir, other) = temp();
    certificates(&other, 1);
    let stranger = Https::new(&other.join("ca.pem")).with_token_file(&tls.join("admin.token"));
    let refused = stranger.call("GET", http(1), "/cluster/status", &[]).expect_err("an untrusted certificate");
    assert!(refused.contains("TLS handshake"), "{refused}");

    // Admin endpoints: no token 401, the data token or a wrong one 403, all JSON, whatever the
    // body; the admin token transfers leadership.
    leader = leader_of(&data);
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let body = format!("{{\"id\":{follower}}}");
    let no_token = anonymous.call("POST", http(leader), "/cluster/leader", body.as_bytes()).expect("an answer");
    assert_error(&no_token, 401, "unauthorized");
    assert_error(
        &anonymous.call("POST", http(leader), "/cluster/members", b"{bad").expect("an answer"),
        401,
        "unauthorized",
    );
    assert_error(
        &data.call("POST", http(leader), "/cluster/leader", body.as_bytes()).expect("an answer"),
        403,
        "forbidden",
    );
    assert_error(&wrong.call("POST", http(leader), "/cluster/members", b"{}").expect("an answer"), 403, "forbidden");
    let transferred = admin.call("POST", http(leader), "/cluster/leader", body.as_bytes()).expect("an answer");
    assert_eq!(
        (transferred.status, transferred.json()["leader"].as_u64()),
        (200, Some(follower)),
        "{}",
        transferred.text()
    );
    eventually("the new leader", || (leader_of(&data) == follower).then_some(()));

    // A fourth node joins over HTTPS (its requests carry the admin token) and becomes a voter.
    let mut args = tls_args(4);
    args.extend(["--join".to_owned(), format!("https://{}", http(leader))]);
    let joined = Node::start(4, layout.raft[3], layout.http[3], log_file(&path, 4, 1), &args);
    eventually("node 4 to become a voter", || {
        let status = data.call("GET", http(follower), "/cluster/status", &[]).ok()?.json();
        common::ids(&status, "voters").contains(&4).then_some(())
    });
    drop(joined);
}

/// A plain node warns at start that plain mode is for local experiments (and that its token file
/// is readable by others); `--admin-token-file` guards its admin endpoints all the same, and its
/// data endpoints stay open.
#[test]
fn plain_mode_warns_and_still_takes_an_admin_token() {
    let (_dir, path) = temp();
    certificates(&path.join("tls"), 1);
    let token = path.join("tls").join("admin.token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let (raft, http) = (free_port(), free_port());
    let peers = format!("1={raft}={http}");
    let args: Vec<String> = ["--peers", &peers, "--bootstrap", "--data", &common::data_dir(&path, 1)]
        .into_iter()
        .map(str::to_owned)
        .chain(["--admin-token-file".to_owned(), token.display().to_string()])
        .collect();
    let node = Node::start(1, raft, http, log_file(&path, 1, 1), &args);
    eventually("a leader", || common::status(http)?["leader"].as_u64());
    let log = std::fs::read_to_string(&node.log).expect("the log");
    assert!(log.contains("WARN") && log.contains("plain mode, for local experiments only"), "{log}");
    #[cfg(unix)]
    assert!(log.contains("is readable by others than its owner (mode 644)"), "{log}");
    let put = common::call("PUT", http, "/kv/k", b"v").expect("an answer");
    assert_eq!(put.status, 200, "{}", put.text());
    let transfer = common::call("POST", http, "/cluster/leader", b"{\"id\":1}").expect("an answer");
    common::assert_json_error(&transfer, 401);
    let node_arg = http.to_string();
    let token_arg = token.display().to_string();
    let with_token = raft_kv(&["transfer", "1", "--node", &node_arg, "--token-file", &token_arg], &[]);
    assert!(with_token.status.success(), "{}{}", text(&with_token.stdout), text(&with_token.stderr));
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&with_token.stdout).expect("JSON")["leader"], 1);
}

/// The launcher, killed when dropped (its nodes then stop by themselves); its log printed when
/// the test fails.
struct Launcher {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Drop for Launcher {
    fn drop(&mut self) {
        let _ = self.child.kill(); // Already gone is fine.
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- launcher ---\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

/// `raft-kv cluster --tls DIR` with no DIR yet writes the certificates and serves HTTPS.
#[test]
fn the_launcher_writes_certificates_into_an_empty_tls_directory() {
    let (_dir, path) = temp();
    let tls = path.join("tls");
    // One block for both kinds of port, so that they cannot overlap.
    let http_port = block_of_free_ports(6);
    let raft_port = http_port + 3;
    let log_path = path.join("launcher.log");
    let log = std::fs::File::create(&log_path).expect("a log file");
    let child = Command::new(env!("CARGO_BIN_EXE_raft-kv"))
        .args(["cluster", "--nodes", "3", "--http-port", &http_port.to_string(), "--raft-port", &raft_port.to_string()])
        .arg("--data")
        .arg(path.join("data"))
        .arg("--tls")
        .arg(&tls)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("a log file"))
        .stderr(log)
        .spawn()
        .expect("the launcher starts");
    let _launcher = Launcher { child, log: log_path.clone() };
    let admin = eventually("the certificates", || {
        let token = tls.join("admin.token");
        token.exists().then(|| Https::new(&tls.join("ca.pem")).with_token_file(&token))
    });
    let node = SocketAddr::from(([127, 0, 0, 1], http_port + 1));
    eventually("a leader over https", || {
        admin.call("GET", node, "/cluster/status", &[]).ok()?.json()["leader"].as_u64()
    });
    let tls_arg = tls.display().to_string();
    let node_arg = node.to_string();
    let put = raft_kv(&["put", "k", "v", "--tls", &tls_arg, "--node", &node_arg], &[]);
    assert!(put.status.success(), "{}{}", text(&put.stdout), text(&put.stderr));
    let log = std::fs::read_to_string(&log_path).expect("the log");
    assert!(!log.contains("plain mode"), "{log}");
}

/// A port `p` such that `p..p + count` were all free a moment ago.
fn block_of_free_ports(count: u16) -> u16 {
    eventually("a block of free ports", || {
        let first = free_port().port();
        let last = first.checked_add(count - 1)?;
        (first..=last).all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()).then_some(first)
    })
}

/// TLS settings that cannot work stop `serve` and `cluster` at once, saying why, before any
/// node starts.
#[test]
fn unusable_tls_settings_are_refused_at_start() {
    let (_dir, path) = temp();
    let tls = path.join("tls");
    certificates(&tls, 2);
    let (tls_arg, data_arg) = (tls.display().to_string(), common::data_dir(&path, 1));
    let (raft, http) = (free_port().to_string(), free_port().to_string());
    let serve = |extra: &[&str]| {
        let mut args = vec!["serve", "--id", "1", "--raft", &raft, "--http", &http, "--data", &data_arg];
        args.extend_from_slice(extra);
        raft_kv(&args, &[])
    };
    let refused = |output: Output, because: &str| {
        assert!(!output.status.success(), "started: {}", text(&output.stderr));
        assert!(text(&output.stderr).contains(because), "{}", text(&output.stderr));
    };
    refused(serve(&["--tls", &tls_arg, "--join", "http://127.0.0.1:1"]), "members serve https://");
    refused(serve(&["--join", "https://127.0.0.1:1"]), "members serve http://");
    let data_token = tls.join("data.token").display().to_string();
    refused(serve(&["--bootstrap", "--data-token-file", &data_token]), "needs an admin token");
    // The Raft transport's mutual TLS: the certificates name cluster 1, so a node of cluster 2
    // cannot start with them (in either mode).
    refused(serve(&["--bootstrap", "--tls", &tls_arg, "--cluster-id", "2"]), "the TLS certificate names");
    let shards = ["--bootstrap", "--tls", &tls_arg, "--cluster-id", "2", "--shards", "2"];
    refused(serve(&shards), "the TLS certificate names");
    std::fs::remove_file(tls.join("node-1.key")).expect("remove a key");
    refused(serve(&["--bootstrap", "--tls", &tls_arg]), "node-1.key");
    let cluster = raft_kv(&["cluster", "--nodes", "3", "--tls", &tls_arg, "--data", &data_arg], &[]);
    refused(cluster, "no node-1.key there");
    assert!(!path.join("node-1").exists(), "no node started");
}
