//! `cxr explainers`: what is registered, from the registry alone.

use std::process::ExitCode;

use color_eyre::eyre::Result;
use cxr_core::explain::registry;

#[derive(serde::Serialize)]
struct Listed<'a> {
    name: &'a str,
    summary: &'a str,
    /// `none`, `input` or `feature-map`: how far the model's gradients must reach.
    needs: cxr_core::models::Gradients,
    params: Vec<serde_json::Value>,
}

pub fn run(json: bool) -> Result<ExitCode> {
    for entry in registry::all()? {
        if json {
            let params = entry
                .params
                .iter()
                .map(
                    |p| serde_json::json!({ "name": p.name, "default": p.default, "help": p.help }),
                )
                .collect();
            super::print_json(&Listed {
                name: entry.name,
                summary: entry.summary,
                needs: entry.needs,
                params,
            })?;
        } else {
            let gradients = match entry.needs {
                cxr_core::models::Gradients::None => String::new(),
                needs => format!("  [needs {}]", needs.describe()),
            };
            super::print_line(&format!("{}{gradients}\n    {}", entry.name, entry.summary))?;
            for p in entry.params {
                super::print_line(&format!(
                    "    {:<20} {}",
                    format!("{}={}", p.name, p.default),
                    p.help
                ))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
