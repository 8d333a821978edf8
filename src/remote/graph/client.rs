//! The Microsoft Graph HTTP client: [`GraphClient`] implements [`super::Tenant`] over the
//! shared HTTP edge ([`crate::remote::http::Edge`]), following the documented behaviour of
//! Graph (`docs/specs/microsoft-graph.md`): `$select` always, `$top=999`, `@odata.nextLink`
//! followed verbatim (never to another origin: the bearer token stays with Graph), OData
//! literals escaped, `POST /invitations` never retried blindly, writes paced under the
//! documented write quota (the edge's [`Pacer`]), a read that fails part-way failing as a whole. Who holds which address is [`crate::remote::identity`]'s business; what an answer's body
//! says is [`super::wire`]'s (every body is read there, without I/O).
//!
//! Batched lookups ([`Tenant::find_by_emails`], [`Tenant::get_users`]) send the URLs of the
//! single lookups, [`MAX_BATCH_REQUESTS`] to a `POST /$batch` (§4), correlate the answers by
//! `id` (never by position), check every inner status (a failed inner request fails the whole
//! lookup; only a `404` of a read by id means "not found"), and send throttled (`429`) or
//! failed (`5xx`) inner requests again after the longest inner `Retry-After`, within the
//! edge's [`RetryPolicy`].
//!
//! Must not: read the configuration (it takes [`GraphSettings`]), retry or time out on its own
//! (the edge does), or decide what to change (the plan does).

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use url::Url;

use super::credential::CredentialSettings;
use super::error::GraphError;
use super::token::{self, TokenSource};
use super::wire::{self, DeltaEnd, Inner};
use super::{
    DeltaRound, DirectoryUser, GraphSettings, Invitation, Invited, MAX_BATCH_REQUESTS, Restored,
    Tenant, USER_SELECT,
};
use crate::remote::http::{self, Edge, Idempotency, Request, RetryPolicy};
use crate::remote::pace::Pacer;
use crate::remote::{Credential, identity};

/// The default bound on pages of one listing (999 users each: about ten million users).
pub const DEFAULT_MAX_PAGES: usize = 10_000;

/// The HTTP implementation of [`super::Tenant`].
#[derive(Debug, Clone)]
pub struct GraphClient {
    edge: Edge,
    /// `{graphEndpoint}/v1.0/`.
    root: Url,
    token: Arc<dyn TokenSource>,
    invite_redirect_url: String,
    max_pages: usize,
    progress: Option<crate::remote::ReadProgress>,
}

/// The edge of a Graph client: `settings.concurrency` requests in flight, retrying by `retry`.
pub fn edge(settings: &GraphSettings, retry: RetryPolicy) -> Result<Edge, GraphError> {
    Edge::new(retry, settings.concurrency).map_err(GraphError::Client)
}

/// Refuses plain `http://` except on loopback (design §5).
fn check_scheme(url: &Url, key: &str) -> Result<(), GraphError> {
    http::check_url(url).map_err(|reason| GraphError::Config {
        detail: format!("{key} `{url}`: {reason}"),
    })
}

impl GraphClient {
    /// A client for the tenant of `settings`, authenticating with `token`, sending through
    /// `edge` (see [`edge`]; share it with the token source). The client's writes are paced
    /// at `settings.write_rate` by a pacer of its own (the token source's requests are not).
    pub fn new(
        settings: &GraphSettings,
        token: Arc<dyn TokenSource>,
        edge: Edge,
    ) -> Result<GraphClient, GraphError> {
        check_scheme(&settings.graph_endpoint, "tenant.graphEndpoint")?;
        let mut root = settings.graph_endpoint.clone();
        root.set_query(None);
        root.set_fragment(None);
        root.path_segments_mut()
            .map_err(|()| GraphError::Config {
                detail: format!(
                    "tenant.graphEndpoint `{}` is not a base URL; use e.g. https://graph.microsoft.com",
                    settings.graph_endpoint
                ),
            })?
            .pop_if_empty()
            .push("v1.0")
            .push("");
        Ok(GraphClient {
            // Writes are paced by one bucket shared by the client's clones; the token source
            // keeps the edge it was given, unpaced.
            edge: edge.with_pacer(Pacer::new(settings.write_rate)),
            root,
            token,
            invite_redirect_url: settings.invite_redirect_url.clone(),
            max_pages: DEFAULT_MAX_PAGES,
            progress: None,
        })
    }

