//! Printing a benchmark's table and writing `target/bench/NAME.json`.

use anyhow::{Context, Result};
use serde_json::Value;

use crate::workspace;

/// The median of a benchmark's rounds (the upper one of an even count; 0
/// for none).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// One line of a benchmark's table.
pub struct TableRow {
    pub label: String,
    pub value: String,
}

impl TableRow {
    pub fn new(label: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            value: value.into(),
        }
    }
}

/// Prints `rows` and writes them with `extra` to `target/bench/<name>.json`.
pub fn write(name: &str, rows: &[TableRow], extra: Value) -> Result<()> {
    let width = rows.iter().map(|r| r.label.len()).max().unwrap_or(0);
    println!("\n{name}:");
    for row in rows {
        println!("  {:<width$}  {}", row.label, row.value);
    }
    let dir = workspace::root().join("target").join("bench");
    std::fs::create_dir_all(&dir).context("creating target/bench")?;
    let path = dir.join(format!("{name}.json"));
    let rows_json: Vec<Value> = rows
        .iter()
        .map(|r| serde_json::json!({"label": r.label, "value": r.value}))
        .collect();
    let document = serde_json::json!({"benchmark": name, "rows": rows_json, "data": extra});
    std::fs::write(&path, serde_json::to_vec_pretty(&document)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("  (written to {})", path.display());
    Ok(())
}
