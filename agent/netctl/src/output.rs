//! The two ways netctl prints what it got: tables for people, JSON for
//! scripts (`--format json`, the API's documents as they are).

use clap::ValueEnum;

use crate::{error::CliError, table};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Prints `items` as a JSON array, or as a table with `header` and one row
/// per item from `row`.
pub(crate) fn print_list<T: serde::Serialize, const N: usize>(
    out: &mut dyn std::io::Write,
    format: Format,
    items: &[T],
    header: [&str; N],
    row: impl Fn(&T) -> Vec<String>,
) -> Result<(), CliError> {
    match format {
        Format::Json => print_json(out, &items),
        Format::Table => {
            let mut table = table::Table::new(header);
            for item in items {
                table.row(row(item));
            }
            Ok(table.write(out)?)
        }
    }
}

/// Prints one object a command made or changed: as JSON, or as the one
/// word people want (its id or name) for tables.
pub(crate) fn print_one<T: serde::Serialize>(
    out: &mut dyn std::io::Write,
    format: Format,
    value: &T,
    word: &str,
) -> Result<(), CliError> {
    match format {
        Format::Json => print_json(out, value),
        Format::Table => Ok(writeln!(out, "{word}")?),
    }
}

/// Prints `value` as pretty JSON followed by a newline.
pub(crate) fn print_json<T: serde::Serialize>(
    out: &mut dyn std::io::Write,
    value: &T,
) -> Result<(), CliError> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}
