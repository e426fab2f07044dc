//! Secrets: `[kafka.property_files]` (relative names under `$CREDENTIALS_DIRECTORY`, re-read on
//! reload), the permission check on secret files, and a canary password that never appears in
//! what `check-config`, `run` and a reload print, whatever is wrong with the configuration.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{gateway_binary, wait_until, GatewayProcess};

const CANARY: &str = "CANARY-hunter2-5f3a";

/// A gateway with no sources and an unreachable Kafka, whose `[kafka]` section ends with
/// `kafka_extra`; schemas and state in `dir`.
fn write(dir: &Path, kafka_extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("schemas")).unwrap();
    let path = dir.join("sensorgate.toml");
    std::fs::write(
        &path,
        format!(
            "[gateway]\nid = \"gw-secrets\"\nstate_dir = \"state\"\nschemas_dir = \"schemas\"\n\
             [metrics]\nlisten = \"\"\n\
             [kafka]\nbrokers = \"127.0.0.1:{}\"\n{kafka_extra}\n",
            common::free_port()
        ),
    )
    .unwrap();
    path
}

fn secret_file(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `check-config` on `config` with `envs`: (exit code, everything printed).
fn check_config(config: &Path, envs: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(gateway_binary())
        .args(["check-config", "--config"])
        .arg(config)
        .env_remove("CREDENTIALS_DIRECTORY")
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Configurations that are wrong in each way that used to print the canary: (what, `[kafka]`
/// tail, what the message must still name).
fn bad_cases() -> Vec<(&'static str, String, &'static str)> {
    vec![
        (
            "misspelled property (librdkafka: unknown)",
            format!("[kafka.properties]\n\"sasl.pasword\" = \"{CANARY}\"\n"),
            "sasl.pasword",
        ),
        (
            "bad value (librdkafka: refused)",
            format!(
                "[kafka.properties]\n\"sasl.oauthbearer.client.secret\" = \"{CANARY}\"\n\"sasl.oauthbearer.method\" = \"no-such-method\"\n"
            ),
            "sasl.oauthbearer",
        ),
        (
            "TOML syntax error on the secret's line",
            format!("[kafka.properties]\n\"sasl.password\" = \"{CANARY}\n"),
            "line ",
        ),
        (
            "wrong type",
            format!("[kafka.properties]\n\"sasl.password\" = [\"{CANARY}\"]\n"),
            "line ",
        ),
        (
            "wrong type, bare key",
            format!("[kafka.properties]\nsasl.password = {{ value = \"{CANARY}\" }}\n"),
            "line ",
        ),
    ]
}

#[test]
fn a_canary_password_is_never_printed_by_check_config_or_run() {
    let dir = tempfile::tempdir().unwrap();
    for (what, extra, names) in bad_cases() {
        let config = write(dir.path(), &extra);
        let (code, text) = check_config(&config, &[]);
        assert_ne!(code, 0, "{what}: check-config passed:\n{text}");
        assert!(
            !text.contains(CANARY),
            "{what}: check-config leaked it:\n{text}"
        );
        assert!(
            text.contains("sensorgate.toml") && text.contains(names),
            "{what}: the message must name the file and {names}:\n{text}"
        );

        let out = Command::new(gateway_binary())
            .args(["run", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{what}: run started:\n{text}");
        assert!(!text.contains(CANARY), "{what}: run leaked it:\n{text}");
        assert!(text.contains(names), "{what}: {names} not named:\n{text}");
    }
}

#[test]
fn reload_rereads_property_files_and_never_prints_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("kafka.password");
    secret_file(&password, &format!("{CANARY}\n"), 0o600);
    let good = "[kafka.properties]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\
                \"sasl.mechanism\" = \"PLAIN\"\n\"sasl.username\" = \"gw\"\n\
                [kafka.property_files]\n\"sasl.password\" = \"kafka.password\"\n";
    let config = write(dir.path(), good);
    let (code, text) = check_config(&config, &[]);
    assert_eq!(code, 0, "{text}");

    let log = dir.path().join("gateway.log");
    let gateway = GatewayProcess::spawn(&config, &log, &[]);
    wait_until(Duration::from_secs(30), "the gateway to start", || {
        gateway.log_count("Serving the admin API") == 1
    });
    let mut failed = 0;
    let mut reload = |gateway: &GatewayProcess, what: &str| {
        gateway.signal("HUP");
        failed += 1;
        wait_until(Duration::from_secs(20), what, || {
            gateway.log_count("Reload failed") == failed
        });
    };
    for (what, extra, names) in bad_cases() {
        // The bad section replaces the good one; the brokers line stays.
        let text = std::fs::read_to_string(&config).unwrap();
        let head = &text[..text.find("[kafka.properties]").unwrap()];
        std::fs::write(&config, format!("{head}{extra}")).unwrap();
        reload(&gateway, what);
        let log = gateway.log_text();
        assert!(
            !log.contains(CANARY),
            "{what}: the reload leaked it:\n{log}"
        );
        let last = log
            .lines()
            .rev()
            .find(|l| l.contains("Reload failed"))
            .unwrap();
        assert!(last.contains(names), "{what}: {names} not named: {last}");
        let text = std::fs::read_to_string(&config).unwrap();
        let head = &text[..text.find("[kafka.properties]").unwrap()];
        std::fs::write(&config, format!("{head}{good}")).unwrap();
    }

    // The property file is re-read on reload: made readable by others, the reload is refused
    // naming the file and its mode; fixed, the reload goes through.
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).unwrap();
    reload(&gateway, "the reload with an exposed password file to fail");
    let log = gateway.log_text();
    let last = log
        .lines()
        .rev()
        .find(|l| l.contains("Reload failed"))
        .unwrap();
    assert!(
        last.contains(&password.display().to_string()) && last.contains("mode 0644"),
        "{last}"
    );
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o640)).unwrap();
    let reloaded = gateway.log_count("Reloaded routes and schemas");
    gateway.signal("HUP");
    wait_until(Duration::from_secs(20), "a good reload", || {
        gateway.log_count("Reloaded routes and schemas") == reloaded + 1
    });
    assert!(!gateway.log_text().contains(CANARY));
}

#[test]
fn property_files_resolve_under_credentials_directory_and_reach_librdkafka() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::create_dir_all(&credentials).unwrap();
    // A value librdkafka refuses shows that the file's content is what it was given (and a
    // value read from a file counts as a secret: it is shown as ***).
    secret_file(&credentials.join("batch"), "not-a-number\n", 0o400);
    let config = write(
        dir.path(),
        "[kafka.property_files]\n\"batch.num.messages\" = \"batch\"\n",
    );
    let creds = credentials.to_str().unwrap();
    let (code, text) = check_config(&config, &[("CREDENTIALS_DIRECTORY", creds)]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("\"batch.num.messages\" = ***: Invalid value")
            && !text.contains("not-a-number"),
        "{text}"
    );

    // Without $CREDENTIALS_DIRECTORY the name is looked up beside the configuration.
    let (code, text) = check_config(&config, &[]);
    assert_eq!(code, 1, "{text}");
    let beside = dir.path().join("batch");
    assert!(
        text.contains("kafka.property_files.\"batch.num.messages\"")
            && text.contains(&beside.display().to_string()),
        "{text}"
    );

    // A readable-by-others file is refused, naming the file and its mode.
    secret_file(&beside, "1000\n", 0o644);
    let (code, text) = check_config(&config, &[]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&beside.display().to_string()) && text.contains("mode 0644"),
        "{text}"
    );
    secret_file(&beside, "1000\n", 0o640);
    let (code, text) = check_config(&config, &[]);
    assert_eq!(code, 0, "{text}");
}

