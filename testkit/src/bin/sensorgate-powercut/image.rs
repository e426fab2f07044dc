//! The guest's disks: the state disk (ext4) and the initramfs (the image directory that
//! `scripts/powercut.sh` assembled, plus this run's configuration).

use std::path::Path;

use anyhow::Context;

use crate::{cpio, tally, Args, CLIENT_ID, FILTER};

/// A sparse 256 MiB raw disk with a fresh ext4 file system (mke2fs's defaults).
pub(crate) fn make_state_disk(path: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::create(path)?;
    file.set_len(256 << 20)?;
    drop(file);
    let status = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "sgstate"])
        .arg(path)
        .status()
        .context("running mkfs.ext4 (e2fsprogs)")?;
    anyhow::ensure!(status.success(), "mkfs.ext4 failed: {status}");
    Ok(())
}

/// The image directory plus this run's files: the gateway's configuration and `/init`'s
/// settings.
pub(crate) fn write_initrd(
    args: &Args,
    path: &Path,
    mqtt_port: u16,
    kafka_ports: &[u16],
) -> anyhow::Result<()> {
    for needed in ["init", "usr/bin/sensorgate", "usr/bin/socat"] {
        anyhow::ensure!(
            cpio::is_executable(&args.image.join(needed)),
            "{} has no executable {needed}: run scripts/powercut.sh, which builds the image",
            args.image.display()
        );
    }
    let brokers: Vec<String> = kafka_ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let config = format!(
        r#"# Written by sensorgate-powercut for this run.
[gateway]
id = "powercut-vm"
state_dir = "/var/lib/sensorgate"
schemas_dir = "schemas"

[queue]
fsync = {fsync}

[kafka]
brokers = "{brokers}"

[retry]
initial = "200ms"
max = "2s"

[[mqtt]]
name = "host"
url = "mqtt://10.0.2.2:{mqtt_port}"
client_id = "{CLIENT_ID}"
topics = ["{FILTER}"]

[[route]]
source = "host"
schema = "reading.v1.json"
kafka_topic = "{topic}"
key = "/device_id"

[metrics]
listen = "0.0.0.0:9898"
"#,
        fsync = !args.no_fsync,
        brokers = brokers.join(","),
        topic = tally::TOPIC,
    );
    let ports: Vec<String> = kafka_ports.iter().map(u16::to_string).collect();
    let env = format!(
        "KAFKA_PORTS=\"{}\"\nSTRACE={}\n",
        ports.join(" "),
        u8::from(args.strace)
    );
    let file = std::fs::File::create(path)?;
    let mut archive = cpio::Cpio::new(std::io::BufWriter::new(file));
    archive.add_tree(&args.image)?;
    for dir in ["etc", "etc/sensorgate"] {
        if !args.image.join(dir).is_dir() {
            archive.dir(dir)?;
        }
    }
    archive.file("etc/sensorgate/sensorgate.toml", 0o644, config.as_bytes())?;
    archive.file("etc/powercut.env", 0o644, env.as_bytes())?;
    archive.finish()?;
    Ok(())
}
