//! `statelock s3 probe [URL]`: checks that the S3 service of an `s3://`
//! store honours the conditional writes the S3 stores rely on (feature
//! `s3`), printing one line per check. Writes only scratch objects under
//! `PREFIX/.statelock-probe/` (removed afterwards) and the probe's marker.

use super::{exit, store_failure, CliError, Context};
use crate::store::s3::probe::{probe, ProbeReport, PROBE_DIR};
use crate::store::url::{redact_credentials, S3Location, StoreUrl};
use crate::store::StoreError;

/// Arguments of `statelock s3`.
#[derive(Debug, clap::Args)]
pub struct S3Args {
    /// What to do.
    #[command(subcommand)]
    pub command: S3Command,
}

/// The `s3` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum S3Command {
    /// Check that the S3 service honours conditional writes (If-None-Match
    /// and If-Match on PutObject and DeleteObject), on scratch objects under
    /// PREFIX/.statelock-probe/; exits 0 if every check passes, 5 otherwise.
    /// Stores run the same checks once before their first write.
    Probe(ProbeArgs),
}

/// Arguments of `statelock s3 probe`.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// The store to probe, s3://BUCKET/PREFIX?region=R&endpoint=URL [default: --store]
    #[arg(value_name = "URL")]
    pub url: Option<String>,
}

/// Runs `statelock s3 ...`.
pub(crate) async fn run(args: S3Args, ctx: &Context) -> Result<i32, CliError> {
    match args.command {
        S3Command::Probe(args) => run_probe(args, ctx).await,
    }
}

/// The location to probe: the argument, else `--store`.
fn location(args: &ProbeArgs, ctx: &Context) -> Result<(S3Location, String), CliError> {
    let (url, text) = match &args.url {
        Some(text) => (
            StoreUrl::parse(text).map_err(|e| match e {
                StoreError::Misconfigured(why) => CliError::usage(why),
                other => CliError::usage(other.to_string()),
            })?,
            redact_credentials(text),
        ),
        None => (ctx.store_url.clone(), ctx.store_text().to_string()),
    };
    match url {
        StoreUrl::S3(location) => Ok((location, text)),
        _ => Err(CliError::usage(format!(
            "`s3 probe` needs an s3:// store, not {text}; pass e.g. \
             `statelock s3 probe 's3://BUCKET/PREFIX?region=REGION'`"
        ))),
    }
}

/// The lines printed for `report`.
fn report_lines(report: &ProbeReport) -> Vec<String> {
    report
        .checks
        .iter()
        .map(|c| {
            let verdict = if c.passed { "PASS" } else { "FAIL" };
            format!("{verdict}  {}: {}", c.name, c.seen)
        })
        .collect()
}

async fn run_probe(args: ProbeArgs, ctx: &Context) -> Result<i32, CliError> {
    let (location, text) = location(&args, ctx)?;
    let scratch = if location.prefix.is_empty() {
        format!("{PROBE_DIR}/")
    } else {
        format!("{}/{PROBE_DIR}/", location.prefix)
    };
    errln!(
        "statelock: probing the conditional writes of s3://{}/{scratch} ...",
        location.bucket
    );
    let report = probe(&location)
        .await
        .map_err(|e| store_failure(&e, &text))?;
    for line in report_lines(&report) {
        outln!("{line}");
    }
    if report.passed() {
        outln!(
            "All {} checks passed: statelock can lock in {text}.",
            report.checks.len()
        );
        Ok(exit::OK)
    } else {
        let failed = report.checks.iter().filter(|c| !c.passed).count();
        outln!(
            "{failed} of {} checks failed: this S3 service does not honour conditional writes, \
             so statelock's S3 stores refuse it (a lock could be granted twice).",
            report.checks.len()
        );
        Ok(exit::STORE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::s3::probe::{ProbeCheck, CHECKS};

    #[test]
    fn one_line_per_check() {
        let report = ProbeReport {
            checks: vec![
                ProbeCheck {
                    name: CHECKS[0],
                    passed: true,
                    seen: "written (ETag \"a\")".into(),
                },
                ProbeCheck {
                    name: CHECKS[1],
                    passed: false,
                    seen: "written: the object was overwritten".into(),
                },
            ],
        };
        assert_eq!(
            report_lines(&report),
            vec![
                format!("PASS  {}: written (ETag \"a\")", CHECKS[0]),
                format!("FAIL  {}: written: the object was overwritten", CHECKS[1]),
            ]
        );
    }
}
