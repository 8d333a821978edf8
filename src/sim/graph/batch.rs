//! JSON batching: `POST /v1.0/$batch` (`docs/specs/microsoft-graph.md` §4).
//!
//! A batch is validated as a whole first — at most [`MAX_REQUESTS`] requests, each with an `id`
//! (unique, case-insensitively), a known method, a URL relative to the version root, string
//! headers, a `Content-Type` when there is a body, and `dependsOn` naming earlier requests only
//! — and refused with `400` if anything is wrong. Then each inner request is dispatched
//! through the simulator's own router (`tower::ServiceExt::oneshot`), so an inner request
//! behaves exactly as the same request sent directly: same handlers, same token check, same
//! `ConsistencyLevel` rules, same fault rules ([`crate::sim::FailRule`]s match inner requests
//! too). The outer `Authorization` (and `Host`) is applied to every inner request; every other
//! header, `ConsistencyLevel` included, must be given in the inner request's own `headers`.
//!
//! The batch answers `200` whatever its inner requests answered. Strict where the real service
//! may differ: requests run one after the other in request order, and the responses come back
//! in **reverse** order, so a client that does not correlate by `id` notices. A request whose
//! dependency did not succeed answers `424 Failed Dependency` without running.
//! [`BatchFaults::throttle_inner`] answers the next inner requests `429` with an inner
//! `Retry-After`, as Graph throttles each inner request separately.
//!
//! Must not: use the clients (`crate::remote`).

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use serde_json::{Map, Value, json};
use tower::ServiceExt;

use super::{authorize, bad_request, error_response, graph_json};
use crate::sim::Sim;

/// The most requests one batch may hold.
pub const MAX_REQUESTS: usize = 20;

/// The largest inner response body the simulator reads back.
const MAX_INNER_BODY: usize = 16 * 1024 * 1024;

/// Marks a request dispatched from inside a batch (for the fault layer: not a request on the
/// wire, so neither counted in [`crate::sim::Counters::graph_requests`] nor delayed nor
/// periodically throttled).
#[derive(Debug, Clone, Copy)]
pub struct InnerRequest;

/// Fault knobs of `$batch`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchFaults {
    /// The next this many inner requests (counted across batches) answer `429` without running.
    pub throttle_inner: u32,
    /// The inner `Retry-After` of those `429`s (`None`: no header).
    pub inner_retry_after: Option<String>,
}

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// One validated inner request.
struct Inner {
    id: String,
    method: Method,
    url: String,
    headers: HeaderMap,
    body: Option<Bytes>,
    depends_on: Vec<String>,
}

/// `POST /v1.0/$batch`.
pub async fn batch(State(sim): State<Sim>, headers: HeaderMap, body: Bytes) -> Response {
    {
        let state = sim.state();
        if let Err(response) = authorize(&state.graph, &headers) {
            return response;
        }
    }
    let requests = match parse(&headers, &body) {
        Ok(requests) => requests,
        Err(response) => return response,
    };
    {
        let mut state = sim.state();
        state.counters.graph_batches += 1;
        state.counters.graph_batch_inner_requests += requests.len() as u64;
    }
    let router = sim.router();
    let mut responses: Vec<(String, u16, Value)> = Vec::with_capacity(requests.len());
    for inner in requests {
        let failed_dependency = inner.depends_on.iter().find(|dep| {
            responses
                .iter()
                .find(|(id, _, _)| id.eq_ignore_ascii_case(dep))
                .is_none_or(|(_, status, _)| !(200..300).contains(status))
        });
        if let Some(dep) = failed_dependency {
            let answer = error_response(
                StatusCode::FAILED_DEPENDENCY,
                "FailedDependency",
                &format!("The request depends on request '{dep}', which did not succeed."),
            );
            let (status, value) = inner_value(&inner.id, answer).await;
            responses.push((inner.id, status, value));
            continue;
        }
        let throttled = {
            let mut state = sim.state();
            let faults = &mut state.graph_batch_faults;
            if faults.throttle_inner > 0 {
                faults.throttle_inner -= 1;
                let retry_after = faults.inner_retry_after.clone();
                state.counters.throttled += 1;
                Some(retry_after)
            } else {
                None
            }
        };
        let answer = match throttled {
            Some(retry_after) => {
                let mut answer = error_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TooManyRequests",
                    "Please retry again later.",
                );
                if let Some(value) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
                    answer.headers_mut().insert(header::RETRY_AFTER, value);
                }
                answer
            }
            None => dispatch(&router, &headers, &inner).await,
        };
        let (status, value) = inner_value(&inner.id, answer).await;
        responses.push((inner.id, status, value));
    }
    // Strict: never the request order (reversed; one request is its own reverse).
    let responses: Vec<Value> = responses.into_iter().rev().map(|(_, _, v)| v).collect();
    graph_json(StatusCode::OK, json!({ "responses": responses }))
}

