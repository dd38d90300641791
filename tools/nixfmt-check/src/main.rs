//! `nixfmt-check [--write] FILE...`: report every Nix file that alejandra would reformat (or
//! that does not parse), and with `--write` rewrite it in place. Exit 0 when all files are
//! formatted (or were written), 1 when a file needs formatting or has a syntax error, 64 on
//! bad usage.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut write = false;
    let mut files = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--write" | "-w" => write = true,
            "--help" | "-h" => {
                eprintln!("usage: nixfmt-check [--write] FILE...");
                return ExitCode::SUCCESS;
            }
            _ => files.push(arg),
        }
    }
    if files.is_empty() {
        eprintln!("usage: nixfmt-check [--write] FILE...");
        return ExitCode::from(64);
    }
    let mut failed = 0usize;
    for path in &files {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{path}: cannot read: {e}");
                failed += 1;
                continue;
            }
        };
        let (status, formatted) = alejandra::format::in_memory(path.clone(), text);
        match status {
            alejandra::format::Status::Error(e) => {
                eprintln!("{path}: syntax error: {e}");
                failed += 1;
            }
            alejandra::format::Status::Changed(false) => {}
            alejandra::format::Status::Changed(true) => {
                if write {
                    if let Err(e) = std::fs::write(path, formatted) {
                        eprintln!("{path}: cannot write: {e}");
                        failed += 1;
                    } else {
                        eprintln!("{path}: formatted");
                    }
                } else {
                    eprintln!("{path}: not formatted (run scripts/check-nix --write)");
                    failed += 1;
                }
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {} file(s) failed the format check", files.len());
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
