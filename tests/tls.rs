//! `rediss://` against real `redis-server`s with a TLS port (started by the
//! test harness on free ports; never the shared Redis at 6379), with
//! certificates made by `openssl` in a temporary directory for each test: a
//! private CA, server certificates (valid, expired, for another name), a
//! client certificate, and a second CA that signed none of them.
//!
//! Every failure must happen in `build()`, say which failure it is, and never
//! fall back to plaintext.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tickbus::test_util::{RedisServer, RedisServerOptions, ServerTls};
use tickbus::{
    Bus, DurableOptions, Error, ErrorKind, LiveBus, RedisConfig, StartAt, TlsOptions, TryRecvError,
};

/// Upper bound on any single wait in these tests (a hang fails, never blocks CI).
const PATIENCE: Duration = Duration::from_secs(30);

/// The certificates of one test, in a temporary directory.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("openssl must be installed to run the TLS tests");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// A P-256 key in `<name>.key` and a request for `cn` in `<name>.csr`.
    fn request(&self, name: &str, cn: &str) {
        self.openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ]);
    }

    /// A self-signed CA in `<name>.pem` (key `<name>.key`) and its `openssl ca` database.
    fn ca(&self, name: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "3650",
            "-subj",
            &format!("/CN=tickbus test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
    }

    /// Signs `<name>.csr` with the CA `ca` into `<name>.pem`, with the
    /// extensions of section `extensions` and validity `start`..`end`
    /// (`YYYYMMDDHHMMSSZ`): `openssl ca` takes explicit dates, so an expired
    /// certificate needs no fake clock.
    fn sign(&self, name: &str, ca: &str, extensions: &str, start: &str, end: &str) {
        self.openssl(&[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-name",
            "test_ca",
            "-cert",
            &format!("{ca}.pem"),
            "-keyfile",
            &format!("{ca}.key"),
            "-in",
            &format!("{name}.csr"),
            "-out",
            &format!("{name}.pem"),
            "-extensions",
            extensions,
            "-startdate",
            start,
            "-enddate",
            end,
            "-notext",
        ]);
    }

    fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::Builder::new()
                .prefix("tickbus-tls-")
                .tempdir()
                .unwrap(),
        };
        fs::write(
            pki.path("ca.cnf"),
            "[ test_ca ]\n\
             database = index.txt\n\
             new_certs_dir = .\n\
             serial = serial\n\
             default_md = sha256\n\
             policy = any_name\n\
             unique_subject = no\n\
             [ any_name ]\n\
             commonName = supplied\n\
             [ localhost ]\n\
             subjectAltName = DNS:localhost,IP:127.0.0.1\n\
             basicConstraints = CA:FALSE\n\
             extendedKeyUsage = serverAuth\n\
             [ internal ]\n\
             subjectAltName = DNS:redis.internal\n\
             basicConstraints = CA:FALSE\n\
             extendedKeyUsage = serverAuth\n\
             [ client ]\n\
             basicConstraints = CA:FALSE\n\
             extendedKeyUsage = clientAuth\n",
        )
        .unwrap();
        fs::write(pki.path("index.txt"), "").unwrap();
        fs::write(pki.path("serial"), "1000\n").unwrap();
        let (now, later) = ("20200101000000Z", "20991231000000Z");
        pki.ca("ca");
        pki.ca("other-ca");
        pki.request("server", "localhost");
        pki.sign("server", "ca", "localhost", now, later);
        pki.request("expired", "localhost");
        pki.sign(
            "expired",
            "ca",
            "localhost",
            "20200101000000Z",
            "20200102000000Z",
        );
        pki.request("internal", "redis.internal");
        pki.sign("internal", "ca", "internal", now, later);
        pki.request("client", "tickbus-client");
        pki.sign("client", "ca", "client", now, later);
        pki
    }

    /// A server whose TLS port presents `<cert>.pem`.
    fn server(&self, cert: &str, auth_clients: bool) -> RedisServer {
        RedisServer::start_with(RedisServerOptions {
            tls: Some(ServerTls {
                cert_file: self.path(&format!("{cert}.pem")),
                key_file: self.path(&format!("{cert}.key")),
                ca_file: self.path("ca.pem"),
                auth_clients,
            }),
            ..Default::default()
        })
        .unwrap()
    }

    /// The TLS options trusting the private CA (and nothing else).
    fn trust(&self, ca: &str) -> TlsOptions {
        TlsOptions {
            ca_file: Some(self.path(&format!("{ca}.pem"))),
            ..Default::default()
        }
    }

    fn with_client_cert(&self, tls: TlsOptions) -> TlsOptions {
        TlsOptions {
            cert_file: Some(self.path("client.pem")),
            key_file: Some(self.path("client.key")),
            ..tls
        }
    }
}

