//! A FAKE Kubernetes API server: a test double on loopback, plain HTTP, serving in-memory
//! objects that the test changes. It is not a kube-apiserver: no auth, no RBAC, no admission,
//! no conversion, no watch cache; it serves only what the agent's Kubernetes source asks:
//!
//! - lists of any resource (`/api/v1/...`, `/apis/<group>/<version>/...`, cluster-wide or one
//!   namespace), with `fieldSelector` (`a.b=c`, comma-joined) and pagination (`limit`,
//!   `continue`; items without `apiVersion` and `kind`, as the real one sends them);
//! - `watch=1` streams (JSON lines) of the events after `resourceVersion`, each batch followed
//!   by a BOOKMARK; and `410 Gone` (an ERROR event, or on a new watch) for a resource whose
//!   history [`FakeApiServer::forget`] cut;
//! - [`FakeApiServer::hold_pages`]: later pages of a list wait until released, to catch a
//!   client that acts on a half-listed state;
//! - [`FakeApiServer::unserve`]: 404 for a resource, as for a custom resource whose CRD is
//!   not installed;
//! - [`FakeApiServer::fail`]: 500 for every request on a resource until
//!   [`FakeApiServer::heal`], to watch the client back off;
//! - `PATCH` of an object or its subresource with a JSON merge patch (RFC 7386), and `POST`
//!   of a new object (`create`; 409 when its name is taken);
//! - a record of every request ([`Served`]): its RBAC verb, resource and subresource, field
//!   selector, status and time ([`FakeApiServer::rbac`]: what a ClusterRole must allow);
//! - single objects: GET, DELETE, and PATCH with `application/apply-patch+yaml` (server-side
//!   apply, simplified: the body replaces the object, its `status` kept, `resourceVersion`
//!   and `generation` bumped), each apply recorded in order ([`FakeApiServer::applied`]).
//! - `POST` of TokenReviews, answered from the tokens the test gives
//!   ([`FakeApiServer::token`]), or with 500 ([`FakeApiServer::fail_token_reviews`]).
#![expect(
    clippy::unwrap_used,
    reason = "a test double: its failure is the test's, and a poisoned lock one already"
)]

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

/// A resource as the server names it: `<group>/<version>/<plural>`, the core group empty.
pub type Resource = &'static str;

/// One request the server answered, for tests that wait on the client's progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    pub resource: String,
    pub watch: bool,
    /// The list's `continue` token, if any.
    pub page: Option<String>,
    /// The verb as RBAC names it: `get`, `list`, `watch`, `create`, `patch`, `update`,
    /// `delete`.
    pub verb: &'static str,
    /// The object's name, for a request about one object (`get`, `patch`, `delete`).
    pub name: Option<String>,
    /// `status` of `pods/status`.
    pub subresource: Option<String>,
    /// The `fieldSelector` query parameter.
    pub fields: Option<String>,
    /// The HTTP status answered (a watch: when its stream started).
    pub status: u16,
    /// When the request came in.
    pub at: Instant,
}

/// What RBAC checks of a request: (verb, API group, resource or `resource/subresource`).
pub type RbacTriple = (String, String, String);

impl Served {
    pub fn rbac(&self) -> RbacTriple {
        let mut parts = self.resource.split('/');
        let group = parts.next().unwrap_or_default().to_owned();
        let plural = parts.next_back().unwrap_or_default();
        let resource = match &self.subresource {
            Some(sub) => format!("{plural}/{sub}"),
            None => plural.to_owned(),
        };
        (self.verb.to_owned(), group, resource)
    }
}

struct Event {
    resource: String,
    version: u64,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    version: u64,
    /// By resource, then `namespace/name`.
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    log: Vec<Event>,
    /// Per resource: watches from before this version get 410 Gone.
    compacted: BTreeMap<String, u64>,
    held: HashSet<String>,
    /// Resources answered with 404, as a cluster without their CRD does.
    unserved: HashSet<String>,
    /// Resources answered with 500.
    failing: HashSet<String>,
    served: Vec<Served>,
    /// `resource namespace/name` of each server-side apply, in order.
    applied: Vec<String>,
    /// TokenReview answers by token: (audience, `status.user`).
    tokens: BTreeMap<String, (String, Value)>,
    fail_token_reviews: bool,
}

