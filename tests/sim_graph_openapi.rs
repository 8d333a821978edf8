//! The simulator's real Graph responses validated against Microsoft's schemas
//! (`docs/specs/graph-openapi-subset.yaml`), so that the simulator cannot drift from Graph.
//!
//! The OpenAPI 3.0 component schemas are converted to JSON Schema 2020-12: `$ref`s point into
//! `$defs`, `nullable: true` allows `null`, and — as the file's header comment says — neither
//! `required: ['@odata.type']` nor the `date-time` pattern of `innerError.date` is enforced.

use std::collections::BTreeSet;

use guestops::remote::graph::USER_SELECT;
use guestops::sim::graph::{DEFAULT_PROPERTIES, SIM_CLIENT_ID, SIM_CLIENT_SECRET, SIM_TENANT_ID};
use guestops::sim::{FailRule, Sim};
use jsonschema::Draft;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use url::Url;

const SCHEMA_PREFIX: &str = "#/components/schemas/";

fn load_document() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/specs/graph-openapi-subset.yaml"
    );
    let text = std::fs::read_to_string(path).expect("the OpenAPI subset is readable");
    serde_saphyr::from_str(&text).expect("the OpenAPI subset is valid YAML")
}

fn load_components() -> Map<String, Value> {
    let doc = load_document();
    let schemas = doc["components"]["schemas"]
        .as_object()
        .expect("components.schemas")
        .clone();
    let mut converted: Map<String, Value> = schemas
        .iter()
        .map(|(k, v)| (k.clone(), convert(v)))
        .collect();
    // innerError.date comes without an offset in real payloads: a plain string.
    if let Some(date) = converted
        .get_mut("microsoft.graph.ODataErrors.InnerError")
        .and_then(|s| s.pointer_mut("/properties/date"))
        .and_then(Value::as_object_mut)
    {
        date.remove("pattern");
        date.remove("format");
    }
    converted
}

