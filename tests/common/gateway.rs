//! The gateway in process.

use std::time::Duration;

use super::wait_for;

/// Starts a gateway in process and waits until its MQTT source `local` has subscribed, so no
/// reading published afterwards can be dropped by the broker for want of a subscriber.
pub async fn start_gateway(config: sensorgate::config::Config) -> sensorgate::app::Handle {
    let gateway = sensorgate::app::start(config).expect("gateway starts");
    wait_for(
        Duration::from_secs(60),
        "the MQTT source to subscribe",
        || gateway.stats().snapshot().sources_up.get("local") == Some(&true),
    )
    .await;
    gateway
}
