//! Istio's `double` fields (weights, percentages), compared as Istio's protobuf does.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A JSON number that may be fractional (percentages, rates). Compared bit for bit, so that
/// the mesh state stays `Eq` (a NaN never gets this far: JSON has none).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(transparent)]
pub struct Decimal(pub f64);

impl PartialEq for Decimal {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Decimal {}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