/// OpenAPI 3.0 schema → JSON Schema 2020-12.
fn convert(node: &Value) -> Value {
    match node {
        Value::Array(items) => Value::Array(items.iter().map(convert).collect()),
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, value) in map {
                match key.as_str() {
                    "nullable" | "example" | "externalDocs" | "discriminator" => {}
                    k if k.starts_with("x-") => {}
                    "$ref" => {
                        let target = value.as_str().expect("$ref is a string");
                        let name = target
                            .strip_prefix(SCHEMA_PREFIX)
                            .expect("a component schema $ref");
                        out.insert("$ref".into(), json!(format!("#/$defs/{name}")));
                    }
                    "required" => {
                        let kept: Vec<Value> = value
                            .as_array()
                            .expect("required is a list")
                            .iter()
                            .filter(|v| v.as_str() != Some("@odata.type"))
                            .cloned()
                            .collect();
                        if !kept.is_empty() {
                            out.insert("required".into(), Value::Array(kept));
                        }
                    }
                    "properties" => {
                        let props = value
                            .as_object()
                            .expect("properties is a map")
                            .iter()
                            .map(|(name, schema)| (name.clone(), convert(schema)))
                            .collect();
                        out.insert("properties".into(), Value::Object(props));
                    }
                    _ => {
                        out.insert(key.clone(), convert(value));
                    }
                }
            }
            if map.get("nullable") == Some(&Value::Bool(true)) {
                match out.get("type").cloned() {
                    Some(Value::String(t)) => {
                        out.insert("type".into(), json!([t, "null"]));
                    }
                    _ => {
                        return json!({"anyOf": [Value::Object(out), {"type": "null"}]});
                    }
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

struct Schemas {
    defs: Map<String, Value>,
}

impl Schemas {
    fn load() -> Self {
        Self {
            defs: load_components(),
        }
    }

    /// Errors of `instance` against component `name` (empty = valid).
    fn errors(&self, name: &str, instance: &Value) -> Vec<String> {
        assert!(self.defs.contains_key(name), "no schema {name}");
        self.errors_of(&json!({"$ref": format!("#/$defs/{name}")}), instance)
    }

    /// Errors of `instance` against a converted `schema` that may refer to the components.
    fn errors_of(&self, schema: &Value, instance: &Value) -> Vec<String> {
        let mut schema = schema.as_object().expect("a schema object").clone();
        schema.insert(
            "$schema".into(),
            json!("https://json-schema.org/draft/2020-12/schema"),
        );
        schema.insert("$defs".into(), Value::Object(self.defs.clone()));
        let schema = Value::Object(schema);
        let validator = jsonschema::options()
            .with_draft(Draft::Draft202012)
            .build(&schema)
            .expect("the converted schema compiles");
        validator
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect()
    }

    /// The converted `2XX` response schema of `GET /users/delta()` (declared inline in `paths`).
    fn delta_response() -> Value {
        let doc = load_document();
        convert(
            doc.pointer(
                "/paths/~1users~1delta()/get/responses/2XX/content/application~1json/schema",
            )
            .expect("the subset describes the 2XX response of /users/delta()"),
        )
    }

    fn assert_valid(&self, name: &str, instance: &Value) {
        let errors = self.errors(name, instance);
        assert!(
            errors.is_empty(),
            "{name} rejects the simulator's response: {errors:#?}\n{instance:#}"
        );
    }

    /// Property names of a schema, following `allOf` and `$ref`.
    fn properties(&self, name: &str) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        self.collect(&self.defs[name], &mut names);
        names
    }

    fn collect(&self, schema: &Value, names: &mut BTreeSet<String>) {
        if let Some(target) = schema["$ref"].as_str() {
            let name = target.trim_start_matches("#/$defs/");
            self.collect(&self.defs[name], names);
        }
        if let Some(props) = schema["properties"].as_object() {
            names.extend(props.keys().cloned());
        }
        for part in schema["allOf"].as_array().into_iter().flatten() {
            self.collect(part, names);
        }
    }
}

/// Every key of `object` is declared (or allowed for another documented reason).
fn assert_declared(object: &Value, declared: &BTreeSet<String>, what: &str) {
    for key in object.as_object().expect("an object").keys() {
        assert!(
            declared.contains(key) || key == "@odata.context",
            "{what} has property `{key}`, which Microsoft's schema does not declare"
        );
    }
}

struct Env {
    sim: Sim,
    base: Url,
    token: String,
    _shutdown: tokio_util::sync::DropGuard,
}

async fn start() -> Env {
    let sim = Sim::new();
    let shutdown = CancellationToken::new();
    let base = sim
        .spawn(
            "127.0.0.1:0".parse().expect("socket address"),
            shutdown.clone(),
        )
        .await
        .expect("the simulator binds a loopback port");
    let scope = "https://graph.microsoft.com/.default".to_owned();
    let body: Value = reqwest::Client::new()
        .post(format!("{base}{SIM_TENANT_ID}/oauth2/v2.0/token"))
        .form(&[
            ("client_id", SIM_CLIENT_ID),
            ("client_secret", SIM_CLIENT_SECRET),
            ("scope", scope.as_str()),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await
        .expect("token request")
        .json()
        .await
        .expect("token JSON");
    Env {
        sim,
        base,
        token: body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned(),
        _shutdown: shutdown.drop_guard(),
    }
}

impl Env {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .request(method, format!("{}v1.0/{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn user_list_pages_match_the_user_collection_schema() {
    let env = start().await;
    let accepted = {
        let mut state = env.sim.state();
        state.graph.add_guest("ana@partner.example", "Ana");
        let accepted = state.graph.add_guest("o'brien@partner.example", "Bob");
        state.graph.add_guest("carla@vendor.example", "Carla");
        state.graph.add_member(
            "dan@sim.onmicrosoft.com",
            Some("dan@contoso.example"),
            "Dan",
        );
        state.graph.accept_invitation(&accepted);
        accepted
    };
    let schemas = Schemas::load();
    let mut user_props = schemas.properties("microsoft.graph.user");
    user_props.extend(DEFAULT_PROPERTIES.iter().map(|p| (*p).to_owned()));

    let (status, page) = env
        .call(
            reqwest::Method::GET,
            &format!("users?$filter=userType%20eq%20'Guest'&$select={USER_SELECT}&$top=2"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    schemas.assert_valid("microsoft.graph.userCollectionResponse", &page);
    assert!(
        page["@odata.nextLink"].is_string(),
        "two of three guests: more pages"
    );
    let first = page["value"].as_array().expect("value").clone();
    let next = page["@odata.nextLink"]
        .as_str()
        .expect("nextLink")
        .to_owned();
    let response = reqwest::Client::new()
        .get(next)
        .bearer_auth(&env.token)
        .send()
        .await
        .expect("next page");
    let last: Value = response.json().await.expect("JSON");
    schemas.assert_valid("microsoft.graph.userCollectionResponse", &last);
    assert!(last.get("@odata.nextLink").is_none());
    let all: Vec<Value> = first
        .into_iter()
        .chain(last["value"].as_array().expect("value").clone())
        .collect();
    assert_eq!(all.len(), 3);
    for user in &all {
        assert_declared(user, &user_props, "a listed user");
    }
    assert!(
        all.iter()
            .any(|u| u["id"] == accepted.as_str() && u["externalUserState"] == "Accepted")
    );

    // The default property set, too.
    let (_, page) = env.call(reqwest::Method::GET, "users", None).await;
    schemas.assert_valid("microsoft.graph.userCollectionResponse", &page);
    for user in page["value"].as_array().expect("value") {
        assert_declared(user, &user_props, "a user without $select");
    }
}

#[tokio::test]
async fn a_user_and_an_invitation_match_their_schemas() {
    let env = start().await;
    let schemas = Schemas::load();
    let mut user_props = schemas.properties("microsoft.graph.user");
    user_props.extend(DEFAULT_PROPERTIES.iter().map(|p| (*p).to_owned()));

    let (status, invitation) = env
        .call(
            reqwest::Method::POST,
            "invitations",
            Some(json!({
                "invitedUserEmailAddress": "ana@partner.example",
                "invitedUserDisplayName": "Ana Silva",
                "inviteRedirectUrl": "https://admin.powerembedded.com.br",
                "sendInvitationMessage": true,
                "invitedUserMessageInfo": {"customizedMessageBody": "Welcome."}
            })),
        )
        .await;
    assert_eq!(status, 201);
    schemas.assert_valid("microsoft.graph.invitation", &invitation);
    schemas.assert_valid("microsoft.graph.user", &invitation["invitedUser"]);
    schemas.assert_valid(
        "microsoft.graph.invitedUserMessageInfo",
        &invitation["invitedUserMessageInfo"],
    );
    assert_declared(
        &invitation,
        &schemas.properties("microsoft.graph.invitation"),
        "the invitation",
    );
    let id = invitation["invitedUser"]["id"]
        .as_str()
        .expect("invitedUser.id")
        .to_owned();

    let (status, user) = env
        .call(
            reqwest::Method::GET,
            &format!("users/{id}?$select={USER_SELECT}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    schemas.assert_valid("microsoft.graph.user", &user);
    assert_declared(&user, &user_props, "a user");
    for identity in user["identities"].as_array().expect("identities") {
        schemas.assert_valid("microsoft.graph.objectIdentity", identity);
    }

    let (_, user) = env
        .call(reqwest::Method::GET, &format!("users/{id}"), None)
        .await;
    schemas.assert_valid("microsoft.graph.user", &user);
    assert_declared(&user, &user_props, "a user without $select");
}

#[tokio::test]
async fn error_bodies_match_the_odata_error_schema() {
    let env = start().await;
    let schemas = Schemas::load();
    let errors = [
        env.call(
            reqwest::Method::GET,
            "users/00000000-0000-0000-0000-000000000000",
            None,
        )
        .await,
        env.call(
            reqwest::Method::GET,
            "users?$filter=endsWith(mail,'x')",
            None,
        )
        .await,
        env.call(
            reqwest::Method::POST,
            "invitations",
            Some(json!({"inviteRedirectUrl": "https://x.example"})),
        )
        .await,
    ];
    for (status, body) in &errors {
        assert!(*status >= 400);
        schemas.assert_valid("microsoft.graph.ODataErrors.ODataError", body);
        assert!(body["error"]["innerError"]["request-id"].is_string());
    }
    // Injected faults use the same shape.
    env.sim.state().graph_faults.fail.push(FailRule {
        method: None,
        path_prefix: "/v1.0/users".into(),
        query_contains: None,
        status: 503,
        times: Some(1),
        after_processing: false,
    });
    let (status, body) = env.call(reqwest::Method::GET, "users", None).await;
    assert_eq!(status, 503);
    schemas.assert_valid("microsoft.graph.ODataErrors.ODataError", &body);
}

impl Env {
    /// `GET` of an absolute link (nextLink, deltaLink, Location).
    async fn follow(&self, link: &str) -> (u16, reqwest::header::HeaderMap, Value) {
        let response = reqwest::Client::new()
            .get(link)
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (
            status,
            headers,
            response.json().await.unwrap_or(Value::Null),
        )
    }

    /// Follows one delta round from `link`, validating every page; returns its entries and the
    /// deltaLink.
    async fn delta_round(&self, schemas: &Schemas, link: &str) -> (Vec<Value>, String) {
        let schema = Schemas::delta_response();
        let mut entries = Vec::new();
        let mut link = link.to_owned();
        loop {
            let (status, _, page) = self.follow(&link).await;
            assert_eq!(status, 200, "{page:#}");
            let errors = schemas.errors_of(&schema, &page);
            assert!(
                errors.is_empty(),
                "the delta response schema rejects the simulator's page: {errors:#?}\n{page:#}"
            );
            assert_declared(
                &page,
                &schemas
                    .properties("BaseDeltaFunctionResponse")
                    .into_iter()
                    .chain(["value".to_owned()])
                    .collect(),
                "a delta page",
            );
            entries.extend(page["value"].as_array().expect("value").iter().cloned());
            match (
                page["@odata.nextLink"].as_str(),
                page["@odata.deltaLink"].as_str(),
            ) {
                (Some(next), None) => link = next.to_owned(),
                (None, Some(delta)) => return (entries, delta.to_owned()),
                _ => panic!("a delta page has exactly one of nextLink and deltaLink: {page:#}"),
            }
        }
    }
}

#[tokio::test]
async fn delta_pages_match_the_delta_function_response_schema() {
    let env = start().await;
    let schemas = Schemas::load();
    let mut user_props = schemas.properties("microsoft.graph.user");
    user_props.extend(DEFAULT_PROPERTIES.iter().map(|p| (*p).to_owned()));
    let (ana, bob) = {
        let mut state = env.sim.state();
        let ana = state.graph.add_guest("ana@partner.example", "Ana");
        let bob = state.graph.add_guest("o'brien@partner.example", "Bob");
        state.graph.add_guest("carla@vendor.example", "Carla");
        state.graph.add_member(
            "dan@sim.onmicrosoft.com",
            Some("dan@contoso.example"),
            "Dan",
        );
        state.graph.set_page_size_cap(Some(2));
        (ana, bob)
    };

    // Full sync with the client's $select, then one without (default property set).
    let (entries, delta) = env
        .delta_round(
            &schemas,
            &format!("{}v1.0/users/delta?$select={USER_SELECT}", env.base),
        )
        .await;
    assert_eq!(entries.len(), 4, "members and guests");
    for user in &entries {
        schemas.assert_valid("microsoft.graph.user", user);
        assert_declared(user, &user_props, "a delta user");
        for identity in user["identities"].as_array().expect("identities") {
            schemas.assert_valid("microsoft.graph.objectIdentity", identity);
        }
    }
    let (entries, _) = env
        .delta_round(&schemas, &format!("{}v1.0/users/delta()", env.base))
        .await;
    for user in &entries {
        schemas.assert_valid("microsoft.graph.user", user);
        assert_declared(user, &user_props, "a delta user without $select");
    }

    // Changes: an update, a soft delete, a new guest.
    {
        let mut state = env.sim.state();
        state.graph.accept_invitation(&ana);
        state.graph.delete_user(&bob);
        state.graph.add_guest("eve@partner.example", "Eve");
    }
    let (entries, delta) = env.delta_round(&schemas, &delta).await;
    assert_eq!(entries.len(), 3, "{entries:#?}");
    for entry in &entries {
        schemas.assert_valid("microsoft.graph.user", entry);
        if entry.get("@removed").is_some() {
            // The subset has no schema for the '@removed' annotation (its header says so, and
            // ../shared/specs has none either): only the id is validated as a user's.
            assert_eq!(entry["@removed"], json!({"reason": "changed"}));
            assert_eq!(entry.as_object().expect("object").len(), 2);
        } else {
            assert_declared(entry, &user_props, "a changed user");
        }
    }
    assert!(
        entries
            .iter()
            .any(|e| e["id"] == ana.as_str() && e["externalUserState"] == "Accepted")
    );

    // `latest`, and an expired token (410 with an error body and a Location).
    let (status, _, latest) = env
        .follow(&format!("{}v1.0/users/delta?$deltatoken=latest", env.base))
        .await;
    assert_eq!(status, 200);
    let errors = schemas.errors_of(&Schemas::delta_response(), &latest);
    assert!(errors.is_empty(), "{errors:#?}");
    env.sim.state().graph.expire_delta_tokens();
    let (status, headers, body) = env.follow(&delta).await;
    assert_eq!(status, 410);
    schemas.assert_valid("microsoft.graph.ODataErrors.ODataError", &body);
    let location = headers["location"].to_str().expect("an ASCII Location");
    assert!(location.ends_with("$deltatoken="), "{location}");
    let (entries, _) = env.delta_round(&schemas, location).await;
    assert_eq!(entries.len(), 4, "a full sync again: {entries:#?}");
}

#[test]
fn the_converted_schemas_catch_drift() {
    let schemas = Schemas::load();
    assert!(
        !schemas
            .errors(
                "microsoft.graph.user",
                &json!({"id": "1", "accountEnabled": "yes"})
            )
            .is_empty()
    );
    assert!(
        !schemas
            .errors("microsoft.graph.user", &json!({"otherMails": null}))
            .is_empty()
    );
    assert!(
        schemas
            .errors("microsoft.graph.user", &json!({"id": "1", "mail": null}))
            .is_empty()
    );
    assert!(
        !schemas
            .errors(
                "microsoft.graph.user",
                &json!({"createdDateTime": "2024-01-01 10:00"})
            )
            .is_empty()
    );
    assert!(
        !schemas
            .errors(
                "microsoft.graph.ODataErrors.ODataError",
                &json!({"error": {"code": "x"}})
            )
            .is_empty()
    );
    let delta = Schemas::delta_response();
    assert!(
        !schemas
            .errors_of(&delta, &json!({"value": [{"accountEnabled": "yes"}]}))
            .is_empty()
    );
    assert!(
        !schemas
            .errors_of(&delta, &json!({"@odata.deltaLink": 1, "value": []}))
            .is_empty()
    );
    assert!(
        schemas
            .errors_of(
                &delta,
                &json!({"@odata.deltaLink": "x", "value": [{"id": "1"}]})
            )
            .is_empty()
    );
    assert!(
        schemas
            .errors(
                "microsoft.graph.ODataErrors.ODataError",
                &json!({"error": {"code": "x", "message": "y", "innerError": {"date": "2025-02-13T10:17:05"}}})
            )
            .is_empty()
    );
}

// Issue 9 item 4: the restore action answers a directoryObject (here a user), and the deleted
// items listing holds users.
#[tokio::test]
async fn a_restored_user_and_deleted_items_match_their_schemas() {
    let env = start().await;
    let schemas = Schemas::load();
    let mut user_props = schemas.properties("microsoft.graph.user");
    user_props.extend(DEFAULT_PROPERTIES.iter().map(|p| (*p).to_owned()));
    let id = env
        .sim
        .state()
        .graph
        .add_guest("ana@partner.example", "Ana");
    assert!(env.sim.state().graph.delete_user(&id));

    let (status, listing) = env
        .call(
            reqwest::Method::GET,
            &format!(
                "directory/deletedItems/microsoft.graph.user?$filter=mail%20eq%20'ana@partner.example'&$select={USER_SELECT}"
            ),
            None,
        )
        .await;
    assert_eq!(status, 200, "{listing}");
    let users = listing["value"].as_array().expect("value");
    assert_eq!(users.len(), 1);
    for user in users {
        schemas.assert_valid("microsoft.graph.user", user);
        assert_declared(user, &user_props, "a deleted user");
    }

    let (status, restored) = env
        .call(
            reqwest::Method::POST,
            &format!("directory/deletedItems/{id}/restore"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{restored}");
    schemas.assert_valid("microsoft.graph.directoryObject", &restored);
    schemas.assert_valid("microsoft.graph.user", &restored);
    assert_declared(&restored, &user_props, "the restored user");
}
