//! The error of one HTTPRoute rule, shared by the checks of its filters and its matches.

/// Why a rule is dropped. The message names the field (`spec.rules[0].filters[1]...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// A value the API or this controller does not support (`UnsupportedValue`).
    #[error("{field}: {why}")]
    UnsupportedValue { field: String, why: String },
    /// Filters that cannot be combined in one rule (`IncompatibleFilters`).
    #[error("{field}: {why}")]
    IncompatibleFilters { field: String, why: String },
}

impl RuleError {
    pub fn unsupported(field: impl Into<String>, why: impl Into<String>) -> Self {
        Self::UnsupportedValue {
            field: field.into(),
            why: why.into(),
        }
    }

    pub fn incompatible(field: impl Into<String>, why: impl Into<String>) -> Self {
        Self::IncompatibleFilters {
            field: field.into(),
            why: why.into(),
        }
    }

    /// The condition reason (Gateway API `RouteConditionReason`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnsupportedValue { .. } => "UnsupportedValue",
            Self::IncompatibleFilters { .. } => "IncompatibleFilters",
        }
    }
}

/// `spec.rules[ri]` path prefix for messages.
pub fn rule_path(ri: usize) -> String {
    format!("spec.rules[{ri}]")
}
