//! `weft get`: list or show objects, using the server's Table columns.

use serde_json::Value;

#[derive(clap::Args)]
pub struct Args {
    /// Resource type: pods, po, deployments.apps, ...
    pub resource: String,
    /// Object name; omitted lists them all.
    pub name: Option<String>,
    /// List across all namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Label selector, e.g. app=web.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Output: table (default), wide, json, yaml or name.
    #[arg(short = 'o', long, default_value = "table")]
    pub output: String,
    #[command(flatten)]
    pub client: super::ClientArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let res = weft_api::resources::resolve(&args.resource).ok_or_else(|| {
        anyhow::anyhow!(
            "the server doesn't have a resource type {:?}",
            args.resource
        )
    })?;
    let client = args.client.client()?;
    let table = matches!(args.output.as_str(), "table" | "wide");
    let v = match &args.name {
        Some(n) => {
            let obj = client.get(res, args.client.namespace.as_deref(), n).await?;
            if table {
                client
                    .list(res, args.client.namespace.as_deref(), false, None, true)
                    .await
                    .map(|t| only_row(t, n))?
            } else {
                obj
            }
        }
        None => {
            client
                .list(
                    res,
                    args.client.namespace.as_deref(),
                    args.all_namespaces,
                    args.selector.as_deref(),
                    table,
                )
                .await?
        }
    };
    match args.output.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&v)?),
        "yaml" => print!("{}", serde_yaml::to_string(&v)?),
        "name" => {
            let items = v
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_else(|| vec![v.clone()]);
            for i in items {
                println!(
                    "{}/{}",
                    res.singular,
                    i.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                );
            }
        }
        "table" | "wide" => print!("{}", render(&v, args.output == "wide", args.all_namespaces)),
        other => {
            anyhow::bail!("unknown output format {other:?}: use table, wide, json, yaml or name")
        }
    }
    Ok(())
}

fn only_row(mut table: Value, name: &str) -> Value {
    if let Some(rows) = table.get_mut("rows").and_then(Value::as_array_mut) {
        rows.retain(|r| r.pointer("/object/metadata/name").and_then(Value::as_str) == Some(name));
    }
    table
}

/// Prints a server Table the way kubectl does: upper-case headers, padded columns.
pub fn render(table: &Value, wide: bool, with_namespace: bool) -> String {
    let cols = table
        .get("columnDefinitions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let shown: Vec<usize> = cols
        .iter()
        .enumerate()
        .filter(|(_, c)| wide || c.get("priority").and_then(Value::as_i64).unwrap_or(0) == 0)
        .map(|(i, _)| i)
        .collect();
    let mut grid: Vec<Vec<String>> = Vec::new();
    let mut header: Vec<String> = shown
        .iter()
        .map(|&i| {
            cols[i]
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_uppercase()
        })
        .collect();
    if with_namespace {
        header.insert(0, "NAMESPACE".into());
    }
    grid.push(header);
    for row in table
        .get("rows")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let cells = row
            .get("cells")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut line: Vec<String> = shown
            .iter()
            .map(|&i| match cells.get(i) {
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => String::new(),
            })
            .collect();
        if with_namespace {
            line.insert(
                0,
                row.pointer("/object/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            );
        }
        grid.push(line);
    }
    if grid.len() == 1 {
        return "No resources found.\n".into();
    }
    let widths: Vec<usize> = (0..grid[0].len())
        .map(|c| grid.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in grid {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_priority_zero_columns_unless_wide() {
        let t = json!({"columnDefinitions": [{"name": "Name", "priority": 0}, {"name": "IP", "priority": 1}],
                       "rows": [{"cells": ["web", "127.0.0.2"], "object": {"metadata": {"namespace": "default"}}}]});
        assert_eq!(render(&t, false, false), "NAME\nweb\n");
        assert_eq!(
            render(&t, true, true),
            "NAMESPACE   NAME   IP\ndefault     web    127.0.0.2\n"
        );
        assert_eq!(
            render(&json!({"rows": []}), false, false),
            "No resources found.\n"
        );
    }
}
