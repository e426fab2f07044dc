//! `sensorgate-demo-broker --listen 127.0.0.1:PORT`: the MQTT broker of `sensorgate demo`
//! (rumqttd) as a program of its own, so that the daemon's binary need not contain it. The demo
//! starts it and holds its standard input; it exits when that closes. Not meant to be run by
//! hand; see `sensorgate::cli::demo::broker`.

use std::net::SocketAddr;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listen = match args.as_slice() {
        [flag, addr] if flag == "--listen" => addr.parse::<SocketAddr>(),
        _ => {
            eprintln!("usage: sensorgate-demo-broker --listen ADDRESS:PORT");
            return ExitCode::from(2);
        }
    };
    let listen = match listen {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("sensorgate-demo-broker: --listen: {e}");
            return ExitCode::from(2);
        }
    };
    match sensorgate::cli::demo::broker::serve(listen) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sensorgate-demo-broker: {e}");
            ExitCode::FAILURE
        }
    }
}
