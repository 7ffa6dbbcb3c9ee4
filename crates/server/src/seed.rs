//! The seed system's names: it answered `{"COVID-19": p, "NO FINDING": q}` and took those
//! names as labels. `cxr serve` and `cxr worker --compat seed` speak them.

use std::collections::BTreeMap;

/// The seed's name of a class: `covid` is `COVID-19`, `normal` is `NO FINDING`, another class
/// is its name in capitals.
#[must_use]
pub fn class_name(class: &str) -> String {
    match class {
        "covid" => "COVID-19".into(),
        "normal" => "NO FINDING".into(),
        other => other.to_uppercase(),
    }
}

/// Class probabilities under the seed's names (as `f32`, so that they print exactly as the
/// same probabilities do in the native answers). The seed answered COVID-19 against NO
/// FINDING: a model that also learnt another class (pneumonia) answers the seed's clients
/// with the same two, that class's probability counted as not COVID-19.
#[must_use]
pub fn probabilities(probabilities: &BTreeMap<String, f32>) -> BTreeMap<String, f32> {
    match (probabilities.get("covid"), probabilities.len()) {
        (Some(&covid), 3..) => BTreeMap::from([
            (class_name("covid"), covid),
            (class_name("normal"), 1.0 - covid),
        ]),
        _ => probabilities
            .iter()
            .map(|(class, p)| (class_name(class), *p))
            .collect(),
    }
}

/// A label as the seed's clients send it (`COVID-19`, `NO FINDING`) in this project's words
/// (`covid`, `normal`); anything else is returned as it is.
#[must_use]
pub fn label(text: &str) -> String {
    let text = text.trim();
    match text.to_ascii_uppercase().replace(['_', '-'], " ").as_str() {
        "COVID 19" => "covid".into(),
        "NO FINDING" => "normal".into(),
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_both_ways() {
        let p = BTreeMap::from([("covid".to_owned(), 0.25), ("normal".to_owned(), 0.75)]);
        let seed = probabilities(&p);
        assert_eq!(seed["COVID-19"], 0.25);
        assert_eq!(seed["NO FINDING"], 0.75);
        // A third class is not COVID-19 to the seed's clients.
        let three = BTreeMap::from([
            ("covid".to_owned(), 0.25),
            ("normal".to_owned(), 0.5),
            ("pneumonia".to_owned(), 0.25),
        ]);
        assert_eq!(
            probabilities(&three),
            BTreeMap::from([
                ("COVID-19".to_owned(), 0.25),
                ("NO FINDING".to_owned(), 0.75)
            ])
        );
        for (given, ours) in [
            ("COVID-19", "covid"),
            ("covid-19", "covid"),
            ("NO FINDING", "normal"),
            ("no_finding", "normal"),
            ("normal", "normal"),
            ("skip", "skip"),
        ] {
            assert_eq!(label(given), ours);
        }
    }
}
