//! Explainer parameters: `name=value` pairs from the command line or the viewer, read by each
//! explainer with a typed getter and a default.

use std::collections::BTreeMap;
use std::str::FromStr;

use super::ExplainerEntry;
use crate::{CoreError, Result};

/// Parameters for one explainer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExplainerConfig {
    values: BTreeMap<String, String>,
}

impl ExplainerConfig {
    /// Parses `key=value,key=value` (the empty string is no parameters).
    pub fn parse(text: &str) -> Result<Self> {
        let mut values = BTreeMap::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                CoreError::Invalid(format!("parameter {pair:?}: expected name=value"))
            })?;
            values.insert(key.trim().to_owned(), value.trim().to_owned());
        }
        Ok(Self { values })
    }

    #[must_use]
    pub fn with(mut self, key: &str, value: &impl ToString) -> Self {
        self.values.insert(key.to_owned(), value.to_string());
        self
    }

    /// The value of `key` parsed as `T`, or `default` when absent.
    pub fn get<T: FromStr>(&self, key: &str, default: T) -> Result<T> {
        match self.values.get(key) {
            None => Ok(default),
            Some(text) => text.parse().map_err(|_| {
                CoreError::Invalid(format!(
                    "parameter {key}={text}: not a valid {}",
                    std::any::type_name::<T>()
                ))
            }),
        }
    }

    /// Refuses parameters that `entry` does not declare (catches typos like `sample=100`).
    pub fn check_known(&self, entry: &ExplainerEntry) -> Result<()> {
        for key in self.values.keys() {
            if !entry.params.iter().any(|p| p.name == key) {
                let known: Vec<&str> = entry.params.iter().map(|p| p.name).collect();
                return Err(CoreError::Invalid(format!(
                    "{} has no parameter {key:?} (it takes: {})",
                    entry.name,
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                )));
            }
        }
        Ok(())
    }

    /// Canonical text form, for cache keys and reports.
    #[must_use]
    pub fn canonical(&self) -> String {
        self.values
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}
