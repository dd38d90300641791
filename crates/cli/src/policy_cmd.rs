//! `credproxy policy init|test|eval|input`: write, unit-test and try out Rego policies
//! offline, with the same engine and input builder the proxy uses.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use credproxy_config::Config;
use credproxy_identity::{identity_from_claims_unverified, AgentIdentity};
use credproxy_policy::{
    builtin_files, run_tests, PolicyEngine, PolicyError, PolicyInput, PolicySource, INPUT_VERSION,
};

use crate::{fail, CmdError};

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Write the built-in policy (authz.rego) and its unit tests (authz_test.rego) into DIR
    Init {
        /// Directory to write into (created if missing)
        dir: PathBuf,
        /// Replace files that already exist
        #[arg(long)]
        force: bool,
    },
    /// Run the unit tests (`test_` rules) of every *.rego file in DIR: exit 0 when all pass,
    /// 1 when one fails, 64 when the policy does not compile
    Test {
        /// Directory of *.rego files (*_test.rego included)
        dir: PathBuf,
    },
    /// Evaluate the configured policy against an input document and print the decision as
    /// JSON: exit 0 when evaluated (allowed or denied), 1 on an evaluation error
    Eval {
        /// Configuration file; its policy.dir (or the built-in policy) and policy.eval_limit
        /// are used
        #[arg(long, short = 'c')]
        config: PathBuf,
        /// The input document (JSON), e.g. as printed by `credproxy policy input`
        #[arg(long, value_name = "FILE")]
        input: PathBuf,
    },
    /// Print the input document the proxy would give the policy for a request
    Input {
        /// Configuration file (allowlist, credentials, identity claim mapping, listeners)
        #[arg(long, short = 'c')]
        config: PathBuf,
        /// The request: "METHOD URL", e.g. 'GET https://api.github.com/zen'
        #[arg(long, value_name = "METHOD URL")]
        request: String,
        /// A request header, "Name: value" (repeatable); placeholders in it are detected
        #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// A JSON file with the token's claims, mapped to the identity as if verified (without
        /// it, identity is null)
        #[arg(long, value_name = "FILE")]
        token_claims: Option<PathBuf>,
        /// The listener the request arrives on (default: the first configured listener)
        #[arg(long, value_name = "NAME")]
        listener: Option<String>,
    },
}

pub fn run(cmd: PolicyCommand) -> ExitCode {
    let result = match cmd {
        PolicyCommand::Init { dir, force } => init(&dir, force),
        PolicyCommand::Test { dir } => test(&dir),
        PolicyCommand::Eval { config, input } => eval(&config, &input),
        PolicyCommand::Input {
            config,
            request,
            headers,
            token_claims,
            listener,
        } => input(
            &config,
            &request,
            &headers,
            token_claims.as_deref(),
            listener.as_deref(),
        ),
    };
    match result {
        Ok(code) => code,
        Err(e) => fail("credproxy policy", e),
    }
}

