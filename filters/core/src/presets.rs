//! User-agent pattern presets shipped with the filters, kept as data files in `filters/core/data`.

use serde::Deserialize;

/// A preset data file: the list plus where it came from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub name: String,
    pub description: String,
    pub sources: Vec<String>,
    /// The date the list was taken as of (YYYY-MM-DD).
    pub as_of: String,
    pub how_compiled: String,
    /// Substrings of a User-Agent header.
    pub patterns: Vec<String>,
}

const AI_CRAWLERS: &str = include_str!("../data/ai-crawlers.json");

/// Names accepted in `presets`.
pub const PRESET_NAMES: &[&str] = &["ai-crawlers"];

/// Load a preset by name. `None` when no preset has that name.
pub fn preset(name: &str) -> Option<Result<Preset, serde_json::Error>> {
    match name {
        "ai-crawlers" => Some(serde_json::from_str(AI_CRAWLERS)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_loads_and_is_well_formed() {
        for name in PRESET_NAMES {
            let p = preset(name)
                .expect("listed preset exists")
                .expect("preset file parses");
            assert_eq!(p.name, *name);
            assert!(!p.sources.is_empty());
            // YYYY-MM-DD
            assert_eq!(p.as_of.len(), 10, "as_of {:?}", p.as_of);
            assert!(
                p.patterns.len() > 20,
                "{} has only {} patterns",
                name,
                p.patterns.len()
            );
            let lower: Vec<String> = p.patterns.iter().map(|s| s.to_lowercase()).collect();
            let mut sorted = lower.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(
                lower, sorted,
                "{name}: keep patterns sorted case-insensitively, no duplicates"
            );
            for pat in &p.patterns {
                // Short tokens match unrelated user agents as substrings.
                assert!(pat.len() >= 5, "{name}: pattern {pat:?} is too short");
                assert_eq!(pat.trim(), pat);
            }
        }
    }

    #[test]
    fn unknown_preset_is_none() {
        assert!(preset("nope").is_none());
    }
}