#[test]
fn mqtt_credentials_and_tls_files_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("mqtt.password");
    secret_file(&password, "pw\n", 0o644);
    let key = dir.path().join("client.key");
    secret_file(&key, "key\n", 0o600);
    let ca = dir.path().join("ca.pem");
    secret_file(&ca, "ca\n", 0o644);
    let config = write(dir.path(), "");
    let sources = format!(
        r#"
[[mqtt]]
name = "exposed"
url = "mqtts://127.0.0.1:8883"
topics = ["a/#"]
username = "gw"
password_file = "{password}"

[[mqtt]]
name = "no-password"
url = "mqtt://127.0.0.1:1883"
topics = ["a/#"]
username = "gw"

[[mqtt]]
name = "no-user"
url = "mqtt://127.0.0.1:1883"
topics = ["a/#"]
password_file = "{password}"

[[mqtt]]
name = "plaintext-with-tls-files"
url = "mqtt://127.0.0.1:1883"
topics = ["a/#"]
ca_file = "{ca}"
cert_file = "{ca}"
key_file = "{key}"

[[mqtt]]
name = "cert-without-key"
url = "mqtts://127.0.0.1:8883"
topics = ["a/#"]
cert_file = "{ca}"
"#,
        password = password.display(),
        ca = ca.display(),
        key = key.display(),
    );
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&sources);
    std::fs::write(&config, text).unwrap();
    let (code, out) = check_config(&config, &[]);
    assert_eq!(code, 1, "{out}");
    for expected in [
        "mqtt[0].password_file: ",
        "mqtt[1].username: needs password_file",
        "mqtt[2].password_file: needs username",
        "mqtt[3].ca_file: is a TLS setting",
        "mqtt[3].cert_file: is a TLS setting",
        "mqtt[3].key_file: is a TLS setting",
        "mqtt[4].cert_file: needs key_file",
    ] {
        assert!(out.contains(expected), "{expected} missing:\n{out}");
    }
    let exposed = out
        .lines()
        .find(|l| l.contains("mqtt[0].password_file"))
        .unwrap();
    assert!(
        exposed.contains(&password.display().to_string()) && exposed.contains("mode 0644"),
        "{exposed}"
    );
}

#[test]
fn turning_tls_verification_off_and_inline_secrets_are_warned_about_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        &format!("[kafka.properties]\n\"security.protocol\" = \"SSL\"\n\"enable.ssl.certificate.verification\" = false\n\"sasl.password\" = \"{CANARY}\"\n"),
    );
    let (code, text) = check_config(&config, &[]);
    assert_eq!(code, 0, "allowed (a test bench may need it): {text}");
    assert!(
        text.contains("WARNING")
            && text.contains("enable.ssl.certificate.verification")
            && text.contains("NOT verified")
            && text.contains("\"sasl.password\" is a secret written in the configuration file")
            && !text.contains(CANARY),
        "{text}"
    );
    let log = dir.path().join("gateway.log");
    let mut gateway = GatewayProcess::spawn(&config, &log, &[]);
    wait_until(Duration::from_secs(30), "the gateway to start", || {
        gateway.log_count("Serving the admin API") == 1
    });
    assert!(
        gateway.log_text().contains("INSECURE:"),
        "{}",
        gateway.log_text()
    );
    // The signal handlers are installed before the start: SIGTERM now is a clean stop.
    gateway.signal("TERM");
    let status = gateway.wait();
    assert!(status.success(), "{status:?}\n{}", gateway.log_text());
}