    /// A client that authenticates with the client secret `secret` through a
    /// [`ClientSecretCredential`](super::token::ClientSecretCredential) sharing the client's
    /// edge (a thin wrapper over [`GraphClient::with_credential`]).
    pub fn with_client_secret(
        settings: &GraphSettings,
        secret: Credential,
        retry: RetryPolicy,
    ) -> Result<GraphClient, GraphError> {
        Self::with_credential(settings, CredentialSettings::ClientSecret { secret }, retry)
    }

    /// A client that signs in with `credential` (any kind, [`token::from_settings`]), its
    /// token requests sharing the client's edge (a managed identity's go through an edge of
    /// their own, without proxy). The scope names Graph as a resource (`settings.resource`, its
    /// identifier in the configured cloud), not the URL requests go to: a `graphEndpoint`
    /// override (a proxy, a test double) does not change which resource the token is for.
    pub fn with_credential(
        settings: &GraphSettings,
        credential: CredentialSettings,
        retry: RetryPolicy,
    ) -> Result<GraphClient, GraphError> {
        check_scheme(&settings.graph_endpoint, "tenant.graphEndpoint")?;
        let edge = edge(settings, retry)?;
        let source = token::from_settings(edge.clone(), settings, credential)?;
        Self::new(settings, source, edge)
    }

    /// The token source the client signs in with (for `guestops doctor` and for sharing).
    pub fn token_source(&self) -> Arc<dyn TokenSource> {
        Arc::clone(&self.token)
    }

    /// Changes the bound on pages of one listing (default [`DEFAULT_MAX_PAGES`]).
    pub fn with_max_pages(mut self, pages: usize) -> Self {
        self.max_pages = pages.max(1);
        self
    }

    /// Reports every page of the listings and delta rounds to `progress` (a terminal's
    /// progress line).
    pub fn with_progress(mut self, progress: crate::remote::ReadProgress) -> Self {
        self.progress = Some(progress);
        self
    }

    /// `{graphEndpoint}/v1.0/`.
    pub fn root(&self) -> &Url {
        &self.root
    }

    /// A URL under the version root: `path` segments (each encoded) and a raw, already-encoded
    /// query.
    fn url(&self, segments: &[&str], query: Option<&str>) -> Url {
        let mut url = self.root.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url.set_query(query);
        url
    }

    /// Sends one logical request through the edge (bounded concurrency, the shared retry
    /// policy): bearer token, `client-request-id`, one token refresh after a `401`. Success statuses are returned;
    /// error statuses become [`GraphError`] unless `accept` lets them through.
    async fn execute(
        &self,
        operation: &str,
        method: Method,
        url: &Url,
        body: Option<&Value>,
        idempotency: Idempotency,
        accept: &[StatusCode],
    ) -> Result<(StatusCode, HeaderMap, Vec<u8>), GraphError> {
        let client_request_id = uuid::Uuid::new_v4().to_string();
        let mut refreshed = false;
        loop {
            let token = self.token.token().await?;
            let mut request = Request::new(method.clone(), url.clone())
                .bearer(&token)
                .map_err(|_| GraphError::Config {
                    detail: "the access token cannot be sent in a header".into(),
                })?
                .header(
                    HeaderName::from_static("client-request-id"),
                    &client_request_id,
                );
            if let Some(body) = body {
                request = request.json(body);
            }
            // This client batches reads only: a `$batch` takes no write slot of the pacer.
            if url.path().ends_with("/$batch") {
                request = request.not_a_write();
            }
            let reply = self
                .edge
                .send(&request, idempotency)
                .await
                .map_err(|err| GraphError::transport(operation, err))?;
            let status = reply.status;
            let headers = reply.headers;
            let retry_after = reply.retry_after;
            let bytes = reply.body;
            if status.is_success() || accept.contains(&status) {
                return Ok((status, headers, bytes));
            }
            let request_id = header_request_id(&headers);
            if status == StatusCode::TOO_MANY_REQUESTS {
                return Err(GraphError::Throttled {
                    operation: operation.to_owned(),
                    retry_after,
                    request_id,
                });
            }
            let error = wire::parse_error(&bytes);
            if status == StatusCode::UNAUTHORIZED && !refreshed {
                // An expired or revoked token: fetch a fresh one, once.
                refreshed = true;
                self.token.invalidate();
                tracing::debug!(operation, "Graph refused the token; fetching a new one");
                continue;
            }
            return Err(GraphError::Api {
                operation: operation.to_owned(),
                status: status.as_u16(),
                code: error.code,
                message: error.message,
                request_id: error.request_id.or(request_id),
            });
        }
    }

