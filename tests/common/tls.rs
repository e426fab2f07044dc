//! TLS for tests: certificates made with the `openssl` command (a CA, server certificates that
//! are good, for the wrong host or expired, a client certificate, and a second CA that signed
//! none of them), mosquitto with TLS listeners that require a client certificate, and the tansu
//! Kafka broker serving TLS (built by `scripts/kafka-tls.sh`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// Certificates and PKCS#8 keys (mode 0600) in a directory of their own.
pub struct Certs {
    pub dir: tempfile::TempDir,
}

impl Certs {
    /// Makes them all (P-256 keys; a few hundred milliseconds).
    pub fn generate() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs = Self { dir };
        certs.ca("ca", "sensorgate test CA");
        certs.ca("wrong-ca", "some other CA");
        let server = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n";
        certs.leaf("server", "127.0.0.1", server, "2");
        certs.leaf(
            "wrong-host",
            "wrong.example",
            "subjectAltName=DNS:wrong.example\nextendedKeyUsage=serverAuth\n",
            "2",
        );
        // openssl 3.0's `x509 -days` takes a negative count: valid until yesterday.
        certs.leaf("expired", "127.0.0.1", server, "-1");
        certs.leaf(
            "client",
            "sensorgate-gw",
            "extendedKeyUsage=clientAuth\n",
            "2",
        );
        certs
    }

    /// `NAME.pem` (certificate) or `NAME.key` (key) of this set.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("openssl must be installed (scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn key_mode(&self, name: &str) {
        let key = self.path(&format!("{name}.key"));
        std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    fn ca(&self, name: &str, cn: &str) {
        let (key, pem, subject) = (
            format!("{name}.key"),
            format!("{name}.pem"),
            format!("/CN={cn}"),
        );
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-subj",
            &subject,
            "-days",
            "2",
        ]);
        self.key_mode(name);
    }

    fn leaf(&self, name: &str, cn: &str, extensions: &str, days: &str) {
        let (key, csr, pem, ext, subject) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
            format!("/CN={cn}"),
        );
        std::fs::write(self.path(&ext), extensions).unwrap();
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &subject,
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            days,
            "-extfile",
            &ext,
            "-out",
            &pem,
        ]);
        self.key_mode(name);
    }
}

/// mosquitto with a plain listener (for the sensors) and three TLS listeners that require a
/// client certificate signed by the test CA: one with the good server certificate, one with
/// a certificate for another host, one with an expired certificate. Killed on drop.
pub struct TlsMosquitto {
    pub plain: u16,
    pub good: u16,
    pub wrong_host: u16,
    pub expired: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl TlsMosquitto {
    /// Starts it with `certs` and waits until every listener accepts connections.
    pub fn start(certs: &Certs) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (plain, good, wrong_host, expired) =
            (free_port(), free_port(), free_port(), free_port());
        let tls = |port: u16, name: &str| {
            format!(
                "listener {port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
                 require_certificate true\n",
                ca = certs.path("ca.pem").display(),
                cert = certs.path(&format!("{name}.pem")).display(),
                key = certs.path(&format!("{name}.key")).display(),
            )
        };
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "per_listener_settings false\nallow_anonymous true\npersistence false\n\
                 max_queued_messages 1000000\nuser root\nlog_dest stderr\nlog_type error\n\
                 listener {plain} 127.0.0.1\n{}{}{}",
                tls(good, "server"),
                tls(wrong_host, "wrong-host"),
                tls(expired, "expired"),
            ),
        )
        .unwrap();
        let mut child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("mosquitto must be installed (scripts/test.sh installs it)");
        wait_listening(
            &mut child,
            "mosquitto (a port was taken?)",
            &[plain, good, wrong_host, expired],
            None,
        );
        Self {
            plain,
            good,
            wrong_host,
            expired,
            child,
            _dir: dir,
        }
    }
}

impl Drop for TlsMosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `openssl s_server` with `cert`/`key` on a free port, its output in `log`: a TLS endpoint
/// that speaks no Kafka, to see how a Kafka client's handshake goes. Killed on drop.
pub struct TlsServer {
    pub port: u16,
    pub log: PathBuf,
    child: Child,
}

impl TlsServer {
    /// Starts it and waits until it listens.
    pub fn start(cert: &Path, key: &Path, log: &Path) -> Self {
        let port = free_port();
        let out = std::fs::File::create(log).unwrap();
        let mut child = Command::new("openssl")
            .args(["s_server", "-accept", &port.to_string(), "-naccept", "1000"])
            .arg("-cert")
            .arg(cert)
            .arg("-key")
            .arg(key)
            .stdin(Stdio::piped())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("openssl must be installed (scripts/test.sh installs it)");
        wait_listening(&mut child, "openssl s_server", &[port], Some(log));
        Self {
            port,
            log: log.to_owned(),
            child,
        }
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `child` (`what`, its output in `log`) listens on each of `ports` of 127.0.0.1;
/// panics if it exits first or takes over 30 s.
fn wait_listening(child: &mut Child, what: &str, ports: &[u16], log: Option<&Path>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for &port in ports {
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let output = || log.and_then(|l| std::fs::read_to_string(l).ok());
            assert!(
                child.try_wait().unwrap().is_none(),
                "{what} exited: {}",
                output().unwrap_or_default()
            );
            assert!(
                Instant::now() < deadline,
                "{what} did not listen on {port}: {}",
                output().unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A Kafka-protocol broker process behind a TLS endpoint: the tansu broker (`SENSORGATE_TANSU`,
/// which `scripts/kafka-tls.sh` builds and sets), its data in memory, listening in plaintext on
/// one port and advertising a second one, where `socat` terminates TLS with `cert`/`key` and
/// forwards the bytes to it. tansu 0.6.0 takes `--cert`/`--key` but never uses them (its broker
/// builds a TLS acceptor and drops it), so a client that asks it for TLS hangs in the
/// handshake; socat is OpenSSL's TLS server, as a broker with TLS built in would be. Both are
/// killed on drop; their output goes to `log`.
pub struct TlsTansu {
    /// The TLS port (what clients bootstrap from, and what the broker advertises).
    pub port: u16,
    pub log: PathBuf,
    broker: Child,
    tls: Child,
}

impl TlsTansu {
    /// The broker binary, if `SENSORGATE_TANSU` names one.
    pub fn binary() -> Option<PathBuf> {
        std::env::var_os("SENSORGATE_TANSU").map(PathBuf::from)
    }

    /// Starts both and waits until they listen.
    pub fn start(binary: &Path, cert: &Path, key: &Path, log: &Path) -> Self {
        let (plain, port) = (free_port(), free_port());
        let out = std::fs::File::create(log).unwrap();
        let mut broker = super::clean_command(binary)
            .arg("broker")
            .args(["--listener-url", &format!("tcp://127.0.0.1:{plain}")])
            .args([
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{port}"),
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(out.try_clone().unwrap())
            .stderr(out.try_clone().unwrap())
            .spawn()
            .expect("the tansu broker (scripts/kafka-tls.sh builds it)");
        wait_listening(&mut broker, "tansu", &[plain], Some(log));
        let listen = format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
            cert.display(),
            key.display()
        );
        let mut tls = Command::new("socat")
            .args(["-d", &listen, &format!("TCP:127.0.0.1:{plain}")])
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("socat must be installed (scripts/test.sh installs it)");
        wait_listening(&mut tls, "socat", &[port], Some(log));
        Self {
            port,
            log: log.to_owned(),
            broker,
            tls,
        }
    }

    /// `127.0.0.1:port`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsTansu {
    fn drop(&mut self) {
        for child in [&mut self.tls, &mut self.broker] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
