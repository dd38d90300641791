//! The bridge on its own, for small guests: `credproxy-bridge FROM TO [OPTIONS]`, the same
//! as `credproxy bridge`. Build it static with
//! `RUSTFLAGS='-C target-feature=+crt-static' cargo build --release
//! --target x86_64-unknown-linux-gnu -p credproxy-bridge --bin credproxy-bridge`.

use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "credproxy-bridge",
    version,
    about = "Byte bridge between TCP, Unix and VSOCK sockets that can add an agent token to proxy requests"
)]
struct Cli {
    #[command(flatten)]
    args: credproxy_bridge::BridgeArgs,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(credproxy_bridge::EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(credproxy_bridge::run(cli.args)),
        Err(e) => {
            eprintln!("credproxy-bridge: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
