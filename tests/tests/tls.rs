//! TLS end to end: a real broker with certificates made at test time (rcgen), `sluices://`
//! clients, mutual TLS, HTTPS on the API's port, and a certificate reloaded on SIGHUP.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use sluice_client::{Client, ConsumeOptions, Error, PublishOptions, QueueOptions, TlsError};
use sluice_tests::broker::{sluice_command, wait_bounded, within, BrokerProcess, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A certificate authority of the test's own.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its key, as PEM text.
struct Issued {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for 127.0.0.1 and localhost.
    fn server(&self) -> Issued {
        self.issue(
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate.
    fn client(&self) -> Issued {
        self.issue(&["worker.test"], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, names: &[&str], purpose: ExtendedKeyUsagePurpose) -> Issued {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params.extended_key_usages = vec![purpose];
        let key = KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("signed certificate");
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// PEM files in a temporary directory, and a broker started with them.
struct TlsBroker {
    process: BrokerProcess,
    files: Files,
    _dir: tempfile::TempDir,
}

/// Where the test's PEM files are.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn write(&self, name: &str, pem: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, pem).expect("write PEM");
        path
    }

    fn text(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

impl TlsBroker {
    /// A broker with `server` as its certificate (and `client_ca` for mutual TLS), TLS and
    /// plain ports on free ports, TLS reload lines in its log.
    fn start(server: &Issued, client_ca: Option<&Ca>, extra: &[&str]) -> TlsBroker {
        let dir = tempfile::tempdir().expect("temporary directory");
        let files = Files {
            dir: dir.path().to_owned(),
        };
        files.write("server.pem", &server.cert);
        files.write("server.key", &server.key);
        let (cert, key) = (files.text("server.pem"), files.text("server.key"));
        let mut args = vec![
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-listen",
            "127.0.0.1:0",
        ];
        let client_ca_path = client_ca.map(|ca| {
            files.write("client-ca.pem", &ca.pem());
            files.text("client-ca.pem")
        });
        if let Some(path) = &client_ca_path {
            args.extend(["--tls-client-ca", path]);
        }
        args.extend(extra);
        let process = BrokerProcess::start_with(&dir.path().join("data"), &args, |cmd| {
            cmd.env("SLUICE_LOG", "warn,sluice_broker::tls=info");
        });
        TlsBroker {
            process,
            files,
            _dir: dir,
        }
    }

    fn tls_addr(&self) -> &str {
        self.process.tls_addr().expect("the TLS port is on")
    }

    /// A `sluices://` URL to the TLS port trusting `ca` (written to `ca_name`), with `query`
    /// appended.
    fn url(&self, ca: &Ca, ca_name: &str, query: &str) -> String {
        let ca_file = self.files.write(ca_name, &ca.pem());
        format!(
            "sluices://guest:guest@{}?ca_file={}{query}",
            self.tls_addr(),
            ca_file.display()
        )
    }

    /// The `cert_file` and `key_file` parameters of a client certificate written as `name`.
    fn client_cert_query(&self, issued: &Issued, name: &str) -> String {
        let cert = self.files.write(&format!("{name}.pem"), &issued.cert);
        let key = self.files.write(&format!("{name}.key"), &issued.key);
        format!("&cert_file={}&key_file={}", cert.display(), key.display())
    }

    fn hang_up(&self) {
        let pid = rustix::process::Pid::from_raw(self.process.pid() as i32).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::HUP).expect("SIGHUP");
    }

    fn stop(self) {
        let log = self.process.stop_and_log();
        assert!(!log.contains("assumes a crash"), "{log}");
    }
}

async fn connect(url: &str) -> Result<Client, Error> {
    within("connect", Client::connect(url)).await
}

/// Publishes one message to a queue of its own and consumes it back.
async fn round_trip(client: &Client, queue: &str) {
    within("round trip", async {
        client
            .declare_queue(queue, QueueOptions::new())
            .await
            .expect("declare");
        client
            .publish("", queue, format!("hello {queue}"), &PublishOptions::new())
            .await
            .expect("publish");
        let mut consumer = client
            .consume(queue, ConsumeOptions::new())
            .await
            .expect("consume");
        let message = consumer.next().await.expect("a delivery").expect("message");
        assert_eq!(&message.body[..], format!("hello {queue}").as_bytes());
        message.ack().await.expect("ack");
    })
    .await;
}

#[tokio::test]
async fn a_sluices_client_publishes_and_consumes_over_tls_beside_the_plain_port() {
    let ca = Ca::new("test CA");
    let broker = TlsBroker::start(&ca.server(), None, &[]);
    let tls = connect(&broker.url(&ca, "ca.pem", "")).await.expect("TLS");
    round_trip(&tls, "over-tls").await;
    let plain = connect(&broker.process.url()).await.expect("plain");
    round_trip(&plain, "over-plain").await;
    // The admin commands take the same URL (from SLUICE_URL: it holds a password).
    let tls_url = broker.url(&ca, "ca.pem", "");
    let listing = within(
        "sluice queues over TLS",
        tokio::task::spawn_blocking(move || {
            sluice_command()
                .env("SLUICE_URL", &tls_url)
                .args(["--json", "queues"])
                .output()
                .expect("run sluice queues")
        }),
    )
    .await
    .expect("CLI thread");
    let stdout = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.status.success(), "{listing:?}");
    assert!(
        stdout.contains("over-tls") && stdout.contains("over-plain"),
        "{stdout}"
    );
    tls.close().await.expect("close TLS");
    plain.close().await.expect("close plain");
    broker.stop();
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_servers_ca_is_refused_and_others_are_served() {
    let ca = Ca::new("test CA");
    let other = Ca::new("another CA");
    let broker = TlsBroker::start(&ca.server(), None, &[]);
    match connect(&broker.url(&other, "other-ca.pem", "")).await {
        Err(Error::Tls(TlsError::ServerNotTrusted(reason))) => {
            assert!(reason.contains("UnknownIssuer"), "{reason}")
        }
        other => panic!("expected an untrusted server certificate, got {other:?}"),
    }
    // Without a ca_file the system's roots decide, and they do not know the test's CA.
    let system_roots = format!("sluices://guest:guest@{}", broker.tls_addr());
    match connect(&system_roots).await {
        Err(Error::Tls(TlsError::ServerNotTrusted(_) | TlsError::NoRootCertificates)) => {}
        other => panic!("expected the system's roots to refuse the test CA, got {other:?}"),
    }
    // A plain client on the TLS port gets nowhere either, and breaks nothing.
    let plain_on_tls = format!("sluice://guest:guest@{}", broker.tls_addr());
    assert!(connect(&plain_on_tls).await.is_err());
    let good = connect(&broker.url(&ca, "ca.pem", "")).await.expect("TLS");
    round_trip(&good, "after-refusals").await;
    good.close().await.expect("close");
    broker.stop();
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_from_the_client_ca() {
    let ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let stranger_ca = Ca::new("stranger CA");
    let broker = TlsBroker::start(&ca.server(), Some(&client_ca), &[]);

    match connect(&broker.url(&ca, "ca.pem", "")).await {
        Err(Error::Tls(TlsError::RefusedByServer(reason))) => {
            assert!(reason.contains("CertificateRequired"), "{reason}")
        }
        other => panic!("expected a refusal for the missing certificate, got {other:?}"),
    }
    let stranger = broker.client_cert_query(&stranger_ca.client(), "stranger");
    match connect(&broker.url(&ca, "ca.pem", &stranger)).await {
        Err(Error::Tls(TlsError::RefusedByServer(_))) => {}
        other => panic!("expected a refusal for a stranger's certificate, got {other:?}"),
    }
    let worker = broker.client_cert_query(&client_ca.client(), "worker");
    let client = connect(&broker.url(&ca, "ca.pem", &worker))
        .await
        .expect("a certificate from the client CA is admitted");
    round_trip(&client, "mutual").await;
    client.close().await.expect("close");
    broker.stop();
}

/// One HTTPS request (`Connection: close`) trusting `ca`, presenting `client` if given; the
/// whole answer as text, or the TLS or I/O error.
async fn https_get(
    addr: &str,
    ca: &Ca,
    client: Option<&Issued>,
    path: &str,
) -> std::io::Result<String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).expect("CA root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let config = match client {
        Some(issued) => {
            use rustls::pki_types::pem::PemObject;
            let cert = rustls::pki_types::CertificateDer::from_pem_slice(issued.cert.as_bytes())
                .expect("client cert");
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(issued.key.as_bytes())
                .expect("client key");
            builder
                .with_client_auth_cert(vec![cert], key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    within("HTTPS request", async {
        let tcp = TcpStream::connect(addr).await?;
        let mut tls = connector.connect(name, tcp).await?;
        let auth = "Z3Vlc3Q6Z3Vlc3Q="; // guest:guest
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {auth}\r\n\
             Connection: close\r\n\r\n"
        );
        tls.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer).await?;
        Ok(String::from_utf8_lossy(&answer).into_owned())
    })
    .await
}

#[tokio::test]
async fn the_http_port_serves_https_with_the_same_certificate_and_client_ca_rule() {
    let ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let broker = TlsBroker::start(&ca.server(), Some(&client_ca), &[]);
    let http = broker.process.http_addr().expect("HTTP on").to_owned();
    let worker = client_ca.client();
    let answer = https_get(&http, &ca, Some(&worker), "/api/overview")
        .await
        .expect("HTTPS answer");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains("\"queues\""), "{answer}");
    // Without a client certificate the handshake (or the first read, in TLS 1.3) fails.
    assert!(https_get(&http, &ca, None, "/healthz").await.is_err());
    // Plain HTTP on the HTTPS port gets no HTTP answer.
    let plain = within("plain HTTP on the HTTPS port", async {
        let mut tcp = TcpStream::connect(&http).await.expect("connect");
        let _ = tcp
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer).await;
        answer
    })
    .await;
    assert!(!plain.starts_with(b"HTTP/1.1 200"), "{plain:?}");
    broker.stop();
}

#[tokio::test]
async fn sighup_reloads_the_certificate_for_new_connections_and_keeps_open_ones() {
    let old_ca = Ca::new("old CA");
    let new_ca = Ca::new("new CA");
    let broker = TlsBroker::start(&old_ca.server(), None, &[]);
    let open = connect(&broker.url(&old_ca, "old-ca.pem", ""))
        .await
        .expect("TLS with the old certificate");

    // A broken certificate file: the reload fails and the old certificate stays.
    broker.files.write("server.pem", "not a certificate\n");
    broker.hang_up();
    let lines = broker
        .process
        .wait_for_log(WAIT, |l| l.contains("TLS certificate reload failed"));
    assert!(lines.last().unwrap().contains("server.pem"), "{lines:?}");
    let still_old = connect(&broker.url(&old_ca, "old-ca.pem", ""))
        .await
        .expect("the old certificate is still in force");
    still_old.close().await.expect("close");

    // A new certificate from a new CA: new clients must trust the new CA.
    let renewed = new_ca.server();
    broker.files.write("server.key", &renewed.key);
    broker.files.write("server.pem", &renewed.cert);
    broker.hang_up();
    broker
        .process
        .wait_for_log(WAIT, |l| l.contains("TLS certificate reloaded"));
    let fresh = connect(&broker.url(&new_ca, "new-ca.pem", ""))
        .await
        .expect("TLS with the new certificate");
    round_trip(&fresh, "after-reload").await;
    match connect(&broker.url(&old_ca, "old-ca.pem", "")).await {
        Err(Error::Tls(TlsError::ServerNotTrusted(_))) => {}
        other => panic!("the old CA must no longer verify the server, got {other:?}"),
    }
    // The connection made before both reloads was never dropped.
    round_trip(&open, "kept-open").await;
    open.close().await.expect("close");
    fresh.close().await.expect("close");
    broker.stop();
}

#[tokio::test]
async fn a_silent_client_on_the_tls_port_is_closed_at_the_handshake_timeout() {
    let ca = Ca::new("test CA");
    let broker = TlsBroker::start(&ca.server(), None, &["--handshake-timeout-ms", "2000"]);
    let mut silent = TcpStream::connect(broker.tls_addr())
        .await
        .expect("connect");
    let mut sink = [0u8; 64];
    // The broker closes it: end of stream, or a reset.
    let read = within(
        "the broker closes the silent socket",
        silent.read(&mut sink),
    )
    .await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let client = connect(&broker.url(&ca, "ca.pem", "")).await.expect("TLS");
    client.close().await.expect("close");
    broker.stop();
}

#[tokio::test]
async fn tls_clients_count_in_the_connection_limit_shared_with_the_plain_port() {
    let ca = Ca::new("test CA");
    let broker = TlsBroker::start(&ca.server(), None, &["--max-connections", "1"]);
    let url = broker.url(&ca, "ca.pem", "");
    let plain = connect(&broker.process.url()).await.expect("plain");
    // No room: the TLS client is closed before its TLS handshake completes.
    match connect(&url).await {
        Err(Error::Io(_) | Error::Tls(_)) => {}
        other => panic!("expected the TLS client to be turned away, got {other:?}"),
    }
    plain.close().await.expect("close");
    // The slot is back once the plain connection has ended on the broker's side too.
    let tls = within("a TLS client gets the freed slot", async {
        loop {
            match Client::connect(&url).await {
                Ok(client) => break client,
                Err(Error::Io(_) | Error::Tls(_)) => tokio::task::yield_now().await,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    round_trip(&tls, "after-the-limit").await;
    tls.close().await.expect("close");
    broker.stop();
}

#[tokio::test]
async fn with_the_plain_port_off_only_tls_clients_are_served() {
    let ca = Ca::new("test CA");
    let broker = TlsBroker::start(&ca.server(), None, &["--listen", "off"]);
    assert_eq!(broker.process.addr(), "", "no plain port announced");
    let client = connect(&broker.url(&ca, "ca.pem", "")).await.expect("TLS");
    round_trip(&client, "tls-only").await;
    client.close().await.expect("close");
    broker.stop();
}

/// Runs `sluice serve` with `args` (plus a data directory and free ports); it must fail to
/// start. Its stderr.
fn failed_start(dir: &Path, args: &[&str]) -> String {
    let mut child = sluice_command()
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(["--tls-listen", "127.0.0.1:0"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start sluice");
    let mut stderr = child.stderr.take().expect("stderr");
    let status = wait_bounded(child, WAIT).expect("sluice exits");
    assert!(!status.success());
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut text).expect("stderr");
    text
}

#[test]
fn unusable_certificate_files_stop_the_start_with_an_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let files = Files {
        dir: dir.path().to_owned(),
    };
    let issued = Ca::new("test CA").server();
    let key = files.write("server.key", &issued.key);
    let missing = files.path("missing.pem");
    let err = failed_start(
        dir.path(),
        &[
            "--tls-cert",
            missing.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(
        err.contains("TLS certificate file") && err.contains("missing.pem"),
        "{err}"
    );
    let cert = files.write("server.pem", &issued.cert);
    let wrong_key = files.write("wrong.key", &Ca::new("other").server().key);
    let err = failed_start(
        dir.path(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            wrong_key.to_str().unwrap(),
        ],
    );
    assert!(
        err.contains("server.pem") && err.contains("wrong.key"),
        "{err}"
    );
    let junk = files.write("junk-ca.pem", "junk\n");
    let err = failed_start(
        dir.path(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tls-client-ca",
            junk.to_str().unwrap(),
        ],
    );
    assert!(err.contains("junk-ca.pem"), "{err}");
}
