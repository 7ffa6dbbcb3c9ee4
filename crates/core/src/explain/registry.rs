//! The link-time registry of explainers. An explainer anywhere in the final binary (the
//! `cxr-explainers` crate, a user's crate, a test) registers itself with [`register_explainer!`];
//! the registry collects them once, sorted by name, and refuses duplicate names.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use super::{Explainer, ExplainerConfig};
use crate::models::{Classifier, Gradients};
use crate::{CoreError, Result};

/// A parameter an explainer accepts, for `cxr explainers` and the viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Param {
    pub name: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

/// One registered explainer: plain const data and a constructor.
#[derive(Debug)]
pub struct ExplainerEntry {
    /// Kebab-case, unique: `grad-cam`, `lime`.
    pub name: &'static str,
    pub summary: &'static str,
    /// How far the classifier's gradients must reach (compared with
    /// [`crate::models::Classifier::gradients`] before the explainer runs).
    pub needs: Gradients,
    pub params: &'static [Param],
    pub ctor: fn(&ExplainerConfig) -> Result<Box<dyn Explainer>>,
    /// Where it was registered, for duplicate-name errors.
    pub file: &'static str,
    pub line: u32,
}

impl ExplainerEntry {
    #[must_use]
    pub fn location(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }

    /// Whether it can run on `classifier`; the error says what the model lacks.
    pub fn check_runs_on(&self, classifier: &dyn Classifier) -> Result<()> {
        if classifier.gradients() >= self.needs {
            return Ok(());
        }
        Err(CoreError::Unsupported {
            reason: format!(
                "{} needs {}, which this model does not expose (it offers {}); choose an \
                 explainer that needs less (`cxr explainers`), or export the model with \
                 features/head methods",
                self.name,
                self.needs.describe(),
                classifier.gradients().describe()
            ),
        })
    }

    /// Builds the explainer; unknown or malformed parameters are errors.
    pub fn build(&self, config: &ExplainerConfig) -> Result<Box<dyn Explainer>> {
        config.check_known(self)?;
        (self.ctor)(&config.for_entry(self))
    }
}

inventory::collect!(ExplainerEntry);

/// Registers an explainer:
///
/// ```ignore
/// cxr_core::register_explainer! {
///     name: "grad-cam",
///     summary: "Gradient-weighted class activation map of the last convolutional layer",
///     needs: Gradients::FeatureMap,
///     params: &[],
///     ctor: GradCam::from_config,
/// }
/// ```
#[macro_export]
macro_rules! register_explainer {
    ($($field:ident : $value:expr),* $(,)?) => {
        $crate::explain::inventory::submit! {
            $crate::explain::ExplainerEntry { $($field: $value,)* file: file!(), line: line!() }
        }
    };
}

type Registry = BTreeMap<&'static str, &'static ExplainerEntry>;

/// Sorts entries by name; two entries with one name are an error naming both places.
pub fn build(entries: impl IntoIterator<Item = &'static ExplainerEntry>) -> Result<Registry> {
    let mut registry = Registry::new();
    for entry in entries {
        if let Some(first) = registry.insert(entry.name, entry) {
            return Err(CoreError::DuplicateExplainer {
                name: entry.name.to_owned(),
                first: first.location(),
                second: entry.location(),
            });
        }
    }
    Ok(registry)
}

static REGISTRY: LazyLock<Result<Registry, (String, String, String)>> = LazyLock::new(|| {
    build(inventory::iter::<ExplainerEntry>).map_err(|e| match e {
        CoreError::DuplicateExplainer {
            name,
            first,
            second,
        } => (name, first, second),
        other => (other.to_string(), String::new(), String::new()),
    })
});

/// Every registered explainer, sorted by name.
pub fn all() -> Result<Vec<&'static ExplainerEntry>> {
    match &*REGISTRY {
        Ok(map) => Ok(map.values().copied().collect()),
        Err((name, first, second)) => Err(CoreError::DuplicateExplainer {
            name: name.clone(),
            first: first.clone(),
            second: second.clone(),
        }),
    }
}

/// The explainer called `name`.
pub fn find(name: &str) -> Result<&'static ExplainerEntry> {
    let entries = all()?;
    entries
        .iter()
        .copied()
        .find(|e| e.name == name)
        .ok_or_else(|| CoreError::UnknownExplainer {
            name: name.to_owned(),
            known: entries.iter().map(|e| e.name.to_owned()).collect(),
        })
}

/// Other names for registered explainers, as the seed system and people write them.
pub const ALIASES: &[(&str, &str)] = &[("gradcam", "grad-cam")];

/// The explainer `name` names, written loosely (the worker's `explain_NAME`, a URL): any case,
/// `_` for `-`, or an alias from [`ALIASES`]. Unknown names are [`CoreError::UnknownExplainer`]
/// with `name` as written.
pub fn lookup(name: &str) -> Result<&'static ExplainerEntry> {
    let wanted = name.to_ascii_lowercase().replace('_', "-");
    let wanted = ALIASES
        .iter()
        .find(|(alias, _)| *alias == wanted)
        .map_or(wanted.as_str(), |(_, real)| real);
    find(wanted).map_err(|e| match e {
        CoreError::UnknownExplainer { known, .. } => CoreError::UnknownExplainer {
            name: name.to_owned(),
            known,
        },
        other => other,
    })
}

/// An explainer built from a [`MethodSpec`], ready to run on many images.
pub struct Method {
    pub entry: &'static ExplainerEntry,
    pub explainer: Box<dyn Explainer>,
    /// Canonical parameters, for reports and cache keys.
    pub params: String,
}

/// A registered explainer chosen by name, with its parameters (`name=value,...`), as the
/// command line and the watcher take them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodSpec {
    pub name: String,
    pub params: String,
}

impl MethodSpec {
    /// Builds the explainer, with its parameters in canonical form
    /// ([`ExplainerConfig::canonical`]): whichever surface wrote them, the same parameters are
    /// the same cache key.
    pub fn build(&self) -> Result<Method> {
        let entry = lookup(&self.name)?;
        let config = ExplainerConfig::parse(&self.params)?;
        let explainer = entry.build(&config)?;
        Ok(Method {
            entry,
            explainer,
            params: config.for_entry(entry).canonical(),
        })
    }

    /// Explainers from `--method` names (`none` for none) and `--param METHOD:NAME=VALUE`
    /// values, checked against the registry now, so a typo fails at start and not per file.
    pub fn parse(methods: &[String], params: &[String]) -> Result<Vec<Self>> {
        let names: Vec<&str> = methods
            .iter()
            .map(|m| m.trim())
            .filter(|m| !m.is_empty() && *m != "none")
            .collect();
        for p in params {
            let Some((method, _)) = p.split_once(':') else {
                return Err(CoreError::BadParameter {
                    method: String::new(),
                    reason: format!("--param {p}: expected METHOD:NAME=VALUE"),
                });
            };
            if !names.contains(&method) {
                return Err(CoreError::BadParameter {
                    method: method.to_owned(),
                    reason: format!(
                        "--param {p}: {method} is not among the chosen methods ({})",
                        names.join(",")
                    ),
                });
            }
        }
        names
            .iter()
            .map(|name| {
                let entry = lookup(name)?;
                let own: Vec<&str> = params
                    .iter()
                    .filter_map(|p| p.strip_prefix(&format!("{name}:")))
                    .collect();
                let config = ExplainerConfig::parse(&own.join(","))?;
                config.check_known(entry)?;
                Ok(Self {
                    name: entry.name.to_owned(),
                    params: config.for_entry(entry).canonical(),
                })
            })
            .collect()
    }
}