fn config(url: &str, tls: TlsOptions) -> RedisConfig {
    let mut config = RedisConfig::from_url(url).unwrap();
    config.tls = tls;
    config.connect_timeout = Duration::from_secs(3);
    config.read_block = Duration::from_millis(200);
    config.command_timeout = Duration::from_secs(2);
    config
}

/// Builds a bus that must fail; returns the error (bounded in time).
fn build_fails(config: RedisConfig) -> Error {
    let started = Instant::now();
    let error = Bus::builder()
        .redis(config)
        .build()
        .map(|_| ())
        .unwrap_err();
    assert!(started.elapsed() < PATIENCE, "{error}");
    eprintln!("build() failed after {:?}: {error}", started.elapsed());
    error
}

/// Publishes a durable event through `bus` and checks it is in the stream.
fn publish_and_check(bus: &LiveBus, server: &RedisServer, topic: &str) {
    let durable = bus
        .durable_topic::<String>(topic, DurableOptions::default())
        .unwrap();
    durable
        .publish_durable("over TLS".to_string())
        .unwrap()
        .wait_timeout(PATIENCE)
        .unwrap();
    let key = format!("tickbus:stream:{{{topic}}}");
    assert_eq!(server.cli(&["XLEN", &key]).unwrap(), "1");
}

#[test]
fn a_private_ca_connects_and_events_round_trip() {
    let pki = Pki::new();
    let server = pki.server("server", false);
    let url = server.tls_url().unwrap();
    let bus = Bus::builder()
        .redis(config(&url, pki.trust("ca")))
        .build()
        .unwrap();
    publish_and_check(&bus, &server, "exec:fills");

    // A second bus reads it back over TLS (its reader connection).
    let mut reader_config = config(&url, pki.trust("ca"));
    reader_config.remote_start = StartAt::Beginning;
    let reader = Bus::builder().redis(reader_config).build().unwrap();
    let mut subscriber = reader
        .durable_topic::<String>("exec:fills", DurableOptions::default())
        .unwrap()
        .subscribe();
    let deadline = Instant::now() + PATIENCE;
    let event = loop {
        match subscriber.try_recv() {
            Ok(event) => break event,
            Err(TryRecvError::Empty) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(error) => panic!("nothing read back over TLS: {error:?}"),
        }
    };
    assert_eq!(event.value, "over TLS");
}

#[test]
fn mutual_tls_needs_the_client_certificate() {
    let pki = Pki::new();
    let server = pki.server("server", true);
    let url = server.tls_url().unwrap();

    let error = build_fails(config(&url, pki.trust("ca")));
    assert_eq!(error.kind(), ErrorKind::Auth, "{error}");
    let message = error.to_string();
    assert!(
        message.contains("requires a client certificate"),
        "{message}"
    );
    assert!(message.contains("TICKBUS_REDIS_CERT_FILE"), "{message}");

    let bus = Bus::builder()
        .redis(config(&url, pki.with_client_cert(pki.trust("ca"))))
        .build()
        .unwrap();
    publish_and_check(&bus, &server, "oms:orders");
}

#[test]
fn a_wrong_ca_fails_at_build_naming_the_ca() {
    let pki = Pki::new();
    let server = pki.server("server", false);
    let error = build_fails(config(&server.tls_url().unwrap(), pki.trust("other-ca")));
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    let message = error.to_string();
    assert!(message.contains("not trusted: unknown issuer"), "{message}");
    assert!(message.contains("other-ca.pem"), "{message}");
    // The typed rustls error is kept as the source.
    let source = std::error::Error::source(&error).expect("a source");
    assert!(
        source.to_string().contains("UnknownIssuer")
            || source.to_string().contains("unknown issuer"),
        "{source}"
    );
}

#[test]
fn an_expired_server_certificate_fails_at_build() {
    let pki = Pki::new();
    let server = pki.server("expired", false);
    let error = build_fails(config(&server.tls_url().unwrap(), pki.trust("ca")));
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert!(error.to_string().contains("has expired"), "{error}");
}

#[test]
fn a_name_mismatch_fails_naming_the_name_and_the_server_name_option_fixes_it() {
    let pki = Pki::new();
    let server = pki.server("internal", false);
    let url = server.tls_url().unwrap();
    let error = build_fails(config(&url, pki.trust("ca")));
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    let message = error.to_string();
    assert!(
        message.contains("not valid for the name \"127.0.0.1\""),
        "{message}"
    );
    assert!(message.contains("(it names redis.internal)"), "{message}");
    assert!(message.contains("server_name"), "{message}");

    let bus = Bus::builder()
        .redis(config(
            &url,
            TlsOptions {
                server_name: Some("redis.internal".into()),
                ..pki.trust("ca")
            },
        ))
        .build()
        .unwrap();
    publish_and_check(&bus, &server, "md:quotes");
}