    /// Reads every page of a user listing starting at `first`, following `@odata.nextLink`
    /// verbatim, failing as a whole if any page fails.
    async fn list_all(
        &self,
        operation: &str,
        first: Url,
    ) -> Result<Vec<DirectoryUser>, GraphError> {
        let mut users = Vec::new();
        let mut next = Some(first);
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            let (bytes, request_id) = self.get_page(operation, &url, pages).await?;
            let page = wire::parse_user_page(
                &bytes,
                &format!("page {pages}"),
                &self.root,
                operation,
                request_id.as_deref(),
            )?;
            users.extend(page.users);
            next = page.next;
            self.report(operation, pages, users.len(), next.is_none());
        }
        tracing::debug!(operation, pages, users = users.len(), "listing complete");
        Ok(users)
    }

    /// Reports one page of a complete read to [`Self::with_progress`]'s hook.
    fn report(&self, operation: &str, pages: usize, items: usize, done: bool) {
        if let Some(progress) = &self.progress {
            progress.page(crate::remote::ReadPage {
                what: operation,
                pages,
                items,
                done,
            });
        }
    }

    /// GETs the `number`th page of a collection: its body and `request-id`; past
    /// [`Self::with_max_pages`] pages the read fails instead.
    async fn get_page(
        &self,
        operation: &str,
        url: &Url,
        number: usize,
    ) -> Result<(Vec<u8>, Option<String>), GraphError> {
        if number > self.max_pages {
            return Err(GraphError::TooManyPages {
                operation: operation.to_owned(),
                pages: number - 1,
            });
        }
        let (_, headers, bytes) = self
            .execute(
                operation,
                Method::GET,
                url,
                None,
                Idempotency::Idempotent,
                &[],
            )
            .await?;
        Ok((bytes, header_request_id(&headers)))
    }

    /// Reads every page of a delta round starting at `first`, up to the page with the
    /// `@odata.deltaLink`; fails as a whole if any page fails, if a page has neither link, or
    /// if a link leaves the Graph origin ([`wire::parse_delta_page`]).
    async fn delta_all(&self, operation: &str, first: Url) -> Result<DeltaRound, GraphError> {
        let mut changes = Vec::new();
        let mut url = first;
        let mut pages = 0;
        loop {
            pages += 1;
            let (bytes, request_id) = self.get_page(operation, &url, pages).await?;
            let page = wire::parse_delta_page(
                &bytes,
                pages,
                &self.root,
                operation,
                request_id.as_deref(),
            )?;
            changes.extend(page.changes);
            let done = matches!(page.end, DeltaEnd::Delta(_));
            self.report(operation, pages, changes.len(), done);
            match page.end {
                DeltaEnd::Next(next) => url = next,
                DeltaEnd::Delta(delta_link) => {
                    tracing::debug!(
                        operation,
                        pages,
                        entries = changes.len(),
                        "delta round complete"
                    );
                    return Ok(DeltaRound {
                        changes,
                        delta_link,
                        pages,
                    });
                }
            }
        }
    }

    /// The URL [`Tenant::find_by_email`] reads first for `email` (trimmed).
    fn email_lookup_url(&self, email: &str) -> Url {
        let filter = email_filter(email);
        let query = encode_query(&[
            ("$filter", &filter),
            ("$select", USER_SELECT),
            ("$top", "999"),
        ]);
        self.url(&["users"], Some(&query))
    }

    /// The URL [`Tenant::find_deleted_by_emails`] reads for `email`: deleted items cast to
    /// `user`, filtered by `mail` and `otherMails` ([`deleted_filter`]).
    fn deleted_lookup_url(&self, email: &str) -> Url {
        let filter = deleted_filter(email);
        let query = encode_query(&[
            ("$filter", &filter),
            ("$select", USER_SELECT),
            ("$top", "999"),
        ]);
        self.url(
            &["directory", "deletedItems", "microsoft.graph.user"],
            Some(&query),
        )
    }

    /// The URL [`Tenant::get_user`] reads for `id`.
    fn user_url(&self, id: &str) -> Url {
        let query = encode_query(&[("$select", USER_SELECT)]);
        self.url(&["users", id], Some(&query))
    }

    /// `url` relative to the version root, as `$batch` wants it (`/users?…`).
    fn relative(&self, url: &Url) -> String {
        let rest = url.as_str().strip_prefix(self.root.as_str()).unwrap_or("");
        format!("/{rest}")
    }

    /// GETs every URL of `urls` through `POST /$batch`es of at most [`MAX_BATCH_REQUESTS`]
    /// (sent together; the edge bounds how many are in flight) and returns one inner answer
    /// per URL, in the order of `urls`. Inner answers with a retryable status (`429`, and the
    /// `5xx` the edge retries for reads) are sent again in a later batch, after the longest
    /// inner `Retry-After` (or a backoff), within the edge's [`RetryPolicy`]; past it the
    /// failed answer is returned for the caller to turn into an error.
    async fn batch_get(&self, operation: &str, urls: &[Url]) -> Result<Vec<Inner>, GraphError> {
        let chunks = urls
            .chunks(MAX_BATCH_REQUESTS)
            .map(|chunk| self.batch_get_chunk(operation, chunk));
        let answers = futures::future::try_join_all(chunks).await?;
        Ok(answers.into_iter().flatten().collect())
    }

    /// [`Self::batch_get`] of at most [`MAX_BATCH_REQUESTS`] URLs.
    async fn batch_get_chunk(
        &self,
        operation: &str,
        urls: &[Url],
    ) -> Result<Vec<Inner>, GraphError> {
        let policy = self.edge.retry().clone();
        let mut answers: Vec<Option<Inner>> = (0..urls.len()).map(|_| None).collect();
        let mut pending: Vec<usize> = (0..urls.len()).collect();
        let mut backoff = policy.base_delay;
        let mut waited = Duration::ZERO;
        let mut retries = 0;
        while !pending.is_empty() {
            let replies = self.batch_once(operation, urls, &pending).await?;
            let mut again = Vec::new();
            let mut longest: Option<Duration> = None;
            for (index, inner) in replies {
                if http::is_retryable(inner.status, Idempotency::Idempotent) {
                    again.push(index);
                    if inner.status == StatusCode::TOO_MANY_REQUESTS
                        && let Some(after) = inner.retry_after
                    {
                        longest = Some(longest.map_or(after, |l| l.max(after)));
                    }
                }
                answers[index] = Some(inner);
            }
            if again.is_empty() {
                break;
            }
            let delay = longest.unwrap_or(backoff);
            if retries >= policy.max_retries || waited + delay > policy.max_total_wait {
                tracing::debug!(
                    operation,
                    failed = again.len(),
                    "inner batch requests still failing beyond the retry budget"
                );
                break;
            }
            tracing::debug!(
                operation,
                retrying = again.len(),
                delay_ms = delay.as_millis() as u64,
                "retrying throttled or failed inner batch requests"
            );
            tokio::time::sleep(delay).await;
            waited += delay;
            retries += 1;
            backoff = (backoff * 2).min(policy.max_delay);
            pending = again;
        }
        answers
            .into_iter()
            .map(|a| {
                a.ok_or_else(|| GraphError::Malformed {
                    operation: operation.to_owned(),
                    detail: "a batch request was never answered".into(),
                    request_id: None,
                })
            })
            .collect()
    }

    /// One `POST /$batch` of the URLs at `pending` (ids are their indexes); every id must be
    /// answered exactly once, in any order.
    async fn batch_once(
        &self,
        operation: &str,
        urls: &[Url],
        pending: &[usize],
    ) -> Result<Vec<(usize, Inner)>, GraphError> {
        let requests: Vec<Value> = pending
            .iter()
            .map(|&i| json!({ "id": i.to_string(), "method": "GET", "url": self.relative(&urls[i]) }))
            .collect();
        let body = json!({ "requests": requests });
        let url = self.url(&["$batch"], None);
        // A batch of reads changes nothing: the edge may resend it.
        let (_, headers, bytes) = self
            .execute(
                operation,
                Method::POST,
                &url,
                Some(&body),
                Idempotency::Idempotent,
                &[],
            )
            .await?;
        wire::parse_batch(
            &bytes,
            pending,
            std::time::SystemTime::now(),
            operation,
            header_request_id(&headers).as_deref(),
        )
    }

    /// Looks every address of `emails` up through [`Self::batch_get`], the URL of each made by
    /// `url_of` (`what` names the collection in errors): the users holding any of them (matched
    /// again with [`identity::holds_address`]), all of them or an error. A failed inner lookup
    /// fails the whole call (fail closed: never "not found").
    async fn lookup_batched(
        &self,
        emails: &[String],
        what: &str,
        url_of: impl Fn(&str) -> Url,
    ) -> Result<Vec<DirectoryUser>, GraphError> {
        let emails: Vec<&str> = emails.iter().map(|e| e.trim()).collect();
        let urls: Vec<Url> = emails.iter().map(|e| url_of(e)).collect();
        let batch_operation = format!("look up the {what} holding {} addresses", emails.len());
        let answers = self.batch_get(&batch_operation, &urls).await?;
        let mut users = Vec::new();
        for (email, inner) in emails.into_iter().zip(answers) {
            let operation = format!("look up {what} holding {email}");
            if inner.status != StatusCode::OK {
                return Err(wire::inner_error(&operation, &inner));
            }
            let page = wire::parse_user_page(
                &inner.body_bytes(),
                "the batched lookup",
                &self.root,
                &operation,
                inner.request_id.as_deref(),
            )?;
            let mut found = page.users;
            if let Some(next) = page.next {
                // Further pages are read directly, following the nextLink verbatim.
                found.extend(self.list_all(&operation, next).await?);
            }
            users.extend(
                found
                    .into_iter()
                    .filter(|u| identity::holds_address(u, email)),
            );
        }
        Ok(users)
    }
}

