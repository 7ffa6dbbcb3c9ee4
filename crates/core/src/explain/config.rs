//! Explainer parameters: `name=value` pairs from the command line or the viewer, read by each
//! explainer with a typed getter. Defaults are written once, in the explainer's registration
//! ([`super::Param`]): [`ExplainerEntry::build`] hands the constructor a config that knows them.

use std::collections::BTreeMap;
use std::str::FromStr;

use super::ExplainerEntry;
use crate::{CoreError, Result};

/// Parameters for one explainer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExplainerConfig {
    values: BTreeMap<String, String>,
    /// The explainer these are for and its declared defaults (set by [`Self::for_entry`]).
    method: &'static str,
    defaults: BTreeMap<&'static str, &'static str>,
}

impl ExplainerConfig {
    /// Parses `key=value,key=value` (the empty string is no parameters).
    pub fn parse(text: &str) -> Result<Self> {
        let mut values = BTreeMap::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| CoreError::BadParameter {
                    method: String::new(),
                    reason: format!("parameter {pair:?}: expected name=value"),
                })?;
            values.insert(key.trim().to_owned(), value.trim().to_owned());
        }
        Ok(Self {
            values,
            ..Self::default()
        })
    }

    /// These values with `entry`'s declared defaults behind them.
    #[must_use]
    pub fn for_entry(&self, entry: &ExplainerEntry) -> Self {
        Self {
            values: self.values.clone(),
            method: entry.name,
            defaults: entry.params.iter().map(|p| (p.name, p.default)).collect(),
        }
    }

    /// A [`CoreError::BadParameter`] about these parameters.
    #[must_use]
    pub fn error(&self, reason: impl Into<String>) -> CoreError {
        CoreError::BadParameter {
            method: self.method.to_owned(),
            reason: reason.into(),
        }
    }

    #[must_use]
    pub fn with(mut self, key: &str, value: &impl ToString) -> Self {
        self.values.insert(key.to_owned(), value.to_string());
        self
    }

    /// The value of `key` parsed as `T`: as given, else the default the explainer declared.
    /// Asking for a parameter the explainer did not declare is an error (a default must not be
    /// written twice).
    pub fn get<T: FromStr>(&self, key: &str) -> Result<T> {
        let Some(text) = self
            .values
            .get(key)
            .map(String::as_str)
            .or_else(|| self.defaults.get(key).copied())
        else {
            return Err(self.error(format!(
                "{}: parameter {key:?} is not declared in its registration",
                self.method
            )));
        };
        text.parse().map_err(|_| {
            self.error(format!(
                "parameter {key}={text}: expected {}",
                expected::<T>()
            ))
        })
    }

    /// Refuses parameters that `entry` does not declare (catches typos like `sample=100`).
    pub fn check_known(&self, entry: &ExplainerEntry) -> Result<()> {
        for key in self.values.keys() {
            if !entry.params.iter().any(|p| p.name == key) {
                let known: Vec<&str> = entry.params.iter().map(|p| p.name).collect();
                return Err(CoreError::BadParameter {
                    method: entry.name.to_owned(),
                    reason: format!(
                        "{} has no parameter {key:?} (it takes: {})",
                        entry.name,
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                });
            }
        }
        Ok(())
    }

    /// Canonical text form, for cache keys and reports: names in order, values as given but
    /// without those that repeat the declared default (after [`Self::for_entry`]), so that
    /// `samples=1000` (LIME's default), nothing at all and ` samples = 1000 ` are one key.
    #[must_use]
    pub fn canonical(&self) -> String {
        self.values
            .iter()
            .filter(|(k, v)| self.defaults.get(k.as_str()) != Some(&v.as_str()))
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// What a parameter of type `T` must look like, in words.
fn expected<T>() -> &'static str {
    match std::any::type_name::<T>() {
        "usize" | "u8" | "u16" | "u32" | "u64" => "a whole number, 0 or more",
        "isize" | "i8" | "i16" | "i32" | "i64" => "a whole number",
        "f32" | "f64" => "a number",
        "bool" => "true or false",
        _ => "a value of the kind the explainer declares",
    }
}
