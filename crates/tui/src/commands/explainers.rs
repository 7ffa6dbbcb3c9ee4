//! `cxr explainers`: what is registered, from the registry alone.

use std::process::ExitCode;

use color_eyre::eyre::Result;
use cxr_core::explain::registry;

pub fn run(json: bool) -> Result<ExitCode> {
    for entry in registry::all()? {
        if json {
            super::print_json(&cxr_core::answer::Explainer::from(entry))?;
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