/// Characters encoded in a query value: everything but unreserved characters and the OData
/// punctuation that is safe in a query (`'`, `(`, `)`, `,`, `:`, `/`, `$`, `@`). `#`, `&`, `+`,
/// `=`, `%` and spaces are always encoded.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b',')
    .remove(b':')
    .remove(b'/')
    .remove(b'$')
    .remove(b'@');

/// Builds an encoded query string from OData options.
pub fn encode_query(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                percent_encoding::utf8_percent_encode(k, QUERY_VALUE),
                percent_encoding::utf8_percent_encode(v, QUERY_VALUE)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// An OData string literal: quoted, with `'` doubled.
pub fn odata_string(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The `$filter` that finds every user holding `email` by `mail`, `otherMails`, UPN or the
/// guest UPN form `local_domain#EXT#…` ([`identity::guest_upn_local_part`]), using only filters
/// that work without advanced queries. Directory `eq` is case-insensitive; the results are
/// matched again with [`identity::holds_address`].
pub fn email_filter(email: &str) -> String {
    let literal = odata_string(email);
    let mut filter = format!(
        "mail eq {literal} or otherMails/any(x:x eq {literal}) or userPrincipalName eq {literal}"
    );
    if email.contains('@') {
        let guest_prefix = format!("{}#EXT#", identity::guest_upn_local_part(email));
        filter.push_str(&format!(
            " or startsWith(userPrincipalName,{})",
            odata_string(&guest_prefix)
        ));
    }
    filter
}

/// The `$filter` that finds the soft-deleted users holding `email` by `mail` or `otherMails`.
/// The list page of deleted items says it takes the query options of the cast's resource
/// (`user`), so these are the filters of [`email_filter`] that work without advanced queries;
/// the UPN terms are left out because a deleted user's UPN carries its object id as a prefix
/// (the `Get-EntraDeletedUser` example), so they would never match.
pub fn deleted_filter(email: &str) -> String {
    let literal = odata_string(email);
    format!("mail eq {literal} or otherMails/any(x:x eq {literal})")
}

fn header_request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("request-id")
        .and_then(|v: &HeaderValue| v.to_str().ok())
        .map(str::to_owned)
}

impl Tenant for GraphClient {
    async fn list_guests(&self) -> Result<Vec<DirectoryUser>, GraphError> {
        let query = encode_query(&[
            ("$filter", "userType eq 'Guest'"),
            ("$select", USER_SELECT),
            ("$top", "999"),
        ]);
        let url = self.url(&["users"], Some(&query));
        self.list_all("list the tenant's guests", url).await
    }

    async fn find_by_email(&self, email: &str) -> Result<Vec<DirectoryUser>, GraphError> {
        let email = email.trim();
        let url = self.email_lookup_url(email);
        let operation = format!("look up users holding {email}");
        let users = self.list_all(&operation, url).await?;
        Ok(users
            .into_iter()
            .filter(|u| identity::holds_address(u, email))
            .collect())
    }

    async fn get_user(&self, id: &str) -> Result<Option<DirectoryUser>, GraphError> {
        let url = self.user_url(id);
        let operation = format!("read user {id}");
        let (status, headers, bytes) = self
            .execute(
                &operation,
                Method::GET,
                &url,
                None,
                Idempotency::Idempotent,
                &[StatusCode::NOT_FOUND],
            )
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let user = wire::parse_user(
            &bytes,
            "user object",
            &operation,
            header_request_id(&headers).as_deref(),
        )?;
        Ok(Some(user))
    }

    async fn find_by_emails(&self, emails: &[String]) -> Result<Vec<DirectoryUser>, GraphError> {
        self.lookup_batched(emails, "users", |email| self.email_lookup_url(email))
            .await
    }

    async fn find_deleted_by_emails(
        &self,
        emails: &[String],
    ) -> Result<Vec<DirectoryUser>, GraphError> {
        self.lookup_batched(emails, "deleted users", |email| {
            self.deleted_lookup_url(email)
        })
        .await
    }

    async fn restore_user(&self, id: &str) -> Result<Restored, GraphError> {
        let url = self.url(&["directory", "deletedItems", id, "restore"], None);
        let operation = format!("restore deleted user {id}");
        // A restore that timed out may have happened: not resent blindly (the next
        // reconcile observes where the user is).
        let (_, headers, bytes) = self
            .execute(
                &operation,
                Method::POST,
                &url,
                None,
                Idempotency::NotIdempotent,
                &[],
            )
            .await?;
        let request_id = header_request_id(&headers);
        let user = wire::parse_user(
            &bytes,
            "directory object",
            &operation,
            request_id.as_deref(),
        )?;
        if user.id != id {
            return Err(GraphError::Malformed {
                operation,
                detail: format!("the restored object is {}, not {id}", user.id),
                request_id,
            });
        }
        Ok(Restored {
            user_id: user.id,
            request_id,
        })
    }
    async fn get_users(&self, ids: &[String]) -> Result<Vec<Option<DirectoryUser>>, GraphError> {
        let urls: Vec<Url> = ids.iter().map(|id| self.user_url(id)).collect();
        let batch_operation = format!("read {} users", ids.len());
        let answers = self.batch_get(&batch_operation, &urls).await?;
        let mut users = Vec::with_capacity(ids.len());
        for (id, inner) in ids.iter().zip(answers) {
            let operation = format!("read user {id}");
            match inner.status {
                StatusCode::OK => {
                    let user = wire::parse_user(
                        &inner.body_bytes(),
                        "user object",
                        &operation,
                        inner.request_id.as_deref(),
                    )?;
                    users.push(Some(user));
                }
                // The only answer that means "no such user" (or not replicated yet), as for
                // a direct read.
                StatusCode::NOT_FOUND => users.push(None),
                _ => return Err(wire::inner_error(&operation, &inner)),
            }
        }
        Ok(users)
    }

    async fn delta(&self, from: Option<&str>) -> Result<DeltaRound, GraphError> {
        match from {
            None => {
                let query = encode_query(&[("$select", USER_SELECT)]);
                let url = self.url(&["users", "delta"], Some(&query));
                self.delta_all("enumerate the tenant's users (delta query)", url)
                    .await
            }
            Some(link) => {
                let operation = "read the tenant's changes (delta query)";
                let url = wire::check_link(&self.root, "@odata.deltaLink", link, operation, None)?;
                self.delta_all(operation, url).await
            }
        }
    }

    async fn invite(&self, invitation: &Invitation) -> Result<Invited, GraphError> {
        let mut body = json!({
            "invitedUserEmailAddress": invitation.email,
            "invitedUserDisplayName": invitation.display_name,
            "inviteRedirectUrl": self.invite_redirect_url,
            "sendInvitationMessage": invitation.send_email,
        });
        if let Some(message) = &invitation.message {
            body["invitedUserMessageInfo"] = json!({ "customizedMessageBody": message });
        }
        let url = self.url(&["invitations"], None);
        let operation = format!("invite {}", invitation.email);
        let (_, headers, bytes) = self
            .execute(
                &operation,
                Method::POST,
                &url,
                Some(&body),
                Idempotency::NotIdempotent,
                &[],
            )
            .await?;
        wire::parse_invitation(&bytes, &operation, header_request_id(&headers).as_deref())
    }

    async fn set_account_enabled(&self, id: &str, enabled: bool) -> Result<(), GraphError> {
        let url = self.url(&["users", id], None);
        let operation = format!("{} user {id}", if enabled { "enable" } else { "disable" });
        self.execute(
            &operation,
            Method::PATCH,
            &url,
            Some(&json!({ "accountEnabled": enabled })),
            Idempotency::Idempotent,
            &[],
        )
        .await?;
        Ok(())
    }

    async fn delete_user(&self, id: &str) -> Result<bool, GraphError> {
        let url = self.url(&["users", id], None);
        let operation = format!("delete user {id}");
        let (status, _, _) = self
            .execute(
                &operation,
                Method::DELETE,
                &url,
                None,
                Idempotency::Idempotent,
                &[StatusCode::NOT_FOUND],
            )
            .await?;
        Ok(status != StatusCode::NOT_FOUND)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_escapes_quotes_and_encodes_hash() {
        let filter = email_filter("o'brien@partner.example");
        assert!(filter.contains("mail eq 'o''brien@partner.example'"));
        assert!(filter.contains("startsWith(userPrincipalName,'o''brien_partner.example#EXT#')"));
        let query = encode_query(&[("$filter", &filter)]);
        assert!(query.contains("%23EXT%23"), "{query}");
        assert!(!query.contains('#'));
        assert!(!query.contains(' '));
        assert!(encode_query(&[("$filter", "mail eq 'a+b@x.example'")]).contains("a%2Bb"));
    }
}
