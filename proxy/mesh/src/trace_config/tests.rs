use serde_json::json;

use super::*;

fn config(yaml: &str) -> istio::MeshConfig {
    serde_yaml::from_str(yaml).unwrap()
}

fn settings(yaml: &str) -> (TracingSettings, Vec<(String, String)>) {
    tracing_settings(&config(yaml), "data.mesh")
}

#[test]
fn providers_are_read_as_istio_users_write_them() {
    let (got, problems) = settings(
        "extensionProviders:
- name: zipkin
  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411, maxTagLength: 64}
- name: otel
  opentelemetry:
    service: otel.obs.svc.cluster.local
    port: 4317
    grpc: {timeout: 2s, initialMetadata: [{name: Authorization, value: Bearer x}]}
- name: otel-http
  opentelemetry:
    service: otel.obs
    port: 4318
    http: {path: /otlp/v1/traces, headers: [{name: x-tenant, value: a}]}
- name: authz
  envoyExtAuthzHttp: {service: authz.shop, port: 8000}
defaultProviders: {tracing: [zipkin, otel, otel-http]}
defaultConfig: {tracing: {sampling: 12.5}}
",
    );
    assert_eq!(problems, vec![]);
    assert_eq!(got.sampling_per_million, 125_000);
    assert!(got.is_on() && got.b3() && got.w3c());
    assert_eq!(
        got.providers,
        vec![
            TracingProvider {
                name: "zipkin".into(),
                protocol: TraceProtocol::Zipkin,
                service: "zipkin.istio-system.svc.cluster.local".into(),
                port: 9411,
                path: "/api/v2/spans".into(),
                headers: vec![],
                timeout: DEFAULT_TIMEOUT,
                max_tag_length: 64,
            },
            TracingProvider {
                name: "otel".into(),
                protocol: TraceProtocol::OtlpGrpc,
                service: "otel.obs.svc.cluster.local".into(),
                port: 4317,
                path: String::new(),
                headers: vec![("authorization".into(), "Bearer x".into())],
                timeout: Duration::from_secs(2),
                max_tag_length: DEFAULT_MAX_TAG_LENGTH,
            },
            TracingProvider {
                name: "otel-http".into(),
                protocol: TraceProtocol::OtlpHttp,
                service: "otel.obs".into(),
                port: 4318,
                path: "/otlp/v1/traces".into(),
                headers: vec![("x-tenant".into(), "a".into())],
                timeout: DEFAULT_TIMEOUT,
                max_tag_length: DEFAULT_MAX_TAG_LENGTH,
            },
        ]
    );
    // The settings cross the control wire unchanged.
    let wire = serde_json::to_string(&got).unwrap();
    assert_eq!(serde_json::from_str::<TracingSettings>(&wire).unwrap(), got);
}

#[test]
fn without_default_providers_tracing_is_off_at_istios_default_sampling() {
    let (got, problems) = settings(
        "extensionProviders: [{name: z, zipkin: {service: zipkin.istio-system, port: 9411}}]",
    );
    assert_eq!(problems, vec![]);
    assert!(!got.is_on());
    assert_eq!(got.sampling_per_million, DEFAULT_SAMPLING_PER_MILLION);
    assert_eq!(TracingSettings::default().sampling_per_million, 10_000);
}

#[test]
fn bad_values_name_their_field_and_leave_tracing_off() {
    let zipkin = |spec: &str| {
        format!(
            "extensionProviders: [{{name: z, zipkin: {spec}}}]\ndefaultProviders: {{tracing: [z]}}"
        )
    };
    let otel = |spec: &str| {
        format!(
            "extensionProviders: [{{name: o, opentelemetry: {spec}}}]\ndefaultProviders: {{tracing: [o]}}"
        )
    };
    let at = "data.mesh.extensionProviders[0]";
    let cases = [
        (zipkin("{port: 9411}"), format!("{at}.zipkin.service")),
        (zipkin("{service: z, port: 0}"), format!("{at}.zipkin.port")),
        (
            zipkin("{service: z, port: 70000}"),
            format!("{at}.zipkin.port"),
        ),
        (
            zipkin("{service: z, port: 9411, maxTagLength: -1}"),
            format!("{at}.zipkin.maxTagLength"),
        ),
        (
            zipkin("{service: z, port: 9411, path: api}"),
            format!("{at}.zipkin.path"),
        ),
        (
            zipkin("{service: z, port: 9411, timeout: soon}"),
            format!("{at}.zipkin.timeout"),
        ),
        (
            zipkin("{service: z, port: 9411, headers: [{name: '', value: a}]}"),
            format!("{at}.zipkin.headers[0].name"),
        ),
        (
            otel("{service: o, port: 4318, http: {timeout: 0s}}"),
            format!("{at}.opentelemetry.http.timeout"),
        ),
        (
            otel("{service: o, port: 4317, grpc: {initialMetadata: [{name: a}]}}"),
            format!("{at}.opentelemetry.grpc.initialMetadata[0].value"),
        ),
        (
            otel("{service: o, port: 4317, grpc: {}, http: {}}"),
            format!("{at}.opentelemetry"),
        ),
        (
            "extensionProviders: [{name: '', zipkin: {service: z, port: 9411}}]".to_owned(),
            format!("{at}.name"),
        ),
        (
            "defaultProviders: {tracing: [missing]}".to_owned(),
            "data.mesh.defaultProviders.tracing[0]".to_owned(),
        ),
        (
            "extensionProviders: [{name: a, envoyExtAuthzHttp: {service: a, port: 1}}]\n\
             defaultProviders: {tracing: [a]}"
                .to_owned(),
            "data.mesh.defaultProviders.tracing[0]".to_owned(),
        ),
        (
            "defaultConfig: {tracing: {sampling: 101}}".to_owned(),
            "data.mesh.defaultConfig.tracing.sampling".to_owned(),
        ),
        (
            "defaultConfig: {tracing: {sampling: half}}".to_owned(),
            "data.mesh.defaultConfig.tracing.sampling".to_owned(),
        ),
    ];
    for (yaml, field) in cases {
        let (got, problems) = settings(&yaml);
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert!(fields.contains(&field.as_str()), "{yaml}: {problems:?}");
        assert!(!got.is_on(), "{yaml}: a bad config makes no spans");
    }
    // A sampling decision at the edges of the range.
    for (value, per_million) in [(json!(0), 0), (json!(100), 1_000_000), (json!(0.01), 100)] {
        let yaml = format!("defaultConfig: {{tracing: {{sampling: {value}}}}}");
        assert_eq!(
            settings(&yaml),
            (
                TracingSettings {
                    providers: vec![],
                    sampling_per_million: per_million
                },
                vec![]
            )
        );
    }
}