/// TokenReviews, as the server names them.
pub const TOKEN_REVIEWS: Resource = "authentication.k8s.io/v1/tokenreviews";

impl Store {
    /// Creates or replaces `object`, with an event; returns its new resourceVersion.
    fn put(&mut self, resource: &str, mut object: Value) -> (Value, u64) {
        self.version += 1;
        let version = self.version;
        object["metadata"]["resourceVersion"] = version.to_string().into();
        let key = key(&object);
        let objects = self.objects.entry(resource.to_owned()).or_default();
        let kind = if objects.insert(key, object.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.log.push(Event {
            resource: resource.to_owned(),
            version,
            kind,
            object: object.clone(),
        });
        (object, version)
    }

    /// Removes an object the test says the server has; returns it and the version its removal
    /// takes.
    fn remove(&mut self, resource: Resource, name: &str) -> (Value, u64) {
        let object = self
            .objects
            .get_mut(resource)
            .and_then(|objects| objects.remove(name))
            .unwrap_or_else(|| panic!("the fake API server has no {resource} {name}"));
        self.version += 1;
        (object, self.version)
    }
}

pub struct FakeApiServer {
    addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    /// Bumped on every change, waking watches and held lists.
    changed: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApiServer {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let store = Arc::new(Mutex::new(Store::default()));
        let (changed, _) = watch::channel(0);
        let (task_store, task_changed) = (Arc::clone(&store), changed.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (store, changed) = (Arc::clone(&task_store), task_changed.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let (store, changed) = (Arc::clone(&store), changed.clone());
                        async move { Ok::<_, Infallible>(serve(&store, &changed, request).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        Self {
            addr,
            store,
            changed,
            task,
        }
    }

    /// A kubeconfig for this server, written in `dir`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters: [{{name: fake, cluster: {{server: \"http://{}\"}}}}]\n\
             users: [{{name: fake, user: {{}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\n",
            self.addr
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap()
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Creates or replaces `object` (it names its namespace and name); returns its new
    /// resourceVersion.
    pub fn apply(&self, resource: Resource, object: Value) -> u64 {
        let (_, version) = self.store().put(resource, object);
        self.bump();
        version
    }

    /// A TokenReview of `token` with audience `audience` authenticates it as `user` (the
    /// review's `status.user`); any other token, or audience, is not authenticated.
    pub fn token(&self, token: &str, audience: &str, user: Value) {
        self.store()
            .tokens
            .insert(token.to_owned(), (audience.to_owned(), user));
    }

    /// TokenReviews answer 500 (`true`) or are reviewed again (`false`).
    pub fn fail_token_reviews(&self, fail: bool) {
        self.store().fail_token_reviews = fail;
    }

    /// Deletes `namespace/name` (`name` alone when cluster-scoped), with a DELETED event.
    pub fn delete(&self, resource: Resource, name: &str) {
        {
            let mut store = self.store();
            let (mut object, version) = store.remove(resource, name);
            object["metadata"]["resourceVersion"] = version.to_string().into();
            store.log.push(Event {
                resource: resource.to_owned(),
                version,
                kind: "DELETED",
                object,
            });
        }
        self.bump();
    }

    /// Deletes `name` without an event, and cuts `resource`'s history: its open watches end
    /// with 410 Gone, as when a real server's watch cache has moved on, so only a relist can
    /// show the deletion.
    pub fn forget(&self, resource: Resource, name: &str) {
        {
            let mut store = self.store();
            let (_, version) = store.remove(resource, name);
            store.compacted.insert(resource.to_owned(), version);
        }
        self.bump();
    }

    /// `resource` answers 404 from now on, as when its CRD is not installed.
    pub fn unserve(&self, resource: Resource) {
        self.store().unserved.insert(resource.to_owned());
        self.bump();
    }

    /// `resource` answers 500 to every request from now on, until [`FakeApiServer::heal`].
    pub fn fail(&self, resource: Resource) {
        self.store().failing.insert(resource.to_owned());
        self.bump();
    }

    pub fn heal(&self, resource: Resource) {
        self.store().failing.remove(resource);
        self.bump();
    }

    /// The object `namespace/name` (`name` alone when cluster-scoped) as the server has it.
    pub fn object(&self, resource: Resource, name: &str) -> Option<Value> {
        self.store().objects.get(resource)?.get(name).cloned()
    }

    /// What every request answered so far asked of RBAC.
    pub fn rbac(&self) -> std::collections::BTreeSet<RbacTriple> {
        self.store().served.iter().map(Served::rbac).collect()
    }

    /// Pages after the first of `resource`'s lists wait until [`FakeApiServer::release`].
    pub fn hold_pages(&self, resource: Resource) {
        self.store().held.insert(resource.to_owned());
    }

    pub fn release(&self, resource: Resource) {
        self.store().held.remove(resource);
        self.bump();
    }

    /// `resource namespace/name` (`resource name` when cluster-scoped) of every server-side
    /// apply so far, in order.
    pub fn applied(&self) -> Vec<String> {
        self.store().applied.clone()
    }

    /// The objects of `resource`, by `namespace/name` (`name` when cluster-scoped).
    pub fn objects(&self, resource: &str) -> BTreeMap<String, Value> {
        self.store()
            .objects
            .get(resource)
            .cloned()
            .unwrap_or_default()
    }

    /// Every request answered so far.
    pub fn served(&self) -> Vec<Served> {
        self.store().served.clone()
    }

    /// Waits until `done` holds of the requests served.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&[Served]) -> bool) {
        let mut changed = self.changed.subscribe();
        let waited = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            loop {
                if done(&self.store().served) {
                    return;
                }
                let _ = changed.changed().await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "waited 30 s for {what}; served: {:?}",
            self.served()
        );
    }
}

/// `namespace/name`, or `name` for a cluster-scoped object.
fn key(object: &Value) -> String {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    match object["metadata"]["namespace"].as_str() {
        Some(namespace) => format!("{namespace}/{name}"),
        None => name.to_owned(),
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed())
        .unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// What a request asks for.
struct Query {
    resource: String,
    namespace: Option<String>,
    /// One object, not the collection.
    name: Option<String>,
    subresource: Option<String>,
    params: BTreeMap<String, String>,
    verb: &'static str,
}

impl Query {
    /// The store's key of the named object.
    fn key(&self) -> String {
        let name = self.name.as_deref().unwrap_or_default();
        match &self.namespace {
            Some(namespace) => format!("{namespace}/{name}"),
            None => name.to_owned(),
        }
    }

    fn served(&self, status: StatusCode) -> Served {
        Served {
            resource: self.resource.clone(),
            watch: self.verb == "watch",
            page: self.params.get("continue").cloned(),
            verb: self.verb,
            name: self.name.clone(),
            subresource: self.subresource.clone(),
            fields: self.params.get("fieldSelector").cloned(),
            status: status.as_u16(),
            at: Instant::now(),
        }
    }
}

fn parse(request: &Request<hyper::body::Incoming>) -> Option<Query> {
    let segments: Vec<&str> = request.uri().path().trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let owned = |s: &&str| (*s).to_owned();
    // `namespaces/<ns>/...` is a namespaced path, as the real server reads it.
    let (namespace, rest) = match rest {
        ["namespaces", namespace, rest @ ..] if !rest.is_empty() => (Some(owned(namespace)), rest),
        _ => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(owned(name)), None),
        [plural, name, sub] => (*plural, Some(owned(name)), Some(owned(sub))),
        _ => return None,
    };
    let params: BTreeMap<String, String> = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect();
    let watching = params.get("watch").is_some_and(|w| w == "1" || w == "true");
    let verb = match (request.method().as_str(), name.is_some()) {
        ("GET", _) if watching => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PATCH", _) => "patch",
        ("PUT", _) => "update",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    };
    Some(Query {
        resource: format!("{group}/{version}/{plural}"),
        namespace,
        name,
        subresource,
        params,
        verb,
    })
}

/// Percent-decoding of a query component.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => out.push(b),
                    Err(_) => out.extend_from_slice(&bytes[i..i + 3]),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `object` is in the namespace and matches the field selector of `query`.
fn matches(query: &Query, object: &Value) -> bool {
    if let Some(namespace) = &query.namespace {
        if object["metadata"]["namespace"].as_str() != Some(namespace) {
            return false;
        }
    }
    let Some(selector) = query.params.get("fieldSelector") else {
        return true;
    };
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (path, want) = term
            .split_once("==")
            .or_else(|| term.split_once('='))
            .unwrap_or((term, ""));
        let got = path.split('.').fold(object, |value, field| &value[field]);
        got.as_str().unwrap_or_default() == want
    })
}

async fn serve(
    store: &Arc<Mutex<Store>>,
    changed: &watch::Sender<u64>,
    request: Request<hyper::body::Incoming>,
) -> Response<Body> {
    let Some(query) = parse(&request) else {
        return json_response(
            StatusCode::NOT_FOUND,
            &status(
                404,
                "NotFound",
                "the fake API server serves lists, watches, single objects, patches and creates only",
            ),
        );
    };
    let refusal = {
        let mut store = store.lock().unwrap();
        let refusal = if store.unserved.contains(&query.resource) {
            let message = format!(
                "the server could not find the requested resource {}",
                query.resource
            );
            Some((StatusCode::NOT_FOUND, status(404, "NotFound", &message)))
        } else if store.failing.contains(&query.resource) {
            let message = format!("the fake API server fails {} for the test", query.resource);
            Some((
                StatusCode::INTERNAL_SERVER_ERROR,
                status(500, "InternalError", &message),
            ))
        } else {
            None
        };
        if let Some((code, _)) = &refusal {
            store.served.push(query.served(*code));
        }
        refusal
    };
    if let Some((code, body)) = refusal {
        changed.send_modify(|n| *n += 1);
        return json_response(code, &body);
    }
    match query.verb {
        "watch" => {
            record(store, changed, query.served(StatusCode::OK));
            watch_stream(store, changed, query)
        }
        "list" => list(store, changed, query).await,
        "patch" | "create" => {
            let content_type = request
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body = request
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let (code, answer) = if query.resource == TOKEN_REVIEWS && query.verb == "create" {
                token_review(store, &body)
            } else if content_type == "application/apply-patch+yaml" {
                apply_patch(store, &query, &body)
            } else {
                write(store, &query, &content_type, &body)
            };
            record(store, changed, query.served(code));
            json_response(code, &answer)
        }
        "get" | "delete" => {
            let (code, answer) = one_object(store, &query);
            record(store, changed, query.served(code));
            json_response(code, &answer)
        }
        verb => {
            record(store, changed, query.served(StatusCode::METHOD_NOT_ALLOWED));
            let message = format!("the fake API server does not serve {verb}");
            json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &status(405, "MethodNotAllowed", &message),
            )
        }
    }
}

/// Records a request answered, waking whoever waits on the record.
fn record(store: &Arc<Mutex<Store>>, changed: &watch::Sender<u64>, served: Served) {
    store.lock().unwrap().served.push(served);
    changed.send_modify(|n| *n += 1);
}

/// A `patch` (JSON merge patch only) or a `create`: the object written, as the real server
/// answers, with an event for the watches.
fn write(
    store: &Arc<Mutex<Store>>,
    query: &Query,
    content_type: &str,
    body: &[u8],
) -> (StatusCode, Value) {
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return (
            StatusCode::BAD_REQUEST,
            status(400, "BadRequest", "the body is not JSON"),
        );
    };
    let mut store = store.lock().unwrap();
    let (key, object, kind) = if query.verb == "patch" {
        if content_type != "application/merge-patch+json" {
            let message =
                format!("the fake API server takes merge patches only, not {content_type}");
            return (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                status(415, "UnsupportedMediaType", &message),
            );
        }
        let key = query.key();
        let Some(object) = store
            .objects
            .get_mut(&query.resource)
            .and_then(|objects| objects.get_mut(&key))
        else {
            return (
                StatusCode::NOT_FOUND,
                status(
                    404,
                    "NotFound",
                    &format!("{} {key} not found", query.resource),
                ),
            );
        };
        json_patch::merge(object, &body);
        (key, object.clone(), "MODIFIED")
    } else {
        let mut object = body;
        if let Some(namespace) = &query.namespace {
            object["metadata"]["namespace"] = namespace.clone().into();
        }
        let key = key(&object);
        if store
            .objects
            .get(&query.resource)
            .is_some_and(|objects| objects.contains_key(&key))
        {
            return (
                StatusCode::CONFLICT,
                status(409, "AlreadyExists", &format!("{key} already exists")),
            );
        }
        (key, object, "ADDED")
    };
    store.version += 1;
    let version = store.version;
    let mut object = object;
    object["metadata"]["resourceVersion"] = version.to_string().into();
    store
        .objects
        .entry(query.resource.clone())
        .or_default()
        .insert(key, object.clone());
    store.log.push(Event {
        resource: query.resource.clone(),
        version,
        kind,
        object: object.clone(),
    });
    let code = if kind == "ADDED" {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (code, object)
}

/// A page of a list, paginated by `limit` and `continue`.
async fn list(
    store: &Arc<Mutex<Store>>,
    changed: &watch::Sender<u64>,
    query: Query,
) -> Response<Body> {
    let page = query.params.get("continue").cloned();
    // A held page is recorded when asked, then waits for its release.
    let held = page.is_some() && store.lock().unwrap().held.contains(&query.resource);
    if held {
        let mut wake = changed.subscribe();
        record(store, changed, query.served(StatusCode::OK));
        while store.lock().unwrap().held.contains(&query.resource) {
            let _ = wake.changed().await;
        }
    }
    let mut store = store.lock().unwrap();
    if !held {
        store.served.push(query.served(StatusCode::OK));
    }
    // References first: only the page's objects are copied (a list of 20k pods is 40 pages).
    let items: Vec<&Value> = store
        .objects
        .get(&query.resource)
        .into_iter()
        .flat_map(BTreeMap::values)
        .filter(|object| matches(&query, object))
        .collect();
    let start: usize = page.as_deref().map_or(0, |p| p.parse().unwrap_or(0));
    let limit: usize = query
        .params
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let end = start.saturating_add(limit).min(items.len());
    let mut metadata = json!({"resourceVersion": store.version.to_string()});
    if end < items.len() {
        metadata["continue"] = end.to_string().into();
    }
    let page: Vec<Value> = items[start.min(end)..end]
        .iter()
        .map(|object| {
            let mut item = (*object).clone();
            if let Some(map) = item.as_object_mut() {
                map.remove("apiVersion");
                map.remove("kind");
            }
            item
        })
        .collect();
    let body = json!({"apiVersion": "v1", "kind": "List", "metadata": metadata, "items": page});
    drop(store);
    changed.send_modify(|n| *n += 1);
    json_response(StatusCode::OK, &body)
}

/// The events after the watch's `resourceVersion`, then every later batch, each followed by a
/// BOOKMARK; an ERROR 410 once the resource's history is cut past the watch's position.
fn watch_stream(
    store: &Arc<Mutex<Store>>,
    changed: &watch::Sender<u64>,
    query: Query,
) -> Response<Body> {
    let mut position: u64 = query
        .params
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (lines, rx) = mpsc::channel::<Bytes>(64);
    let mut wake = changed.subscribe();
    let store = Arc::clone(store);
    tokio::spawn(async move {
        loop {
            let batch = {
                let store = store.lock().unwrap();
                if store
                    .compacted
                    .get(&query.resource)
                    .is_some_and(|cut| *cut > position)
                {
                    let gone = status(410, "Expired", "too old resource version");
                    vec![json!({"type": "ERROR", "object": gone})]
                } else {
                    let mut batch: Vec<Value> = store
                        .log
                        .iter()
                        .filter(|e| e.resource == query.resource && e.version > position)
                        .filter(|e| matches(&query, &e.object))
                        .map(|e| json!({"type": e.kind, "object": e.object}))
                        .collect();
                    position = store.version;
                    let (api_version, kind) = batch
                        .first()
                        .map(|e| {
                            (
                                e["object"]["apiVersion"].clone(),
                                e["object"]["kind"].clone(),
                            )
                        })
                        .unwrap_or(("v1".into(), "Unknown".into()));
                    batch.push(json!({"type": "BOOKMARK", "object": {
                        "apiVersion": api_version, "kind": kind,
                        "metadata": {"resourceVersion": position.to_string()}}}));
                    batch
                }
            };
            let gone = batch.first().is_some_and(|e| e["type"] == "ERROR");
            for event in batch {
                let line = Bytes::from(format!("{event}\n"));
                if lines.send(line).await.is_err() {
                    return; // The client went away.
                }
            }
            if gone || wake.changed().await.is_err() {
                return;
            }
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(line)), rx))
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(StreamBody::new(body).boxed())
        .unwrap()
}

/// A TokenReview, answered from the tokens the test gave.
fn token_review(store: &Arc<Mutex<Store>>, body: &[u8]) -> (StatusCode, Value) {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let store = store.lock().unwrap();
    if store.fail_token_reviews {
        let message = "the fake API server was told to fail";
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            status(500, "InternalError", message),
        );
    }
    let token = body["spec"]["token"].as_str().unwrap_or_default();
    let asked: Vec<&str> = body["spec"]["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let answer = match store.tokens.get(token) {
        Some((audience, user)) if asked.contains(&audience.as_str()) => {
            json!({"authenticated": true, "audiences": [audience], "user": user})
        }
        Some(_) => json!({"authenticated": false,
                          "error": "token audiences are invalid for the target audiences"}),
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    let mut review = body.clone();
    review["status"] = answer;
    (StatusCode::CREATED, review)
}

/// GET or DELETE of the object `query` names.
fn one_object(store: &Arc<Mutex<Store>>, query: &Query) -> (StatusCode, Value) {
    let key = query.key();
    let mut store = store.lock().unwrap();
    let not_found = || {
        let message = format!("{} {key} not found", query.resource);
        (StatusCode::NOT_FOUND, status(404, "NotFound", &message))
    };
    if query.verb == "get" {
        let object = store.objects.get(&query.resource).and_then(|o| o.get(&key));
        return object.map_or_else(not_found, |object| (StatusCode::OK, object.clone()));
    }
    let removed = store
        .objects
        .get_mut(&query.resource)
        .and_then(|objects| objects.remove(&key));
    let Some(mut object) = removed else {
        return not_found();
    };
    store.version += 1;
    let version = store.version;
    object["metadata"]["resourceVersion"] = version.to_string().into();
    store.log.push(Event {
        resource: query.resource.clone(),
        version,
        kind: "DELETED",
        object: object.clone(),
    });
    (StatusCode::OK, object)
}

/// A server-side apply, simplified: the body (kube-rs sends JSON, which is YAML too) replaces
/// the object, whose `status` is kept; `resourceVersion` and `generation` are bumped.
fn apply_patch(store: &Arc<Mutex<Store>>, query: &Query, body: &[u8]) -> (StatusCode, Value) {
    let Ok(mut object) = serde_json::from_slice::<Value>(body) else {
        let message = "the fake API server reads apply patches as JSON";
        return (StatusCode::BAD_REQUEST, status(400, "BadRequest", message));
    };
    let key = query.key();
    let mut store = store.lock().unwrap();
    store.version += 1;
    let version = store.version;
    let objects = store.objects.entry(query.resource.clone()).or_default();
    let previous = objects.get(&key);
    let generation = previous
        .and_then(|p| p["metadata"]["generation"].as_i64())
        .unwrap_or(0)
        + 1;
    if let Some(status) = previous.map(|p| p["status"].clone()) {
        if !status.is_null() && object.get("status").is_none() {
            object["status"] = status;
        }
    }
    let kind = if previous.is_some() {
        "MODIFIED"
    } else {
        "ADDED"
    };
    object["metadata"]["resourceVersion"] = version.to_string().into();
    object["metadata"]["generation"] = generation.into();
    if let Some(namespace) = &query.namespace {
        object["metadata"]["namespace"] = namespace.clone().into();
    }
    objects.insert(key.clone(), object.clone());
    store.applied.push(format!("{} {key}", query.resource));
    store.log.push(Event {
        resource: query.resource.clone(),
        version,
        kind,
        object: object.clone(),
    });
    (StatusCode::OK, object)
}
