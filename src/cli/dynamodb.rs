//! `statelock dynamodb create-table`: creates the table a `dynamodb://` store
//! URL names (feature `dynamodb`), and optionally the table of fenced state
//! heads next to it. Idempotent, so deploy scripts can run it every time.

use super::{exit, store_failure, CliError, Context};
use crate::state::dynamodb::{default_state_table, DynamoDbStateStore};
use crate::store::dynamodb::{create_table_for_url, TableSetup};
use crate::store::url::{LockFormat, StoreUrl};

/// Arguments of `statelock dynamodb`.
#[derive(Debug, clap::Args)]
pub struct DynamoDbArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: DynamoDbCommand,
}

/// The `dynamodb` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DynamoDbCommand {
    /// Create the lock table named by --store (on-demand billing, no TTL:
    /// lock records are never deleted behind the protocol's back). Succeeds
    /// if it already exists with the right key schema; a table with another
    /// key schema is an error.
    CreateTable(CreateTableArgs),
}

/// Arguments of `statelock dynamodb create-table`.
#[derive(Debug, clap::Args)]
pub struct CreateTableArgs {
    /// Also create the table of fenced state heads (default name: the lock
    /// table's name followed by `-state`)
    #[arg(long)]
    pub with_state_table: bool,
    /// The state heads' table name (implies --with-state-table)
    #[arg(long, value_name = "NAME")]
    pub state_table: Option<String>,
}

/// One line about what happened to `table`.
fn setup_line(kind: &str, table: &str, setup: TableSetup, detail: &str) -> String {
    match setup {
        TableSetup::Created => format!("Created the {kind} table {table:?} ({detail})."),
        TableSetup::AlreadyExisted => {
            format!(
                "The {kind} table {table:?} already exists with the right key schema ({detail})."
            )
        }
    }
}

/// Runs `statelock dynamodb ...`.
pub(crate) async fn run(args: DynamoDbArgs, ctx: &Context) -> Result<i32, CliError> {
    match args.command {
        DynamoDbCommand::CreateTable(args) => create_table(args, ctx).await,
    }
}

async fn create_table(args: CreateTableArgs, ctx: &Context) -> Result<i32, CliError> {
    let StoreUrl::DynamoDb {
        table,
        region,
        endpoint,
        format,
    } = &ctx.store_url
    else {
        return Err(CliError::usage(format!(
            "`dynamodb create-table` needs a dynamodb:// store, not {}; pass e.g. \
             --store 'dynamodb://TABLE?region=REGION'",
            ctx.store_text()
        )));
    };
    let state_table = match (&args.state_table, args.with_state_table) {
        (Some(name), _) if name.trim().is_empty() => {
            return Err(CliError::usage("--state-table needs a table name"))
        }
        (Some(name), _) => Some(name.clone()),
        (None, true) => Some(default_state_table(table)),
        (None, false) => None,
    };
    if state_table.is_some() && *format == LockFormat::Terraform {
        return Err(CliError::usage(
            "a Terraform lock table has no fenced state heads (Terraform keeps its state in S3); \
             drop --with-state-table / --state-table or the format=terraform parameter",
        ));
    }
    errln!("statelock: creating the lock table {table:?} (waits until it is active)...");
    let setup = create_table_for_url(&ctx.store_url)
        .await
        .map_err(|e| store_failure(&e, ctx.store_text()))?;
    let detail = match format {
        LockFormat::Statelock => "hash key lockKey, on-demand, no TTL",
        LockFormat::Terraform => "hash key LockID, on-demand, as Terraform's S3 backend expects",
    };
    outln!("{}", setup_line("lock", table, setup, detail));
    if let Some(state_table) = state_table {
        let store = DynamoDbStateStore::connect(
            table,
            &state_table,
            region.as_deref(),
            endpoint.as_deref(),
        )
        .await
        .map_err(|e| CliError::new(exit::STORE, format!("{e} (store {})", ctx.store_text())))?;
        errln!("statelock: creating the state table {state_table:?}...");
        let setup = store.create_table().await.map_err(|e| {
            CliError::new(
                exit::STORE,
                format!(
                    "{e} (state table {state_table:?} of store {}); check the table and the \
                     credentials' permissions",
                    ctx.store_text()
                ),
            )
        })?;
        outln!(
            "{}",
            setup_line("state", &state_table, setup, "hash key lockKey, on-demand")
        );
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_say_what_happened() {
        let created = setup_line("lock", "locks", TableSetup::Created, "x");
        assert_eq!(created, "Created the lock table \"locks\" (x).");
        let existed = setup_line("state", "s", TableSetup::AlreadyExisted, "y");
        assert!(existed.contains("already exists"), "{existed}");
    }
}
