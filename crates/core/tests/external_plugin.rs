//! The guide in docs/adding-an-explainer.md, proven: an explainer defined outside
//! crates/explainers registers itself and the registry finds it; duplicate names are refused.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use cxr_core::explain::registry::{self, ExplainerEntry};
use cxr_core::explain::{ExplainInput, Explainer, ExplainerConfig, Explanation, Heatmap, Param};
use cxr_core::models::Classifier;
use cxr_core::{CoreError, Result};

/// Relevance equal to the input's brightness (only for this test).
struct Brightness {
    gain: f32,
}

impl Brightness {
    fn from_config(config: &ExplainerConfig) -> Result<Box<dyn Explainer>> {
        Ok(Box::new(Self {
            gain: config.get("gain")?,
        }))
    }
}

impl Explainer for Brightness {
    fn explain(&self, _model: &dyn Classifier, input: &ExplainInput<'_>) -> Result<Explanation> {
        let values = Vec::<f32>::try_from(input.input.view([-1]))?
            .iter()
            .map(|v| v * self.gain)
            .collect();
        let size = input.input.size();
        Ok(Explanation {
            heatmap: Heatmap::from_relevance(values, size[3] as usize, size[2] as usize),
            details: serde_json::Map::new(),
            segments: None,
        })
    }
}

cxr_core::register_explainer! {
    name: "test-brightness",
    summary: "Relevance equal to brightness (test plugin)",
    needs: cxr_core::models::Gradients::None,
    params: &[Param { name: "gain", default: "1", help: "multiplier" }],
    ctor: Brightness::from_config,
}

#[test]
fn an_explainer_outside_the_explainers_crate_is_registered() {
    let entry = registry::find("test-brightness").unwrap();
    assert_eq!(entry.summary, "Relevance equal to brightness (test plugin)");
    assert!(entry.file.ends_with("external_plugin.rs"), "{}", entry.file);
    let names: Vec<&str> = registry::all().unwrap().iter().map(|e| e.name).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "the registry is sorted by name");
    // Parameters are typed and unknown ones are refused.
    assert!(
        entry
            .build(&ExplainerConfig::parse("gain=2").unwrap())
            .is_ok()
    );
    let typo = entry
        .build(&ExplainerConfig::parse("gian=2").unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(typo.contains("gian") && typo.contains("gain"), "{typo}");
    let bad = entry
        .build(&ExplainerConfig::parse("gain=x").unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(bad.contains("gain=x"), "{bad}");
}

#[test]
fn unknown_names_list_what_is_registered() {
    let err = registry::find("no-such-method").unwrap_err().to_string();
    assert!(
        err.contains("no-such-method") && err.contains("test-brightness"),
        "{err}"
    );
}

fn never(_: &ExplainerConfig) -> Result<Box<dyn Explainer>> {
    Err(CoreError::Invalid("not built in this test".into()))
}

static FIRST: ExplainerEntry = ExplainerEntry {
    name: "twin",
    summary: "one",
    needs: cxr_core::models::Gradients::None,
    params: &[],
    ctor: never,
    file: "a.rs",
    line: 1,
};
static SECOND: ExplainerEntry = ExplainerEntry {
    name: "twin",
    summary: "two",
    needs: cxr_core::models::Gradients::None,
    params: &[],
    ctor: never,
    file: "b.rs",
    line: 2,
};
static OTHER: ExplainerEntry = ExplainerEntry {
    name: "alpha",
    summary: "three",
    needs: cxr_core::models::Gradients::None,
    params: &[],
    ctor: never,
    file: "c.rs",
    line: 3,
};

#[test]
fn duplicate_names_are_refused_naming_both_places() {
    let err = registry::build([&FIRST, &OTHER, &SECOND]).unwrap_err();
    let CoreError::DuplicateExplainer {
        name,
        first,
        second,
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(
        (name.as_str(), first.as_str(), second.as_str()),
        ("twin", "a.rs:1", "b.rs:2")
    );
    let ok = registry::build([&FIRST, &OTHER]).unwrap();
    assert_eq!(
        ok.keys().copied().collect::<Vec<_>>(),
        vec!["alpha", "twin"]
    );
}
