//! Access-log filters: CEL over Envoy's attribute names (`response.code`, `request.method`,
//! `request.headers[...]`, `connection.mtls`, `source.address`, ...), compiled once per
//! Telemetry object and evaluated per line.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use cel_interpreter::{Context, Program, Value};

/// One compiled `filter.expression`.
pub struct CelFilter {
    source: String,
    program: Program,
}

impl fmt::Debug for CelFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CelFilter").field(&self.source).finish()
    }
}

/// What an access-log line knows, under Envoy's attribute names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessLogAttributes {
    /// `request.method`.
    pub method: String,
    /// `request.path`.
    pub path: String,
    /// `request.host`.
    pub host: String,
    /// `request.protocol` (e.g. `HTTP/1.1`).
    pub protocol: String,
    /// `request.headers`, names lowercase.
    pub request_headers: BTreeMap<String, String>,
    /// `response.code`; 0 when there was no response.
    pub response_code: u16,
    /// `connection.mtls`.
    pub mtls: bool,
    /// `source.address`.
    pub source_address: String,
    /// `source.principal` (SPIFFE ID), empty without mTLS.
    pub source_principal: String,
    /// `destination.address`.
    pub destination_address: String,
}

fn string(value: &str) -> Value {
    Value::String(value.to_owned().into())
}

impl CelFilter {
    /// Parses `source`; the error is the parser's message.
    pub fn compile(source: &str) -> Result<Self, String> {
        // cel-parser 0.10's generated ANTLR parser panics on some truncated expressions
        // (`response.code >=`); a bad object must be refused, not take the agent down. The
        // parser holds no shared state, so unwinding out of it leaves nothing half-done.
        let parsed = std::panic::catch_unwind(|| Program::compile(source))
            .map_err(|_| "the expression is incomplete or malformed".to_owned())?;
        let program = parsed.map_err(|error| error.to_string())?;
        Ok(Self {
            source: source.to_owned(),
            program,
        })
    }

    /// The expression as written.
    #[must_use]
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether a line with `attributes` passes. An expression that fails to evaluate (a
    /// missing header, a type mismatch) or yields a non-bool does not pass, as in Envoy.
    #[must_use]
    pub fn matches(&self, attributes: &AccessLogAttributes) -> bool {
        let mut context = Context::default();
        let headers: HashMap<String, Value> = attributes
            .request_headers
            .iter()
            .map(|(k, v)| (k.clone(), string(v)))
            .collect();
        let request: HashMap<&str, Value> = HashMap::from([
            ("method", string(&attributes.method)),
            ("path", string(&attributes.path)),
            ("host", string(&attributes.host)),
            ("protocol", string(&attributes.protocol)),
            ("headers", Value::from(headers)),
        ]);
        let response: HashMap<&str, Value> =
            HashMap::from([("code", Value::Int(i64::from(attributes.response_code)))]);
        let connection: HashMap<&str, Value> =
            HashMap::from([("mtls", Value::Bool(attributes.mtls))]);
        let source: HashMap<&str, Value> = HashMap::from([
            ("address", string(&attributes.source_address)),
            ("principal", string(&attributes.source_principal)),
        ]);
        let destination: HashMap<&str, Value> =
            HashMap::from([("address", string(&attributes.destination_address))]);
        context.add_variable_from_value("request", request);
        context.add_variable_from_value("response", response);
        context.add_variable_from_value("connection", connection);
        context.add_variable_from_value("source", source);
        context.add_variable_from_value("destination", destination);
        matches!(self.program.execute(&context), Ok(Value::Bool(true)))
    }
}
