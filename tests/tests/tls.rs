//! Issue 16, TLS: a controller started with `--tls-cert/--tls-key` serves workers, the CLI and
//! the admin client over HTTPS only, with a certificate from `scripts/make-cert.sh` (the
//! `openssl` command-line tool). Plain HTTP is refused with a message, an untrusted certificate
//! fails with a hint, and the hostile-client deadlines hold on TLS connections too. Every
//! process is stopped by its PID on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::{Duration, Instant};

use warp_common::commands::Command;
use warp_common::protocol::{TaskSpec, TaskState};
use warp_tests::{ControllerProc, TempDir, bin, start_worker, wait_online};

/// `scripts/make-cert.sh DIR 127.0.0.1`: DIR/cert.pem and DIR/key.pem.
fn make_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-cert.sh");
    let certs = dir.join("tls");
    let out = Process::new("bash")
        .arg(&script)
        .arg(&certs)
        .arg("127.0.0.1")
        .output()
        .expect("run make-cert.sh (needs bash and the openssl command-line tool)");
    assert!(
        out.status.success(),
        "make-cert.sh failed (is openssl installed?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = certs.join("key.pem");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "key.pem must be private");
    (certs.join("cert.pem"), key)
}

fn start_tls_controller(dir: &Path, extra: &[&str]) -> ControllerProc {
    let (cert, key) = make_cert(dir);
    let mut args = vec![
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let c = ControllerProc::start(dir, 0, &args);
    assert!(c.url.starts_with("https://"), "{}", c.url);
    c
}

/// Sends `request` on a fresh plain TCP connection and returns everything read back.
fn raw_exchange(port: u16, request: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// `warp-controller ARGS...` with the admin token in its environment; (exit code, stdout,
/// stderr).
fn cli(c: &ControllerProc, args: &[&str]) -> (i32, String, String) {
    let out = Process::new(bin("warp-controller"))
        .args(args)
        .env("WARP_ADMIN_TOKEN", &c.admin_token)
        .env_remove("WARP_CA_FILE")
        .output()
        .expect("run warp-controller");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn https_controller_serves_workers_and_clients_and_refuses_plain_http() {
    let dir = TempDir::new("tls-e2e");
    let c = start_tls_controller(dir.path(), &[]);
    let ca = c.ca_file.clone().unwrap();
    let ca_s = ca.to_str().unwrap();

    // A worker trusting the certificate registers, long-polls and runs tasks over HTTPS; its
    // first poll is parked and answered later by the submit on another connection.
    let _w = start_worker(dir.path(), &c.url, &c.token, 0, &["--ca-file", ca_s]);
    let client = c.client();
    wait_online(&client, 1);
    std::thread::sleep(Duration::from_millis(300)); // the poll is parked by now
    for i in 0..20u64 {
        let id = client
            .submit(&TaskSpec::new(vec![Command::Echo { value: i.into() }]))
            .expect("submit over https");
        let d = client
            .wait(id, Some(Duration::from_secs(20)))
            .expect("wait");
        assert_eq!(d.state, TaskState::Completed, "{d:?}");
    }

    // The CLI with --ca-file runs a program task to the end.
    let (code, out, err) = cli(
        &c,
        &[
            "submit",
            "--controller",
            &c.url,
            "--ca-file",
            ca_s,
            "--wait",
            "--exec",
            "--",
            "echo",
            "over-tls",
        ],
    );
    assert_eq!(code, 0, "submit --wait over https: {err}");
    assert!(out.contains("over-tls"), "{out}");

    // Without the certificate the CLI fails, and says what to do.
    let (code, _, err) = cli(&c, &["status", "--controller", &c.url]);
    assert_ne!(code, 0);
    assert!(err.contains("--ca-file"), "no hint about --ca-file: {err}");

    // Plain HTTP to the HTTPS port is refused with a message, never served.
    let answer = raw_exchange(
        c.port,
        format!(
            "GET /api/workers/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            c.admin_token
        )
        .as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("https_required"), "{answer}");
    assert!(
        !answer.contains("\"id\""),
        "plain HTTP must not be served: {answer}"
    );
    let (code, _, err) = cli(
        &c,
        &[
            "status",
            "--controller",
            &c.url.replace("https://", "http://"),
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("https://"), "{err}");

    // A worker given http:// for an HTTPS controller stops with the message, not a retry loop
    // that never ends.
    let mut plain = start_worker(
        dir.path(),
        &c.url.replace("https://", "http://"),
        &c.token,
        1,
        &["--register-retries", "0"],
    );
    let status = plain.wait_exit(Duration::from_secs(20));
    assert!(
        matches!(status, Some(Some(code)) if code != 0),
        "{status:?}\n{}",
        plain.stderr()
    );
    assert!(plain.stderr().contains("https://"), "{}", plain.stderr());

    // A worker with a CA file that is not a certificate is a usage error naming the file.
    let bogus = dir.path().join("bogus.pem");
    std::fs::write(&bogus, "not PEM\n").unwrap();
    let mut bad = start_worker(
        dir.path(),
        &c.url,
        &c.token,
        2,
        &["--ca-file", bogus.to_str().unwrap()],
    );
    let status = bad.wait_exit(Duration::from_secs(20));
    assert!(
        matches!(status, Some(Some(code)) if code != 0),
        "{status:?}"
    );
    assert!(bad.stderr().contains("bogus.pem"), "{}", bad.stderr());
}

#[test]
fn silent_tls_connections_are_closed_by_the_header_deadline() {
    // Before the socket deadlines reached TLS connections, a client that connected and sent
    // nothing (or stopped mid-handshake) held its connection for ever.
    let dir = TempDir::new("tls-deadline");
    let c = start_tls_controller(dir.path(), &["--header-timeout", "1"]);
    let mut silent: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(("127.0.0.1", c.port)).unwrap())
        .collect();
    // A half handshake: a TLS record header announcing more than is sent.
    let mut half = TcpStream::connect(("127.0.0.1", c.port)).unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    silent.push(half);
    // Registered clients are served meanwhile.
    let t = Instant::now();
    let client = c.client();
    client
        .workers(true)
        .expect("a client is served while silent connections are open");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // Each silent connection is closed within the header timeout (1 s) plus slack.
    let t = Instant::now();
    for s in &mut silent {
        s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(_) => {}
            Err(e) => panic!("connection still open after {:?}: {e}", t.elapsed()),
        }
    }
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
}

#[test]
fn serve_refuses_a_bad_certificate_or_key_with_the_file_named() {
    let dir = TempDir::new("tls-bad");
    let (cert, key) = make_cert(dir.path());
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "-----BEGIN NOTHING-----\n").unwrap();
    let serve = |cert: &Path, key: &Path| {
        Process::new(bin("warp-controller"))
            .args([
                "serve",
                "--bind",
                "127.0.0.1",
                "--port",
                "0",
                "--token-file",
            ])
            .arg(dir.path().join("token"))
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .output()
            .expect("run warp-controller serve")
    };
    for (c, k, expect) in [
        (&junk, &key, "certificate"),
        (&cert, &junk, "key"),
        (&cert, &dir.path().join("missing.pem"), "missing.pem"),
    ] {
        let out = serve(c, k);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "serve started with {c:?} {k:?}");
        assert!(err.contains(expect), "{expect:?} not in: {err}");
    }
}
