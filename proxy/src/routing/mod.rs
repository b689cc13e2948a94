//! Istio traffic management, compiled: which route, which destination, which policy.
#![forbid(unsafe_code)]

mod decision;

pub use decision::*;