/// Runs one inner request through the simulator's router, as if sent directly.
async fn dispatch(router: &axum::Router, outer: &HeaderMap, inner: &Inner) -> Response {
    let mut request = Request::builder()
        .method(inner.method.clone())
        .uri(format!("/v1.0{}", inner.url));
    if let Some(headers) = request.headers_mut() {
        for name in [header::AUTHORIZATION, header::HOST] {
            if let Some(value) = outer.get(&name) {
                headers.insert(name, value.clone());
            }
        }
        for (name, value) in &inner.headers {
            headers.insert(name.clone(), value.clone());
        }
    }
    let request = request.extension(InnerRequest).body(
        inner
            .body
            .clone()
            .map(Body::from)
            .unwrap_or_else(Body::empty),
    );
    let request = match request {
        Ok(request) => request,
        Err(err) => return bad_request(&format!("The request URL is not valid: {err}")),
    };
    match router.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// An inner response as the batch answers it: `{id, status, headers, body}`.
async fn inner_value(id: &str, response: Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_INNER_BODY)
        .await
        .unwrap_or_default();
    let mut headers = Map::new();
    for name in [
        header::CONTENT_TYPE,
        header::RETRY_AFTER,
        header::LOCATION,
        HeaderName::from_static("request-id"),
    ] {
        if let Some(value) = parts.headers.get(&name).and_then(|v| v.to_str().ok()) {
            headers.insert(canonical(&name), json!(value));
        }
    }
    let mut value = json!({ "id": id, "status": status, "headers": headers });
    if !bytes.is_empty() {
        value["body"] = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
    }
    (status, value)
}

