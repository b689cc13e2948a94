//! What a validated JWT tells authorization: [`RequestAuth`].

/// A validated JWT, as RequestAuthentication produced it: the request's `request.auth.*`
/// attributes (`requestPrincipals`, `request.auth.claims[...]`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestAuth {
    /// `<iss>/<sub>`: the request principal.
    pub principal: String,
    /// `aud`: one string, or each of a list.
    pub audiences: Vec<String>,
    /// `azp`, the authorized presenter.
    pub presenter: Option<String>,
    /// The whole payload.
    pub claims: serde_json::Value,
}

impl RequestAuth {
    /// The attributes of a validated payload: principal `iss/sub` (each empty when absent),
    /// audiences, presenter, and the claims themselves.
    #[must_use]
    pub fn from_claims(claims: serde_json::Value) -> Self {
        let text = |key: &str| claims[key].as_str().unwrap_or_default().to_owned();
        let audiences = match &claims["aud"] {
            serde_json::Value::String(aud) => vec![aud.clone()],
            serde_json::Value::Array(list) => list
                .iter()
                .filter_map(|aud| aud.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        Self {
            principal: format!("{}/{}", text("iss"), text("sub")),
            audiences,
            presenter: claims["azp"].as_str().map(str::to_owned),
            claims,
        }
    }

    /// `iss` and `sub`, matched apart as Envoy does: from the claims, or else from the
    /// principal split at its last `/` (an issuer may be a URL).
    #[must_use]
    pub fn issuer_and_subject(&self) -> (&str, &str) {
        let (iss, sub) = self
            .principal
            .rsplit_once('/')
            .unwrap_or((self.principal.as_str(), ""));
        (
            self.claims["iss"].as_str().unwrap_or(iss),
            self.claims["sub"].as_str().unwrap_or(sub),
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn attributes_come_from_the_payload() {
        let auth = RequestAuth::from_claims(json!({
            "iss": "https://issuer.example", "sub": "user-1", "aud": ["a", "b", 3], "azp": "web"
        }));
        assert_eq!(auth.principal, "https://issuer.example/user-1");
        assert_eq!(auth.audiences, ["a", "b"]);
        assert_eq!(auth.presenter.as_deref(), Some("web"));
        let bare = RequestAuth::from_claims(json!({"iss": "i", "aud": "only"}));
        assert_eq!(
            (bare.principal.as_str(), bare.audiences, bare.presenter),
            ("i/", vec!["only".to_owned()], None)
        );
    }
}
