//! `credproxy audit list|show|verify|export`: read the audit spool offline.

use std::path::PathBuf;
use std::process::ExitCode;

use credproxy_audit::query::{self, Filter};
use credproxy_config::Config;

use crate::EXIT_USAGE;

#[derive(Debug, clap::Args)]
pub struct Spool {
    /// Configuration file whose audit.path is read
    #[arg(long, short = 'c', conflicts_with = "db")]
    config: Option<PathBuf>,
    /// The spool file itself
    #[arg(long)]
    db: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// List records (oldest first), filtered
    List {
        #[command(flatten)]
        spool: Spool,
        /// Exact agent id
        #[arg(long)]
        agent: Option<String>,
        /// Destination host:port, or a host (any port)
        #[arg(long)]
        destination: Option<String>,
        /// A credential id used by the request
        #[arg(long)]
        credential: Option<String>,
        /// in_progress, success, denied or error
        #[arg(long)]
        status: Option<String>,
        /// Records at or after this RFC 3339 time
        #[arg(long)]
        since: Option<String>,
        /// Records before this RFC 3339 time
        #[arg(long)]
        until: Option<String>,
        /// Only the newest N matches
        #[arg(long)]
        limit: Option<usize>,
        /// JSON lines instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Show one record as JSON
    Show {
        #[command(flatten)]
        spool: Spool,
        id: String,
    },
    /// Walk the hash chain; exit 1 and report the first break if the log was altered
    Verify {
        #[command(flatten)]
        spool: Spool,
    },
    /// Write every record as JSON lines to standard output
    Export {
        #[command(flatten)]
        spool: Spool,
        /// JSON lines (the only format)
        #[arg(long, default_value_t = true)]
        jsonl: bool,
    },
}

fn spool_path(s: &Spool) -> Result<PathBuf, ExitCode> {
    match (&s.db, &s.config) {
        (Some(db), _) => Ok(db.clone()),
        (None, Some(c)) => match Config::load(c) {
            Ok(cfg) => match cfg.audit {
                Some(a) => Ok(a.spool.path),
                None => {
                    eprintln!("credproxy audit: {} has no audit section", c.display());
                    Err(ExitCode::from(EXIT_USAGE))
                }
            },
            Err(e) => {
                eprint!("{}: {e}", c.display());
                Err(ExitCode::from(EXIT_USAGE))
            }
        },
        (None, None) => {
            eprintln!("credproxy audit: give --config FILE or --db SPOOL");
            Err(ExitCode::from(EXIT_USAGE))
        }
    }
}

#[allow(clippy::print_stdout)]
pub fn run(cmd: AuditCommand) -> ExitCode {
    let fail = |e: credproxy_audit::AuditError| {
        eprintln!("credproxy audit: {:#}", anyhow::Error::new(e));
        ExitCode::FAILURE
    };
    match cmd {
        AuditCommand::List {
            spool,
            agent,
            destination,
            credential,
            status,
            since,
            until,
            limit,
            json,
        } => {
            let path = match spool_path(&spool) {
                Ok(p) => p,
                Err(c) => return c,
            };
            let filter = Filter {
                agent,
                destination,
                credential,
                status,
                since,
                until,
                limit,
            };
            match query::list(&path, &filter) {
                Ok(records) => {
                    if json {
                        for r in &records {
                            println!("{}", serde_json::to_string(r).unwrap_or_default());
                        }
                    } else {
                        print!("{}", query::format_table(&records));
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        AuditCommand::Show { spool, id } => {
            let path = match spool_path(&spool) {
                Ok(p) => p,
                Err(c) => return c,
            };
            match query::show(&path, &id) {
                Ok(Some(r)) => {
                    println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Ok(None) => {
                    eprintln!("credproxy audit: no record {id:?}");
                    ExitCode::FAILURE
                }
                Err(e) => fail(e),
            }
        }
        AuditCommand::Verify { spool } => {
            let path = match spool_path(&spool) {
                Ok(p) => p,
                Err(c) => return c,
            };
            match query::verify(&path) {
                Ok(report) => match report.first_break {
                    None => {
                        println!(
                            "ok: {} events verified; head seq {} hash {} (record these elsewhere to detect tail truncation)",
                            report.records_checked, report.head_seq, report.head_hash
                        );
                        ExitCode::SUCCESS
                    }
                    Some(b) => {
                        println!(
                            "BROKEN at seq {} (record {}): {}; {} events verified before it",
                            b.position, b.id, b.problem, report.records_checked
                        );
                        ExitCode::FAILURE
                    }
                },
                Err(e) => fail(e),
            }
        }
        AuditCommand::Export { spool, jsonl: _ } => {
            let path = match spool_path(&spool) {
                Ok(p) => p,
                Err(c) => return c,
            };
            let mut out = std::io::stdout().lock();
            match query::export_jsonl(&path, &mut out) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
    }
}