/// `Content-Type`, `Retry-After`, … as Graph spells inner header names.
fn canonical(name: &HeaderName) -> String {
    name.as_str()
        .split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// Validates the whole batch; any mistake refuses all of it (`400`).
fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Vec<Inner>, Response> {
    super::require_json(headers, "The batch")?;
    let value: Value = serde_json::from_slice(body)
        .map_err(|err| bad_request(&format!("Invalid batch payload: {err}")))?;
    let Some(requests) = value.get("requests").and_then(Value::as_array) else {
        return Err(bad_request(
            "Invalid batch payload format: 'requests' must be an array.",
        ));
    };
    if requests.is_empty() {
        return Err(bad_request("Invalid batch payload: 'requests' is empty."));
    }
    if requests.len() > MAX_REQUESTS {
        return Err(bad_request(&format!(
            "Invalid batch payload: the number of batch requests ({}) exceeds the limit of {MAX_REQUESTS}.",
            requests.len()
        )));
    }
    let mut parsed: Vec<Inner> = Vec::with_capacity(requests.len());
    for request in requests {
        let inner = parse_one(request, &parsed)?;
        parsed.push(inner);
    }
    Ok(parsed)
}

fn parse_one(request: &Value, earlier: &[Inner]) -> Result<Inner, Response> {
    let Some(request) = request.as_object() else {
        return Err(bad_request(
            "Invalid batch payload: a request is not an object.",
        ));
    };
    if let Some(unknown) = request
        .keys()
        .find(|k| !["id", "method", "url", "headers", "body", "dependsOn"].contains(&k.as_str()))
    {
        return Err(bad_request(&format!(
            "Invalid batch payload: unknown property '{unknown}'."
        )));
    }
    let id = match request.get("id") {
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        _ => {
            return Err(bad_request(
                "Invalid batch payload: every request needs an 'id'.",
            ));
        }
    };
    if earlier.iter().any(|e| e.id.eq_ignore_ascii_case(&id)) {
        return Err(bad_request(&format!(
            "Invalid batch payload: the request id '{id}' is not unique (ids are compared case-insensitively)."
        )));
    }
    let method = match request.get("method").and_then(Value::as_str) {
        Some(m) if METHODS.iter().any(|k| k.eq_ignore_ascii_case(m)) => {
            Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| bad_request(&format!("Invalid method '{m}' in request '{id}'.")))?
        }
        Some(m) => {
            return Err(bad_request(&format!(
                "Invalid method '{m}' in request '{id}'."
            )));
        }
        None => {
            return Err(bad_request(&format!("Request '{id}' needs a 'method'.")));
        }
    };
    let Some(url) = request.get("url").and_then(Value::as_str) else {
        return Err(bad_request(&format!("Request '{id}' needs a 'url'.")));
    };
    let relative = url.starts_with('/') && !url.starts_with("//") && !url.contains("://");
    if !relative {
        return Err(bad_request(&format!(
            "The url '{url}' of request '{id}' must be relative to the version root (e.g. '/users')."
        )));
    }
    let path = url.split(['?', '#']).next().unwrap_or("");
    if path.eq_ignore_ascii_case("/$batch") {
        return Err(bad_request("Nested batch requests are not supported."));
    }
    let mut headers = HeaderMap::new();
    match request.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, value) in map {
                let (Ok(name), Some(Ok(value))) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    value.as_str().map(HeaderValue::from_str),
                ) else {
                    return Err(bad_request(&format!(
                        "Invalid header '{name}' in request '{id}': header values are strings."
                    )));
                };
                headers.insert(name, value);
            }
        }
        Some(_) => {
            return Err(bad_request(&format!(
                "The headers of request '{id}' must be an object."
            )));
        }
    }
    let body = match request.get("body") {
        None | Some(Value::Null) => None,
        Some(body) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_ascii_lowercase);
            match content_type {
                None => {
                    return Err(bad_request(&format!(
                        "Request '{id}' has a body but no Content-Type header."
                    )));
                }
                Some(t) if t.starts_with("application/json") => Some(Bytes::from(body.to_string())),
                Some(_) => {
                    return Err(bad_request(&format!(
                        "The simulator does not emulate base64 bodies (request '{id}')."
                    )));
                }
            }
        }
    };
    let depends_on = match request.get("dependsOn") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(deps)) => {
            let mut ids = Vec::new();
            for dep in deps {
                let Some(dep) = dep.as_str() else {
                    return Err(bad_request(&format!(
                        "dependsOn of request '{id}' must hold request ids."
                    )));
                };
                if !earlier.iter().any(|e| e.id.eq_ignore_ascii_case(dep)) {
                    return Err(bad_request(&format!(
                        "Request '{id}' depends on '{dep}', which is not an earlier request of the batch."
                    )));
                }
                ids.push(dep.to_owned());
            }
            ids
        }
        Some(_) => {
            return Err(bad_request(&format!(
                "dependsOn of request '{id}' must be an array."
            )));
        }
    };
    Ok(Inner {
        id,
        method,
        url: url.to_owned(),
        headers,
        body,
        depends_on,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::sim::FailRule;

    const TOKEN: &str = "sim.batch-test-token";

    fn sim() -> Sim {
        let sim = Sim::new();
        sim.state()
            .graph
            .insert_token(TOKEN, Duration::from_secs(3600));
        sim
    }

    async fn post(sim: &Sim, body: Value) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(Method::POST)
            .uri("/v1.0/$batch")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .expect("a request");
        let response = sim.router().oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    fn get(id: &str, url: &str) -> Value {
        json!({ "id": id, "method": "GET", "url": url })
    }

    fn by_id<'a>(body: &'a Value, id: &str) -> &'a Value {
        body["responses"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["id"] == id))
            .unwrap_or_else(|| panic!("no response {id} in {body}"))
    }

    fn ids(body: &Value) -> Vec<String> {
        body["responses"]
            .as_array()
            .map(|r| {
                r.iter()
                    .map(|r| r["id"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn twenty_one_requests_refuse_the_whole_batch() {
        let sim = sim();
        let requests: Vec<Value> = (0..21).map(|i| get(&i.to_string(), "/users")).collect();
        let (status, body) = post(&sim, json!({ "requests": requests })).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["code"], "Request_BadRequest");
        assert_eq!(sim.state().counters.graph_batch_inner_requests, 0);
        let requests: Vec<Value> = (0..20).map(|i| get(&i.to_string(), "/users")).collect();
        let (status, _) = post(&sim, json!({ "requests": requests })).await;
        assert_eq!(status, StatusCode::OK, "twenty are allowed");
        assert_eq!(sim.state().counters.graph_batch_inner_requests, 20);
    }

    #[tokio::test]
    async fn duplicate_ids_in_any_case_refuse_the_whole_batch() {
        let sim = sim();
        let (status, body) = post(
            &sim,
            json!({ "requests": [get("a", "/users"), get("A", "/users")] }),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let (status, body) = post(
            &sim,
            json!({ "requests": [{"method": "GET", "url": "/users"}] }),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "an id is required: {body}");
        assert_eq!(sim.state().counters.graph_batches, 0);
    }

    #[tokio::test]
    async fn absolute_urls_and_unknown_methods_refuse_the_whole_batch() {
        let sim = sim();
        for bad in [
            get("1", "https://graph.microsoft.com/v1.0/users"),
            get("1", "users"),
            get("1", "//evil.example/users"),
            json!({ "id": "1", "method": "TRACE", "url": "/users" }),
            json!({ "id": "1", "method": "POST", "url": "/invitations", "body": {} }),
            get("1", "/$batch"),
        ] {
            let (status, body) = post(
                &sim,
                json!({ "requests": [get("0", "/users"), bad.clone()] }),
            )
            .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        }
        assert_eq!(sim.state().counters.graph_batch_inner_requests, 0);
    }

    #[tokio::test]
    async fn a_failed_dependency_answers_424_and_the_outer_status_stays_200() {
        let sim = sim();
        let id = sim.state().graph.add_guest("ana@partner.example", "Ana");
        let (status, body) = post(
            &sim,
            json!({ "requests": [
                get("1", "/users/no-such-user"),
                { "id": "2", "method": "GET", "url": format!("/users/{id}"), "dependsOn": ["1"] },
                get("3", &format!("/users/{id}")),
                { "id": "4", "method": "GET", "url": "/users", "dependsOn": ["3"] },
            ] }),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(by_id(&body, "1")["status"], 404);
        assert_eq!(
            by_id(&body, "1")["body"]["error"]["code"],
            "Request_ResourceNotFound"
        );
        assert_eq!(by_id(&body, "2")["status"], 424);
        assert_eq!(
            by_id(&body, "2")["body"]["error"]["code"],
            "FailedDependency"
        );
        assert_eq!(by_id(&body, "3")["status"], 200);
        assert_eq!(by_id(&body, "3")["body"]["id"], json!(id));
        assert_eq!(by_id(&body, "4")["status"], 200, "its dependency succeeded");
        // A dependency on a request that is not earlier in the batch is a malformed batch.
        let (status, _) = post(
            &sim,
            json!({ "requests": [
                { "id": "1", "method": "GET", "url": "/users", "dependsOn": ["2"] },
                get("2", "/users"),
            ] }),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn responses_do_not_come_in_request_order() {
        let sim = sim();
        let requests: Vec<Value> = ["a", "b", "c", "d"]
            .iter()
            .map(|i| get(i, "/users"))
            .collect();
        let (status, body) = post(&sim, json!({ "requests": requests })).await;
        assert_eq!(status, StatusCode::OK);
        let order = ids(&body);
        assert_eq!(order.len(), 4);
        assert_ne!(order, ["a", "b", "c", "d"], "{body}");
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, ["a", "b", "c", "d"], "every request answered once");
    }

    #[tokio::test]
    async fn inner_requests_are_throttled_one_by_one_with_their_own_retry_after() {
        let sim = sim();
        sim.state().graph_batch_faults = BatchFaults {
            throttle_inner: 2,
            inner_retry_after: Some("7".into()),
        };
        let requests: Vec<Value> = (1..=3).map(|i| get(&i.to_string(), "/users")).collect();
        let (status, body) = post(&sim, json!({ "requests": requests })).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "throttling inside does not fail the batch"
        );
        for id in ["1", "2"] {
            assert_eq!(by_id(&body, id)["status"], 429, "{body}");
            assert_eq!(by_id(&body, id)["headers"]["Retry-After"], "7");
        }
        assert_eq!(by_id(&body, "3")["status"], 200);
        let counters = sim.state().counters.clone();
        assert_eq!(counters.throttled, 2);
        assert_eq!(
            counters.graph_requests, 1,
            "inner requests are not on the wire"
        );
        assert_eq!(counters.graph_batch_inner_requests, 3);
    }

    #[tokio::test]
    async fn inner_requests_follow_the_direct_rules() {
        let sim = sim();
        sim.state().graph_faults.fail.push(FailRule {
            method: Some("GET".into()),
            path_prefix: "/v1.0/users/".into(),
            query_contains: None,
            status: 500,
            times: Some(1),
            after_processing: false,
        });
        let (status, body) = post(
            &sim,
            json!({ "requests": [
                get("fault", "/users/x"),
                get("advanced", "/users?$filter=endsWith(mail,'@partner.example')"),
                { "id": "eventual", "method": "GET",
                  "url": "/users?$filter=endsWith(mail,'@partner.example')&$orderby=displayName",
                  "headers": { "ConsistencyLevel": "eventual" } },
            ] }),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            by_id(&body, "fault")["status"],
            500,
            "fault rules match inner requests"
        );
        assert_eq!(by_id(&body, "advanced")["status"], 400);
        assert_eq!(
            by_id(&body, "advanced")["body"]["error"]["code"],
            "Request_UnsupportedQuery"
        );
        // With the header given in the inner request, the orderby complaint is the one about
        // emulation, not the one about the missing header.
        let message = by_id(&body, "eventual")["body"]["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        assert!(!message.contains("needs ConsistencyLevel"), "{message}");
        // Without a valid token the batch itself is refused.
        let request = Request::builder()
            .method(Method::POST)
            .uri("/v1.0/$batch")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                json!({ "requests": [get("1", "/users")] }).to_string(),
            ))
            .expect("a request");
        let response = sim.router().oneshot(request).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
}