fn init(dir: &Path, force: bool) -> Result<ExitCode, CmdError> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
        .map_err(CmdError::Runtime)?;
    // Check every file before writing any, so a refusal leaves the directory untouched.
    if !force {
        for (name, _) in builtin_files() {
            let path = dir.join(name);
            if path.exists() {
                return Err(CmdError::Runtime(anyhow!(
                    "{} already exists; refusing to overwrite it (use --force to replace it)",
                    path.display()
                )));
            }
        }
    }
    for (name, text) in builtin_files() {
        let path = dir.join(name);
        std::fs::write(&path, text)
            .with_context(|| format!("cannot write {}", path.display()))
            .map_err(CmdError::Runtime)?;
        #[allow(clippy::print_stdout)]
        {
            println!("created {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn test(dir: &Path) -> Result<ExitCode, CmdError> {
    let source = PolicySource::load_dir(dir).map_err(policy_usage)?;
    // The serving files must also make a policy the proxy would accept (an `allow` rule in
    // package credproxy.authz): passing tests are worth little if serving would refuse it.
    let engine =
        PolicyEngine::compile(&source, credproxy_policy::TEST_LIMIT).map_err(policy_usage)?;
    let outcomes = run_tests(&source).map_err(policy_usage)?;
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    #[allow(clippy::print_stdout)]
    {
        // What the proxy will cache decisions by (or why it will not): an operator sees it
        // before serving, next to the tests that show the policy right.
        println!("decision cache: {}", engine.cache_description());
        for o in &outcomes {
            if o.passed {
                println!("PASS {} ({})", o.name, o.file);
                continue;
            }
            match &o.error {
                Some(e) => {
                    println!("FAIL {} ({}): {}", o.name, o.file, error_summary(e));
                    // The engine's full message (a source excerpt) follows, indented.
                    for l in e.lines().filter(|l| !l.trim().is_empty()) {
                        println!("    {l}");
                    }
                }
                None => println!("FAIL {} ({})", o.name, o.file),
            }
            for p in &o.prints {
                println!("    {p}");
            }
        }
        println!("{} passed, {failed} failed", outcomes.len() - failed);
    }
    if outcomes.is_empty() {
        eprintln!(
            "credproxy policy: no tests in {} (a test is a rule whose name starts with test_)",
            dir.display()
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn eval(config_path: &Path, input_path: &Path) -> Result<ExitCode, CmdError> {
    let config = load_config(config_path)?;
    let engine = compile_configured(&config)?;
    let text = std::fs::read_to_string(input_path)
        .with_context(|| format!("cannot read {}", input_path.display()))
        .map_err(CmdError::Usage)?;
    let input: PolicyInput = serde_json::from_str(&text).map_err(|e| {
        CmdError::Usage(anyhow!(
            "{}: not a policy input document: {e}",
            input_path.display()
        ))
    })?;
    if input.version != INPUT_VERSION {
        return Err(CmdError::Usage(anyhow!(
            "{}: input version {} is not supported (this credproxy builds version {INPUT_VERSION})",
            input_path.display(),
            input.version
        )));
    }
    let decision = engine
        .evaluate(&input)
        .context("policy evaluation failed")
        .map_err(CmdError::Runtime)?;
    let doc = serde_json::json!({
        "allow": decision.allow,
        "deny_reasons": decision.deny_reasons,
    });
    print_json(&doc)?;
    Ok(ExitCode::SUCCESS)
}

fn input(
    config_path: &Path,
    request: &str,
    headers: &[String],
    claims: Option<&Path>,
    listener: Option<&str>,
) -> Result<ExitCode, CmdError> {
    let config = load_config(config_path)?;
    let request = request.trim();
    let (method, url) = match request.split_once(char::is_whitespace) {
        Some((m, u)) => (m.to_ascii_uppercase(), u.trim()),
        None if request.contains("://") => ("GET".to_owned(), request),
        None => {
            return Err(CmdError::Usage(anyhow!(
            "--request {request:?}: expected \"METHOD URL\", e.g. 'GET https://api.github.com/zen'"
        )))
        }
    };
    let mut parsed = Vec::with_capacity(headers.len());
    for h in headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| CmdError::Usage(anyhow!("--header {h:?}: expected \"Name: value\"")))?;
        parsed.push((name.trim().to_owned(), value.trim_start().to_owned()));
    }
    let listener = match listener {
        Some(name) => {
            if !config.listeners.iter().any(|l| l.name == name) {
                let names: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
                return Err(CmdError::Usage(anyhow!(
                    "--listener {name:?}: no such listener in {} (it has {})",
                    config_path.display(),
                    names.join(", ")
                )));
            }
            name.to_owned()
        }
        // Validation guarantees at least one listener.
        None => config
            .listeners
            .first()
            .map(|l| l.name.clone())
            .unwrap_or_default(),
    };
    let identity = match claims {
        Some(path) => claims_identity(&config, path)?,
        None => None,
    };
    let doc = credproxy_proxy::explain::policy_input(
        &config,
        &method,
        url,
        &parsed,
        identity.as_ref(),
        &listener,
    )
    .map_err(|e| CmdError::Usage(anyhow!("--request {request:?}: {e}")))?;
    print_json(&doc)?;
    Ok(ExitCode::SUCCESS)
}

/// The identity the claims in `path` map to under the configuration's `identity.oidc`.
fn claims_identity(config: &Config, path: &Path) -> Result<Option<AgentIdentity>, CmdError> {
    let Some(id) = &config.identity else {
        eprintln!(
            "credproxy policy: the configuration allows anonymous agents (no identity.oidc); ignoring --token-claims"
        );
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {}", path.display()))
        .map_err(CmdError::Usage)?;
    let claims: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| CmdError::Usage(anyhow!("{}: not JSON: {e}", path.display())))?;
    identity_from_claims_unverified(&claims, &id.oidc)
        .map(Some)
        .map_err(|e| CmdError::Usage(anyhow!("{}: {e}", path.display())))
}

fn load_config(path: &Path) -> Result<Config, CmdError> {
    Config::load(path).map_err(|errors| {
        CmdError::Usage(anyhow!(
            "{}: {}",
            path.display(),
            errors.to_string().trim_end()
        ))
    })
}

/// The policy the configuration serves: its directory, or the built-in one.
fn compile_configured(config: &Config) -> Result<PolicyEngine, CmdError> {
    config.policy.load().map_err(policy_usage)
}

/// A policy that cannot be loaded or compiled is a configuration error (exit 64).
fn policy_usage(e: PolicyError) -> CmdError {
    CmdError::Usage(anyhow::Error::new(e))
}

fn print_json<T: serde::Serialize>(doc: &T) -> Result<(), CmdError> {
    let text = serde_json::to_string_pretty(doc)
        .context("cannot render JSON")
        .map_err(CmdError::Runtime)?;
    #[allow(clippy::print_stdout)]
    {
        println!("{text}");
    }
    Ok(())
}

/// One line for an engine error: its `error:` sentence and `--> file:line:col` location
/// (regorus prints them on separate lines around a source excerpt).
fn error_summary(e: &str) -> String {
    let message = e
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error:"))
        .map(str::trim)
        .or_else(|| e.lines().map(str::trim).find(|l| !l.is_empty()))
        .unwrap_or("error");
    match e.lines().find_map(|l| l.trim().strip_prefix("-->")) {
        Some(at) => format!("{message} (at {})", at.trim()),
        None => message.to_owned(),
    }
}