#[test]
fn a_plaintext_server_on_rediss_fails_and_never_falls_back() {
    let pki = Pki::new();
    let server = RedisServer::start().unwrap();
    let url = format!("rediss://127.0.0.1:{}", server.port());
    let error = build_fails(config(&url, pki.trust("ca")));
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    let message = error.to_string();
    assert!(message.contains("did not answer TLS"), "{message}");
    assert!(message.contains("never falls back"), "{message}");
    // Nothing was written in plaintext.
    assert_eq!(server.cli(&["DBSIZE"]).unwrap(), "0");
}

#[test]
fn certificates_on_a_redis_url_are_refused() {
    let pki = Pki::new();
    let server = RedisServer::start().unwrap();
    let error = build_fails(config(&server.url(), pki.trust("ca")));
    assert_eq!(error.kind(), ErrorKind::InvalidConfig, "{error}");
    assert!(error.to_string().contains("use rediss://"), "{error}");
}

#[test]
fn unreadable_or_invalid_files_are_named_and_keys_never_printed() {
    let pki = Pki::new();
    let server = pki.server("server", true);
    let url = server.tls_url().unwrap();

    let missing = pki.path("missing.pem");
    let error = build_fails(config(
        &url,
        TlsOptions {
            ca_file: Some(missing.clone()),
            ..Default::default()
        },
    ));
    assert_eq!(error.kind(), ErrorKind::InvalidConfig, "{error}");
    assert!(
        error.to_string().contains(&missing.display().to_string()),
        "{error}"
    );

    // A key file that is not PEM, with a secret-looking body: named, not quoted.
    let bad_key = pki.path("bad.key");
    fs::write(&bad_key, "-----BEGIN PRIVATE KEY-----\nSECRET!!\n").unwrap();
    let mut tls = pki.with_client_cert(pki.trust("ca"));
    tls.key_file = Some(bad_key.clone());
    let error = build_fails(config(&url, tls));
    assert_eq!(error.kind(), ErrorKind::InvalidConfig, "{error}");
    let message = format!("{error} {error:?}");
    assert!(
        message.contains(&bad_key.display().to_string()),
        "{message}"
    );
    assert!(!message.contains("SECRET"), "{message}");

    // The client key of another certificate.
    let mut tls = pki.with_client_cert(pki.trust("ca"));
    tls.key_file = Some(pki.path("server.key"));
    let error = build_fails(config(&url, tls));
    assert_eq!(error.kind(), ErrorKind::InvalidConfig, "{error}");
    assert!(
        error.to_string().contains("cannot be used together"),
        "{error}"
    );
}

/// The child half of [`the_environment_variables_configure_tls`]: runs only
/// in the child process that test starts with its own environment (so no other
/// test's environment changes under it).
#[test]
#[ignore = "the child process of the_environment_variables_configure_tls, which runs it"]
fn child_builds_from_the_environment() {
    let expected_port = std::env::var("TICKBUS_TLS_TEST_CHILD")
        .expect("run by the_environment_variables_configure_tls");
    let config = RedisConfig::from_env()
        .unwrap()
        .expect("TICKBUS_REDIS_URL is set");
    assert!(config.uses_tls());
    let ca = std::env::var_os("TICKBUS_REDIS_CA_FILE").map(PathBuf::from);
    assert_eq!(config.tls.ca_file, ca);
    assert!(config.tls.cert_file.is_some() && config.tls.key_file.is_some());
    // `from_url` (the examples, the tool's `--redis`) reads the same variables.
    let from_url = RedisConfig::from_url(config.url()).unwrap();
    assert_eq!(from_url.tls, config.tls);
    // A plaintext URL ignores them (they say how to speak TLS, not whether).
    let plain = RedisConfig::from_url("redis://127.0.0.1:6379").unwrap();
    assert!(!plain.tls.is_set());
    plain.validate().unwrap();
    let bus = Bus::builder().redis(config).build().unwrap();
    let durable = bus
        .durable_topic::<u64>("env:check", DurableOptions::default())
        .unwrap();
    durable
        .publish_durable(7)
        .unwrap()
        .wait_timeout(PATIENCE)
        .unwrap();
    assert!(expected_port.parse::<u16>().is_ok());
}

#[test]
fn the_environment_variables_configure_tls() {
    let pki = Pki::new();
    let server = pki.server("server", true);
    let url = server.tls_url().unwrap();
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_builds_from_the_environment",
            "--nocapture",
        ])
        .env(
            "TICKBUS_TLS_TEST_CHILD",
            server.tls_port().unwrap().to_string(),
        )
        .env("TICKBUS_REDIS_URL", &url)
        .env("TICKBUS_REDIS_CA_FILE", pki.path("ca.pem"))
        .env("TICKBUS_REDIS_CERT_FILE", pki.path("client.pem"))
        .env("TICKBUS_REDIS_KEY_FILE", pki.path("client.key"))
        .env_remove("TICKBUS_REDIS_TLS_SERVER_NAME")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        server.cli(&["XLEN", "tickbus:stream:{env:check}"]).unwrap(),
        "1"
    );
}
