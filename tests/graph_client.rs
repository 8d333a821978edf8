//! The Graph client against the emulated tenant on loopback: paging, lookups, invitations,
//! tokens, throttling and failures, and the simulator's documented quirks.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use guestops::config::{SecretSource, TenantConfig};
use guestops::remote::Credential;
use guestops::remote::graph::token::{ClientSecretCredential, TokenProblem};
use guestops::remote::graph::{GraphClient, GraphError, Invitation, Tenant};
use guestops::remote::http::RetryPolicy;
use guestops::sim::graph::{
    SIM_CLIENT_ID, SIM_CLIENT_SECRET, SIM_TENANT_DOMAIN, SIM_TENANT_ID, SimCredentials,
};
use guestops::sim::{FailRule, Sim};
use secrecy::SecretString;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use url::Url;

struct Env {
    sim: Sim,
    base: Url,
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
    Env {
        sim,
        base,
        _shutdown: shutdown.drop_guard(),
    }
}

fn retry() -> RetryPolicy {
    RetryPolicy {
        max_retries: 5,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        max_total_wait: Duration::from_secs(2),
        timeout: Duration::from_secs(20),
    }
}

fn tenant(base: &Url) -> TenantConfig {
    TenantConfig {
        tenant_id: SIM_TENANT_DOMAIN.into(),
        client_id: SIM_CLIENT_ID.into(),
        client_secret: SecretSource::Env("UNUSED".into()),
        credential: guestops::config::CredentialConfig::ClientSecret,
        authority_host: base.clone(),
        graph_endpoint: base.clone(),
        invite_redirect_url: "https://admin.powerembedded.com.br".into(),
        concurrency: 4,
        cloud: Default::default(),
        delta_query: true,
        full_resync_interval: std::time::Duration::from_secs(24 * 3600),
        replication_grace: guestops::reconcile::plan::DEFAULT_REPLICATION_GRACE,
    }
}

impl Env {
    fn client(&self) -> GraphClient {
        self.client_with(&tenant(&self.base), SIM_CLIENT_SECRET)
    }

    fn client_with(&self, tenant: &TenantConfig, secret: &str) -> GraphClient {
        GraphClient::with_client_secret(
            &tenant.graph_settings(),
            Credential::new(SecretString::from(secret.to_owned()), "the test's secret"),
            retry(),
        )
        .expect("a valid client configuration")
    }

    /// A raw access token, for requests that bypass the client.
    async fn raw_token(&self) -> String {
        let url = self
            .base
            .join(&format!("{SIM_TENANT_ID}/oauth2/v2.0/token"))
            .expect("token URL");
        let scope = "https://graph.microsoft.com/.default";
        let body: Value = reqwest::Client::new()
            .post(url)
            .form(&[
                ("client_id", SIM_CLIENT_ID),
                ("client_secret", SIM_CLIENT_SECRET),
                ("scope", scope),
                ("grant_type", "client_credentials"),
            ])
            .send()
            .await
            .expect("token request")
            .json()
            .await
            .expect("token JSON");
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// `GET {base}v1.0/{path_and_query}` with a valid token; status and JSON body.
    async fn raw_get(&self, path_and_query: &str) -> (u16, Value) {
        let token = self.raw_token().await;
        let url = format!("{}v1.0/{path_and_query}", self.base);
        let response = reqwest::Client::new()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .expect("GET");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

fn invitation(email: &str) -> Invitation {
    Invitation {
        email: email.into(),
        display_name: "Someone".into(),
        send_email: true,
        message: Some("You now administer the portal.".into()),
    }
}

#[tokio::test]
async fn lists_thousands_of_guests_over_several_pages_and_no_members() {
    let env = start().await;
    {
        let mut state = env.sim.state();
        for i in 0..2500 {
            state
                .graph
                .add_guest(&format!("guest{i}@partner.example"), &format!("Guest {i}"));
        }
        for i in 0..20 {
            state.graph.add_member(
                &format!("member{i}@{SIM_TENANT_DOMAIN}"),
                Some(&format!("member{i}@contoso.example")),
                "Member",
            );
        }
    }
    let guests = env.client().list_guests().await.expect("the full listing");
    assert_eq!(guests.len(), 2500);
    assert!(guests.iter().all(|g| g.is_guest() && g.is_pending()));
    let ids: BTreeSet<_> = guests.iter().map(|g| g.id.clone()).collect();
    assert_eq!(ids.len(), 2500, "no user is listed twice");
    assert!(
        guests
            .iter()
            .all(|g| !g.other_mails.is_empty() && g.creation_type.is_some())
    );
    // 999 per page: three pages.
    assert_eq!(env.sim.state().counters.graph_requests, 3);
}

#[tokio::test]
async fn small_pages_and_an_empty_first_page_are_followed_to_the_end() {
    let env = start().await;
    {
        let mut state = env.sim.state();
        for i in 0..250 {
            state.graph.add_guest(&format!("g{i}@partner.example"), "G");
        }
        state.graph.set_page_size_cap(Some(40));
        state.graph.set_empty_first_page(true);
    }
    let guests = env.client().list_guests().await.expect("listing");
    assert_eq!(guests.len(), 250);
    // one empty page, then ceil(250 / 40) = 7 pages.
    assert_eq!(env.sim.state().counters.graph_requests, 8);
}

#[tokio::test]
async fn without_select_graph_returns_only_the_default_properties() {
    let env = start().await;
    env.sim
        .state()
        .graph
        .add_guest("ana@partner.example", "Ana");
    let (status, body) = env.raw_get("users").await;
    assert_eq!(status, 200);
    let user = &body["value"][0];
    assert_eq!(
        user["userPrincipalName"],
        "ana_partner.example#EXT#@sim.onmicrosoft.com"
    );
    assert_eq!(user["mail"], "ana@partner.example");
    assert!(
        user.get("userType").is_none(),
        "userType needs $select: {user}"
    );
    assert!(
        user.get("otherMails").is_none(),
        "otherMails needs $select: {user}"
    );
    assert!(user.get("externalUserState").is_none());

    let (_, body) = env.raw_get("users?$select=userType,otherMails").await;
    let user = &body["value"][0];
    assert_eq!(user["userType"], "Guest");
    assert_eq!(user["otherMails"][0], "ana@partner.example");
    assert!(user.get("mail").is_none());
}

#[tokio::test]
async fn finds_members_and_guests_by_every_address_form() {
    let env = start().await;
    let (member, other_only, guest, upn_only) = {
        let mut state = env.sim.state();
        let dir = &mut state.graph;
        let member = dir.add_member(
            "carla@sim.onmicrosoft.com",
            Some("Carla.Lima@Contoso.example"),
            "Carla",
        );
        let mut other =
            guestops::sim::graph::SimUser::member("dan@sim.onmicrosoft.com", None, "Dan");
        other.other_mails = vec!["dan@vendor.example".into()];
        let other_only = dir.insert_user(other);
        let guest = dir.add_guest("Ana.Silva@Partner.example", "Ana");
        let mut bare =
            guestops::sim::graph::SimUser::guest("eve@partner.example", "Eve", SIM_TENANT_DOMAIN);
        bare.mail = None;
        bare.other_mails.clear();
        bare.proxy_addresses.clear();
        let upn_only = dir.insert_user(bare);
        dir.add_guest("ana.silva@partner.example.org", "Not Ana");
        (member, other_only, guest, upn_only)
    };
    let client = env.client();
    let ids = |users: Vec<guestops::remote::graph::DirectoryUser>| {
        users.into_iter().map(|u| u.id).collect::<Vec<_>>()
    };

    let found = client
        .find_by_email("carla.lima@contoso.example")
        .await
        .expect("lookup");
    assert_eq!(ids(found.clone()), vec![member.clone()]);
    assert!(!found[0].is_guest(), "a member is reported as a member");
    assert_eq!(
        ids(client
            .find_by_email("dan@vendor.example")
            .await
            .expect("lookup")),
        vec![other_only]
    );
    assert_eq!(
        ids(client
            .find_by_email("ANA.SILVA@partner.EXAMPLE")
            .await
            .expect("lookup")),
        vec![guest]
    );
    assert_eq!(
        ids(client
            .find_by_email("eve@partner.example")
            .await
            .expect("lookup")),
        vec![upn_only]
    );
    assert_eq!(
        ids(client
            .find_by_email("carla@sim.onmicrosoft.com")
            .await
            .expect("lookup")),
        vec![member]
    );
    assert!(
        client
            .find_by_email("nobody@partner.example")
            .await
            .expect("lookup")
            .is_empty()
    );
}

#[tokio::test]
async fn an_apostrophe_address_is_invited_and_found() {
    let env = start().await;
    let client = env.client();
    let invited = client
        .invite(&invitation("o'brien@partner.example"))
        .await
        .expect("invitation");
    assert_eq!(
        invited.user_principal_name.as_deref(),
        Some("o'brien_partner.example#EXT#@sim.onmicrosoft.com")
    );
    assert_eq!(invited.status.as_deref(), Some("PendingAcceptance"));
    assert!(invited.request_id.is_some());
    let found = client
        .find_by_email("O'Brien@partner.example")
        .await
        .expect("lookup");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, invited.user_id);
    let user = client
        .get_user(&invited.user_id)
        .await
        .expect("read")
        .expect("the guest exists");
    assert_eq!(user.mail.as_deref(), Some("o'brien@partner.example"));
    let state = env.sim.state();
    let record = &state.graph.invitations()[0];
    assert!(record.send_email);
    assert_eq!(
        record.message.as_deref(),
        Some("You now administer the portal.")
    );
    assert_eq!(record.display_name.as_deref(), Some("Someone"));
}

#[tokio::test]
async fn the_token_is_fetched_once_for_many_calls() {
    let env = start().await;
    env.sim
        .state()
        .graph
        .add_guest("ana@partner.example", "Ana");
    let client = env.client();
    let calls = (0..10).map(|_| client.list_guests());
    for result in futures::future::join_all(calls).await {
        assert_eq!(result.expect("listing").len(), 1);
    }
    client
        .find_by_email("ana@partner.example")
        .await
        .expect("lookup");
    assert_eq!(env.sim.state().counters.token_requests, 1);
}

#[tokio::test]
async fn an_expired_token_is_replaced_after_a_401() {
    let env = start().await;
    let client = env.client();
    client.list_guests().await.expect("listing");
    env.sim.state().graph.expire_tokens();
    client
        .list_guests()
        .await
        .expect("listing with a fresh token");
    assert_eq!(env.sim.state().counters.token_requests, 2);
}

async fn token_error(env: &Env, tenant: &TenantConfig, secret: &str) -> (TokenProblem, String) {
    match env.client_with(tenant, secret).list_guests().await {
        Err(err @ GraphError::Token(_)) => (
            err.token_problem().expect("a token problem"),
            err.to_string(),
        ),
        other => panic!("expected a token error, got {other:?}"),
    }
}

#[tokio::test]
async fn each_token_failure_says_what_to_fix() {
    let env = start().await;
    let good = tenant(&env.base);

    let (problem, message) = token_error(&env, &good, "some-secret-id").await;
    assert_eq!(problem, TokenProblem::WrongSecret);
    assert!(
        message.contains("secret VALUE") && message.contains("AADSTS7000215"),
        "{message}"
    );
    assert!(
        !message.contains("some-secret-id"),
        "the secret is never shown"
    );

    env.sim.state().graph.set_credentials(SimCredentials {
        secret_expired: true,
        ..SimCredentials::default()
    });
    let (problem, message) = token_error(&env, &good, SIM_CLIENT_SECRET).await;
    assert_eq!(problem, TokenProblem::ExpiredSecret);
    assert!(message.contains("create a new secret"), "{message}");

    env.sim.state().graph.set_credentials(SimCredentials {
        app_disabled: true,
        ..SimCredentials::default()
    });
    let (problem, _) = token_error(&env, &good, SIM_CLIENT_SECRET).await;
    assert_eq!(problem, TokenProblem::AppDisabled);
    env.sim
        .state()
        .graph
        .set_credentials(SimCredentials::default());

    let mut unknown_app = good.clone();
    unknown_app.client_id = "11111111-1111-1111-1111-111111111111".into();
    let (problem, message) = token_error(&env, &unknown_app, SIM_CLIENT_SECRET).await;
    assert_eq!(problem, TokenProblem::UnknownApp);
    assert!(message.contains("tenant.clientId"), "{message}");

    let mut unknown_tenant = good.clone();
    unknown_tenant.tenant_id = "nosuch.onmicrosoft.com".into();
    let (problem, message) = token_error(&env, &unknown_tenant, SIM_CLIENT_SECRET).await;
    assert_eq!(problem, TokenProblem::UnknownTenant);
    assert!(message.contains("tenant.tenantId"), "{message}");

    // A token for the Graph of another cloud: the (global) tenant does not know that resource.
    let mut wrong_cloud = good.clone();
    wrong_cloud.cloud = guestops::config::Cloud::UsGov;
    let (problem, message) = token_error(&env, &wrong_cloud, SIM_CLIENT_SECRET).await;
    assert_eq!(problem, TokenProblem::WrongResource);
    assert!(message.contains("tenant.cloud"), "{message}");

    // The tenant GUID works as well as the domain.
    let mut by_guid = good.clone();
    by_guid.tenant_id = SIM_TENANT_ID.into();
    env.client_with(&by_guid, SIM_CLIENT_SECRET)
        .list_guests()
        .await
        .expect("GUID tenant");
}

#[tokio::test]
async fn a_temporarily_unavailable_token_endpoint_is_retried() {
    let env = start().await;
    env.sim.state().graph.fail_token_requests(2);
    env.client()
        .list_guests()
        .await
        .expect("listing after token retries");
    assert_eq!(env.sim.state().counters.token_requests, 3);
}

#[tokio::test]
async fn the_credential_can_be_shared_as_a_token_source() {
    let env = start().await;
    let tenant = tenant(&env.base);
    let settings = tenant.graph_settings();
    let edge = guestops::remote::graph::client::edge(&settings, retry()).expect("edge");
    let credential = ClientSecretCredential::new(
        edge.clone(),
        &tenant.authority_host,
        &tenant.tenant_id,
        &tenant.client_id,
        Credential::new(
            SecretString::from(SIM_CLIENT_SECRET.to_owned()),
            "the test's secret",
        ),
        &tenant.cloud.graph_endpoint(),
    )
    .expect("credential");
    assert!(!format!("{credential:?}").contains(SIM_CLIENT_SECRET));
    let client = GraphClient::new(&settings, Arc::new(credential), edge).expect("client");
    client.list_guests().await.expect("listing");
}

#[tokio::test]
async fn a_429_storm_is_ridden_out() {
    let env = start().await;
    {
        let mut state = env.sim.state();
        for i in 0..1500 {
            state.graph.add_guest(&format!("g{i}@partner.example"), "G");
        }
        state.graph_faults.throttle_every = Some(2);
        state.graph_faults.retry_after = Some("0.01".into());
    }
    let client = env.client();
    assert_eq!(client.list_guests().await.expect("listing").len(), 1500);
    let invited = client.invite(&invitation("new@partner.example")).await;
    // A 429 refused the write: retrying it is safe, and it went through once.
    assert!(invited.is_ok(), "{invited:?}");
    assert_eq!(
        env.sim
            .state()
            .graph
            .invitation_count("new@partner.example"),
        1
    );
    assert!(env.sim.state().counters.throttled >= 2);
}

#[tokio::test]
async fn throttling_that_outlasts_the_budget_fails_the_read() {
    let env = start().await;
    {
        let mut state = env.sim.state();
        state.graph.add_guest("ana@partner.example", "Ana");
        state.graph_faults.throttle_every = Some(1);
        state.graph_faults.retry_after = Some("0.01".into());
    }
    let err = env
        .client()
        .list_guests()
        .await
        .expect_err("always throttled");
    assert!(matches!(err, GraphError::Throttled { .. }), "{err:?}");
    assert!(err.to_string().contains("retry later"));
    assert!(!err.is_ambiguous());
}

fn page_rule(times: Option<u32>) -> FailRule {
    FailRule {
        method: Some("GET".into()),
        path_prefix: "/v1.0/users".into(),
        query_contains: Some("$skiptoken".into()),
        status: 503,
        times,
        after_processing: false,
    }
}

#[tokio::test]
async fn a_transient_503_on_a_later_page_is_retried() {
    let env = start().await;
    {
        let mut state = env.sim.state();
        for i in 0..300 {
            state.graph.add_guest(&format!("g{i}@partner.example"), "G");
        }
        state.graph.set_page_size_cap(Some(100));
        state.graph_faults.fail.push(page_rule(Some(2)));
    }
    assert_eq!(
        env.client().list_guests().await.expect("listing").len(),
        300
    );
    assert_eq!(env.sim.state().counters.injected_failures, 2);
}

#[tokio::test]
async fn a_page_that_keeps_failing_fails_the_whole_listing() {
    let env = start().await;
    {
        let mut state = env.sim.state();
        for i in 0..300 {
            state.graph.add_guest(&format!("g{i}@partner.example"), "G");
        }
        state.graph.set_page_size_cap(Some(100));
        state.graph_faults.fail.push(page_rule(None));
    }
    let err = env
        .client()
        .list_guests()
        .await
        .expect_err("no partial list");
    assert_eq!(err.status(), Some(503), "{err}");
    assert_eq!(err.code(), Some("serviceNotAvailable"));
}

#[tokio::test]
async fn an_invitation_is_not_retried_after_a_504() {
    let env = start().await;
    env.sim.state().graph_faults.fail.push(FailRule {
        method: Some("POST".into()),
        path_prefix: "/v1.0/invitations".into(),
        query_contains: None,
        status: 504,
        times: Some(1),
        after_processing: true,
    });
    let client = env.client();
    let err = client
        .invite(&invitation("ana@partner.example"))
        .await
        .expect_err("gateway timeout");
    assert!(err.is_ambiguous(), "the caller must re-observe: {err}");
    assert_eq!(
        env.sim
            .state()
            .graph
            .invitation_count("ana@partner.example"),
        1
    );
    // Re-observation finds the guest that was created despite the error.
    let found = client
        .find_by_email("ana@partner.example")
        .await
        .expect("lookup");
    assert_eq!(found.len(), 1);
}

#[tokio::test]
async fn replication_delay_hides_a_new_guest_but_a_second_invitation_finds_it() {
    let env = start().await;
    env.sim
        .state()
        .graph
        .set_replication_delay(Duration::from_secs(3600));
    let client = env.client();
    let first = client
        .invite(&invitation("ana@partner.example"))
        .await
        .expect("invitation");
    assert_eq!(client.get_user(&first.user_id).await.expect("read"), None);
    assert!(
        client
            .find_by_email("ana@partner.example")
            .await
            .expect("lookup")
            .is_empty()
    );
    assert!(client.list_guests().await.expect("listing").is_empty());
    let second = client
        .invite(&invitation("Ana@Partner.example"))
        .await
        .expect("re-invitation");
    assert_eq!(second.user_id, first.user_id, "no second guest");
    let state = env.sim.state();
    assert_eq!(state.graph.users().len(), 1);
    assert_eq!(state.graph.invitation_count("ana@partner.example"), 2);
    assert!(state.graph.invitations()[1].resend);
}

#[tokio::test]
async fn disable_and_delete_a_guest() {
    let env = start().await;
    let id = env
        .sim
        .state()
        .graph
        .add_guest("ana@partner.example", "Ana");
    let client = env.client();
    client
        .set_account_enabled(&id, false)
        .await
        .expect("disable");
    let user = client.get_user(&id).await.expect("read").expect("exists");
    assert_eq!(user.account_enabled, Some(false));
    assert!(client.delete_user(&id).await.expect("delete"));
    assert!(!client.delete_user(&id).await.expect("already gone"));
    assert_eq!(client.get_user(&id).await.expect("read"), None);
    assert_eq!(env.sim.state().graph.deleted_users().len(), 1);
}

#[tokio::test]
async fn a_missing_permission_names_the_permission_to_grant() {
    let env = start().await;
    env.sim.state().graph.revoke_permission("User.Invite.All");
    let err = env
        .client()
        .invite(&invitation("ana@partner.example"))
        .await
        .expect_err("forbidden");
    assert_eq!(err.status(), Some(403));
    assert_eq!(err.code(), Some("Authorization_RequestDenied"));
    assert!(err.to_string().contains("User.Invite.All"), "{err}");
    assert!(err.request_id().is_some());
}

#[tokio::test]
async fn the_simulator_refuses_what_graph_refuses() {
    let env = start().await;
    env.sim
        .state()
        .graph
        .add_guest("ana@partner.example", "Ana");
    let code = |body: &Value| body["error"]["code"].as_str().unwrap_or("").to_owned();

    let (status, body) = env
        .raw_get("users?$filter=endsWith(mail,'@partner.example')")
        .await;
    assert_eq!(
        (status, code(&body).as_str()),
        (400, "Request_UnsupportedQuery")
    );
    let (status, body) = env.raw_get("users?$filter=userType%20ne%20'Member'").await;
    assert_eq!(
        (status, code(&body).as_str()),
        (400, "Request_UnsupportedQuery")
    );
    let (status, body) = env.raw_get("users?$search=%22mail:ana%22").await;
    assert_eq!(
        (status, code(&body).as_str()),
        (400, "Request_UnsupportedQuery")
    );
    let (status, _) = env.raw_get("users?$skip=10").await;
    assert_eq!(status, 400);
    let (status, _) = env.raw_get("users?$top=1000").await;
    assert_eq!(status, 400);
    let (status, body) = env.raw_get("users?$skiptoken=made-up").await;
    assert_eq!(
        (status, code(&body).as_str()),
        (400, "Directory_ExpiredPageToken")
    );
    let (status, body) = env
        .raw_get("users/00000000-0000-0000-0000-000000000000")
        .await;
    assert_eq!(
        (status, code(&body).as_str()),
        (404, "Request_ResourceNotFound")
    );

    let unauthenticated = reqwest::Client::new()
        .get(format!("{}v1.0/users", env.base))
        .send()
        .await
        .expect("GET");
    assert_eq!(unauthenticated.status().as_u16(), 401);
    let body: Value = unauthenticated.json().await.expect("JSON");
    assert_eq!(code(&body), "InvalidAuthenticationToken");
}

#[tokio::test]
async fn an_address_that_entra_rejects_is_a_bad_request() {
    let env = start().await;
    let err = env
        .client()
        .invite(&invitation("ana+tag@partner.example"))
        .await
        .expect_err("'+' is rejected by Entra");
    assert_eq!(err.status(), Some(400));
    assert!(env.sim.state().graph.users().is_empty());
}

#[tokio::test]
async fn plain_http_is_refused_off_loopback() {
    let mut config = tenant(&Url::parse("http://127.0.0.1:1/").expect("url"));
    config.graph_endpoint = Url::parse("http://graph.example.com/").expect("url");
    let err = GraphClient::with_client_secret(
        &config.graph_settings(),
        Credential::new(SecretString::from("x".to_owned()), "the test's secret"),
        retry(),
    )
    .expect_err("plain http to a remote host");
    assert!(err.to_string().contains("https"), "{err}");
}

/// The message of the token error of a client whose secret was loaded by the configuration
/// from `source` (with the injected environment `env`).
async fn token_error_loaded(
    env: &Env,
    source: SecretSource,
    vars: &[(&str, &str)],
) -> (TokenProblem, String) {
    let mut tenant = tenant(&env.base);
    tenant.client_secret = source;
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let lookup = move |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let loaded = tenant
        .client_secret
        .load_with_env(&lookup)
        .expect("the secret loads");
    let client =
        GraphClient::with_client_secret(&tenant.graph_settings(), loaded.credential(), retry())
            .expect("client");
    match client.list_guests().await {
        Err(err @ GraphError::Token(_)) => (
            err.token_problem().expect("a token problem"),
            guestops::error::chain(&err),
        ),
        other => panic!("expected a token error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_wrong_secret_from_the_environment_is_fixed_in_the_environment() {
    let env = start().await;
    let source = SecretSource::CredentialOrEnv {
        credential: "graph-secret".into(),
        env: "GUESTOPS_TENANT_CLIENT_SECRET".into(),
        file_key: "tenant.credential.secretFile".into(),
    };
    let (problem, message) = token_error_loaded(
        &env,
        source,
        &[("GUESTOPS_TENANT_CLIENT_SECRET", "some-secret-id")],
    )
    .await;
    assert_eq!(problem, TokenProblem::WrongSecret);
    assert!(
        message.contains("the environment variable GUESTOPS_TENANT_CLIENT_SECRET"),
        "{message}"
    );
    assert!(!message.contains("secretFile"), "{message}");
    assert!(!message.contains("some-secret-id"), "{message}");
}

#[tokio::test]
async fn a_wrong_secret_from_a_file_or_a_credential_names_that_place() {
    let env = start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("graph");
    std::fs::write(&file, "wrong-in-file\n").expect("write");
    let (problem, message) = token_error_loaded(&env, SecretSource::File(file.clone()), &[]).await;
    assert_eq!(problem, TokenProblem::WrongSecret);
    assert!(message.contains(&file.display().to_string()), "{message}");

    let credentials = dir.path().join("creds");
    std::fs::create_dir(&credentials).expect("mkdir");
    std::fs::write(credentials.join("graph-secret"), "wrong-in-credential").expect("write");
    let source = SecretSource::CredentialOrEnv {
        credential: "graph-secret".into(),
        env: "GUESTOPS_TENANT_CLIENT_SECRET".into(),
        file_key: "tenant.credential.secretFile".into(),
    };
    let credentials_dir = credentials.display().to_string();
    let (problem, message) = token_error_loaded(
        &env,
        source,
        &[
            ("CREDENTIALS_DIRECTORY", credentials_dir.as_str()),
            (
                "GUESTOPS_TENANT_CLIENT_SECRET",
                "not used: the credential wins",
            ),
        ],
    )
    .await;
    assert_eq!(problem, TokenProblem::WrongSecret);
    assert!(
        message.contains("the systemd credential graph-secret"),
        "{message}"
    );
    assert!(
        !message.contains("GUESTOPS_TENANT_CLIENT_SECRET"),
        "{message}"
    );
    assert!(!message.contains("secretFile"), "{message}");
}

#[tokio::test]
async fn a_refused_connection_fails_at_once_naming_the_address() {
    // A port that was listening and is now closed.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let base = Url::parse(&format!("http://{addr}/")).expect("url");
    let client = GraphClient::with_client_secret(
        &tenant(&base).graph_settings(),
        Credential::new(SecretString::from("x".to_owned()), "the test's secret"),
        retry(),
    )
    .expect("client");
    let err = client.list_guests().await.expect_err("nobody listens");
    let GraphError::Transport {
        attempts, source, ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(*attempts, 1, "a refused connection is not retried");
    assert_eq!(
        source.kind,
        guestops::remote::http::TransportKind::ConnectionRefused
    );
    let text = guestops::error::chain(&err);
    assert!(text.contains(&addr.to_string()), "{text}");
    assert!(text.contains("connection refused"), "{text}");
    assert!(
        text.contains("access token"),
        "the operation is named: {text}"
    );
    assert!(!err.is_ambiguous(), "nothing was sent");
}

#[tokio::test]
async fn a_throttle_beyond_the_budget_carries_graphs_retry_after() {
    let env = start().await;
    {
        let mut state = env.sim.state();
        state.graph.add_guest("ana@partner.example", "Ana");
        // Longer than the whole retry budget (2 s): handed up to the caller, not waited.
        state.graph_faults.retry_after = Some("90".into());
    }
    let client = env.client();
    client
        .list_guests()
        .await
        .expect("a token and a first read");
    env.sim.state().graph_faults.throttle_every = Some(1);
    let err = client.list_guests().await.expect_err("always throttled");
    assert!(matches!(err, GraphError::Throttled { .. }), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(90)));
}

#[tokio::test]
async fn redirects_are_not_followed_so_neither_secret_nor_token_leaves() {
    // "The other origin": would accept anything.
    let other = support::RawServer::start(|_| {
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".to_owned()
    })
    .await;
    let elsewhere = format!("http://{}/stolen", other.addr);
    // A token endpoint that issues tokens, and a Graph that redirects every call.
    let graph = support::RawServer::start(move |head| {
        if head.contains("/oauth2/v2.0/token") && head.contains("redirect-me") {
            format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: {elsewhere}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
        } else if head.contains("/oauth2/v2.0/token") {
            let body = r#"{"token_type":"Bearer","expires_in":3599,"access_token":"the-token"}"#;
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        } else {
            format!(
                "HTTP/1.1 302 Found\r\nLocation: {elsewhere}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
        }
    })
    .await;
    let base = Url::parse(&format!("http://{}/", graph.addr)).expect("url");

    let client = GraphClient::with_client_secret(
        &tenant(&base).graph_settings(),
        Credential::new(SecretString::from("s3cret".to_owned()), "the test's secret"),
        retry(),
    )
    .expect("client");
    let err = client
        .list_guests()
        .await
        .expect_err("a redirect is not a listing");
    assert_eq!(err.status(), Some(302), "{err:?}");

    let mut redirected_token = tenant(&base);
    redirected_token.tenant_id = "redirect-me".into();
    let client = GraphClient::with_client_secret(
        &redirected_token.graph_settings(),
        Credential::new(SecretString::from("s3cret".to_owned()), "the test's secret"),
        retry(),
    )
    .expect("client");
    let err = client
        .list_guests()
        .await
        .expect_err("no token behind a redirect");
    assert_eq!(err.status(), Some(307), "{err:?}");

    let heads = graph.heads();
    assert!(
        heads.iter().any(|h| h.contains("Bearer the-token")),
        "Graph itself got the token: {heads:?}"
    );
    assert!(other.heads().is_empty(), "{:?}", other.heads());
}

// ---------------------------------------------------------------------------------------------
// Batched lookups (`POST /$batch`, docs/specs/microsoft-graph.md §4)

fn batch_counts(env: &Env) -> (u64, u64, u64) {
    let c = env.sim.state().counters.clone();
    (
        c.graph_requests,
        c.graph_batches,
        c.graph_batch_inner_requests,
    )
}

#[tokio::test]
async fn forty_five_lookups_go_in_three_batches_and_are_matched_by_id() {
    let env = start().await;
    let (emails, guest_ids) = {
        let mut state = env.sim.state();
        let emails: Vec<String> = (0..45)
            .map(|i| format!("g{i:02}@partner.example"))
            .collect();
        // Every other address has a guest; the rest are unknown.
        let ids: Vec<String> = emails
            .iter()
            .step_by(2)
            .map(|e| state.graph.add_guest(e, "G"))
            .collect();
        (emails, ids)
    };
    let client = env.client();
    client.list_guests().await.expect("a token and a listing");
    let before = batch_counts(&env);

    let found = client
        .find_by_emails(&emails)
        .await
        .expect("batched lookup");

    let after = batch_counts(&env);
    assert_eq!(
        (after.0 - before.0, after.1 - before.1, after.2 - before.2),
        (3, 3, 45),
        "45 lookups: three requests on the wire (20 + 20 + 5), 45 inner ones"
    );
    let found_ids: BTreeSet<String> = found.iter().map(|u| u.id.clone()).collect();
    assert_eq!(
        found_ids,
        guest_ids.iter().cloned().collect::<BTreeSet<_>>()
    );
    assert_eq!(found.len(), 23, "each guest once, under its own address");

    // By id: one answer per id, in the order asked, although the simulator answers each
    // batch in reverse; an unknown id is the only "None".
    let mut ids: Vec<String> = guest_ids.clone();
    ids.insert(7, "00000000-0000-0000-0000-00000000dead".into());
    let before = batch_counts(&env);
    let read = client.get_users(&ids).await.expect("batched reads");
    let after = batch_counts(&env);
    assert_eq!((after.1 - before.1, after.2 - before.2), (2, 24));
    assert_eq!(read.len(), ids.len());
    for (id, user) in ids.iter().zip(&read) {
        match user {
            Some(user) => assert_eq!(&user.id, id),
            None => assert_eq!(id, "00000000-0000-0000-0000-00000000dead"),
        }
    }
    assert!(read[7].is_none());
    assert_eq!(read.iter().filter(|u| u.is_some()).count(), 23);
    assert_eq!(
        read[0].as_ref().and_then(|u| u.mail.as_deref()),
        Some("g00@partner.example"),
        "the batched read selects the same properties as a direct one"
    );
}

#[tokio::test]
async fn a_member_found_by_a_batch_is_still_a_member() {
    let env = start().await;
    let (member, guest) = {
        let mut state = env.sim.state();
        let member = state.graph.add_member(
            "carla@sim.onmicrosoft.com",
            Some("Carla.Lima@Contoso.example"),
            "Carla",
        );
        let guest = state.graph.add_guest("Ana.Silva@Partner.example", "Ana");
        (member, guest)
    };
    let client = env.client();
    let found = client
        .find_by_emails(&[
            "carla.lima@contoso.example".to_owned(),
            "ANA.SILVA@partner.EXAMPLE".to_owned(),
        ])
        .await
        .expect("batched lookup");
    let carla = found.iter().find(|u| u.id == member).expect("the member");
    assert_eq!(carla.user_type.as_deref(), Some("Member"));
    assert!(!carla.is_guest());
    let ana = found.iter().find(|u| u.id == guest).expect("the guest");
    assert!(ana.is_guest() && ana.is_pending());
    assert_eq!(found.len(), 2);
}

#[tokio::test]
async fn an_inner_failure_fails_the_whole_lookup_and_is_never_not_found() {
    let env = start().await;
    let id = {
        let mut state = env.sim.state();
        state.graph.add_guest("ana@partner.example", "Ana");
        let id = state.graph.add_guest("bob@partner.example", "Bob");
        state.graph_faults.fail.push(FailRule {
            method: Some("GET".into()),
            path_prefix: "/v1.0/users".into(),
            query_contains: Some("bob".into()),
            status: 500,
            times: None,
            after_processing: false,
        });
        state.graph_faults.fail.push(FailRule {
            method: Some("GET".into()),
            path_prefix: format!("/v1.0/users/{id}"),
            query_contains: None,
            status: 500,
            times: None,
            after_processing: false,
        });
        id
    };
    let client = env.client();
    let emails = [
        "ana@partner.example".to_owned(),
        "bob@partner.example".to_owned(),
    ];
    let err = client
        .find_by_emails(&emails)
        .await
        .expect_err("an inner 500 fails the lookup");
    assert_eq!(err.status(), Some(500), "{err:?}");
    assert!(err.to_string().contains("bob@partner.example"), "{err}");
    // Retried like a direct read (5 retries), then given up.
    let (_, batches, inner) = batch_counts(&env);
    assert_eq!((batches, inner), (6, 2 + 5));

    let err = client
        .get_users(std::slice::from_ref(&id))
        .await
        .expect_err("a 500 for an id is not a missing user");
    assert_eq!(err.status(), Some(500), "{err:?}");
    assert!(err.to_string().contains(&id), "{err}");
}

#[tokio::test]
async fn inner_429s_are_retried_after_their_retry_after() {
    let env = start().await;
    {
        let mut state = env.sim.state();
        for i in 0..5 {
            state.graph.add_guest(&format!("g{i}@partner.example"), "G");
        }
        state.graph_batch_faults.throttle_inner = 2;
        state.graph_batch_faults.inner_retry_after = Some("0.01".into());
    }
    let emails: Vec<String> = (0..5).map(|i| format!("g{i}@partner.example")).collect();
    let client = env.client();

    let found = client.find_by_emails(&emails).await.expect("retried");

    assert_eq!(found.len(), 5);
    let (_, batches, inner) = batch_counts(&env);
    assert_eq!(
        (batches, inner),
        (2, 5 + 2),
        "only the two throttled lookups are sent again, in one more batch"
    );
    assert_eq!(env.sim.state().counters.throttled, 2);
}

#[tokio::test]
async fn inner_throttling_beyond_the_budget_fails_with_its_retry_after() {
    let env = start().await;
    {
        let mut state = env.sim.state();
        state.graph.add_guest("ana@partner.example", "Ana");
        state.graph_batch_faults.throttle_inner = 1;
        state.graph_batch_faults.inner_retry_after = Some("3600".into());
    }
    let err = env
        .client()
        .find_by_emails(&["ana@partner.example".to_owned()])
        .await
        .expect_err("a retry-after beyond the budget");
    assert!(matches!(err, GraphError::Throttled { .. }), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3600)));
    assert_eq!(batch_counts(&env).1, 1, "not waited for, not resent");
}

#[tokio::test]
async fn a_batched_lookup_with_more_pages_is_read_to_the_end() {
    let env = start().await;
    let (member, guest) = {
        let mut state = env.sim.state();
        state.graph.set_page_size_cap(Some(1));
        let member = state.graph.add_member(
            "ana.m@sim.onmicrosoft.com",
            Some("ana@partner.example"),
            "Ana M",
        );
        let guest = state.graph.add_guest("ana@partner.example", "Ana");
        (member, guest)
    };
    let client = env.client();
    client.list_guests().await.expect("a token and a listing");
    let before = batch_counts(&env);

    let found = client
        .find_by_emails(&["ana@partner.example".to_owned()])
        .await
        .expect("batched lookup");

    let ids: BTreeSet<String> = found.into_iter().map(|u| u.id).collect();
    assert_eq!(ids, BTreeSet::from([member, guest]));
    let after = batch_counts(&env);
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (2, 1),
        "one batch, then the inner answer's nextLink read directly"
    );
}

// ---- Delta query (`docs/specs/microsoft-graph.md` §3) ----

use guestops::remote::graph::{DeltaChange, DeltaRound, RemovedReason};
use guestops::sim::graph::delta::ExpiredTokenAnswer;

fn upserted(round: &DeltaRound) -> BTreeSet<String> {
    round
        .changes
        .iter()
        .filter_map(|c| match c {
            DeltaChange::Upsert(u) => Some(u.id.clone()),
            DeltaChange::Removed { .. } => None,
        })
        .collect()
}

fn removed(round: &DeltaRound) -> Vec<(String, RemovedReason)> {
    round
        .changes
        .iter()
        .filter_map(|c| match c {
            DeltaChange::Removed { id, reason } => Some((id.clone(), *reason)),
            DeltaChange::Upsert(_) => None,
        })
        .collect()
}

#[tokio::test]
async fn a_delta_round_enumerates_members_and_guests_then_only_changes() {
    let env = start().await;
    let (ana, member) = {
        let mut state = env.sim.state();
        for i in 0..120 {
            state.graph.add_guest(&format!("g{i}@partner.example"), "G");
        }
        let ana = state.graph.add_guest("ana@partner.example", "Ana");
        let member = state.graph.add_member(
            &format!("bob@{SIM_TENANT_DOMAIN}"),
            Some("bob@contoso.example"),
            "Bob",
        );
        state.graph.set_page_size_cap(Some(50));
        (ana, member)
    };
    let client = env.client();
    let first = client.delta(None).await.expect("the first round");
    assert_eq!(first.changes.len(), 122, "every user once, members too");
    assert!(upserted(&first).contains(&member));
    assert_eq!(first.pages, 3);
    let ana_seen = first
        .changes
        .iter()
        .find_map(|c| match c {
            DeltaChange::Upsert(u) if u.id == ana => Some(u.clone()),
            _ => None,
        })
        .expect("ana");
    assert_eq!(ana_seen.mail.as_deref(), Some("ana@partner.example"));
    assert!(ana_seen.is_guest() && ana_seen.is_pending());
    assert!(!ana_seen.other_mails.is_empty(), "the selected properties");

    // Nothing changed: one request, no entries.
    let before = env.sim.state().counters.graph_requests;
    let quiet = client
        .delta(Some(&first.delta_link))
        .await
        .expect("a quiet round");
    assert!(quiet.changes.is_empty(), "{:?}", quiet.changes);
    assert_eq!(env.sim.state().counters.graph_requests - before, 1);

    // A redemption surfaces as the user with every selected property.
    env.sim.state().graph.accept_invitation(&ana);
    let changed = client
        .delta(Some(&quiet.delta_link))
        .await
        .expect("a round with a change");
    assert_eq!(upserted(&changed), BTreeSet::from([ana.clone()]));
    let DeltaChange::Upsert(user) = &changed.changes[0] else {
        panic!("an object");
    };
    assert!(!user.is_pending());
    assert_eq!(user.mail.as_deref(), Some("ana@partner.example"));
}

#[tokio::test]
async fn removed_changed_then_deleted_and_a_restore_comes_back_as_an_object() {
    let env = start().await;
    let (ana, eve) = {
        let mut state = env.sim.state();
        (
            state.graph.add_guest("ana@partner.example", "Ana"),
            state.graph.add_guest("eve@partner.example", "Eve"),
        )
    };
    let client = env.client();
    let first = client.delta(None).await.expect("first round");
    {
        let mut state = env.sim.state();
        assert!(state.graph.delete_user(&ana));
        assert!(state.graph.delete_user(&eve));
    }
    let soft = client.delta(Some(&first.delta_link)).await.expect("round");
    let soft_removed: BTreeSet<_> = removed(&soft).into_iter().collect();
    assert_eq!(
        soft_removed,
        BTreeSet::from([
            (ana.clone(), RemovedReason::Changed),
            (eve.clone(), RemovedReason::Changed)
        ])
    );
    {
        let mut state = env.sim.state();
        assert!(state.graph.restore_user(&ana));
        state.graph.purge_deleted();
    }
    let later = client.delta(Some(&soft.delta_link)).await.expect("round");
    assert_eq!(upserted(&later), BTreeSet::from([ana.clone()]), "restored");
    assert_eq!(
        removed(&later),
        vec![(eve, RemovedReason::Deleted)],
        "purged"
    );
}

#[tokio::test]
async fn an_expired_delta_link_asks_for_a_resync_in_both_documented_ways() {
    let env = start().await;
    env.sim
        .state()
        .graph
        .add_guest("ana@partner.example", "Ana");
    let client = env.client();
    let first = client.delta(None).await.expect("first round");
    env.sim.state().graph.expire_delta_tokens();
    let gone = client
        .delta(Some(&first.delta_link))
        .await
        .expect_err("expired");
    assert_eq!(gone.status(), Some(410), "{gone}");
    assert!(gone.is_resync_required());
    assert!(!gone.is_ambiguous());

    let second = client.delta(None).await.expect("a new sync");
    {
        let mut state = env.sim.state();
        state
            .graph
            .set_expired_delta_token_answer(ExpiredTokenAnswer::SyncStateNotFound);
        state.graph.expire_delta_tokens();
    }
    let not_found = client
        .delta(Some(&second.delta_link))
        .await
        .expect_err("expired");
    assert_eq!(not_found.status(), Some(400));
    assert_eq!(not_found.code(), Some("syncStateNotFound"));
    assert!(not_found.is_resync_required());
}

#[tokio::test]
async fn a_failing_delta_page_fails_the_round_and_is_not_a_resync() {
    let env = start().await;
    {
        let mut state = env.sim.state();
        for i in 0..120 {
            state.graph.add_guest(&format!("g{i}@partner.example"), "G");
        }
        state.graph.set_page_size_cap(Some(50));
        state.graph_faults.fail.push(FailRule {
            method: Some("GET".into()),
            path_prefix: "/v1.0/users/delta".into(),
            query_contains: Some("$skiptoken".into()),
            status: 503,
            times: None,
            after_processing: false,
        });
    }
    let err = env
        .client()
        .delta(None)
        .await
        .expect_err("no partial round");
    assert_eq!(err.status(), Some(503), "{err}");
    assert!(!err.is_resync_required());
}

#[tokio::test]
async fn an_empty_delta_page_with_a_next_link_is_followed() {
    let env = start().await;
    {
        let mut state = env.sim.state();
        for i in 0..30 {
            state.graph.add_guest(&format!("g{i}@partner.example"), "G");
        }
        state.graph.set_empty_first_page(true);
    }
    let round = env.client().delta(None).await.expect("round");
    assert_eq!(upserted(&round).len(), 30);
    assert!(round.pages >= 2, "the empty page, then the users");
}

#[tokio::test]
async fn a_delta_link_to_another_origin_is_refused_before_any_request() {
    let env = start().await;
    let before = env.sim.state().counters.graph_requests;
    let err = env
        .client()
        .delta(Some(
            "https://graph.example.net/v1.0/users/delta?$deltatoken=abc",
        ))
        .await
        .expect_err("another origin");
    assert!(
        err.to_string().contains("@odata.deltaLink points to"),
        "{err}"
    );
    assert_eq!(env.sim.state().counters.graph_requests, before);
}

// The simulator narrows look-ups with an address index: a user changed after the index was
// built is still found by its new address and no longer by its old one.
#[tokio::test]
async fn lookups_follow_addresses_changed_after_earlier_lookups() {
    let env = start().await;
    let ana = {
        let mut state = env.sim.state();
        for i in 0..50 {
            state.graph.add_guest(&format!("g{i}@partner.example"), "G");
        }
        state.graph.add_guest("ana@partner.example", "Ana")
    };
    let client = env.client();
    let found = client
        .find_by_email("ANA@partner.example")
        .await
        .expect("lookup");
    assert_eq!(found.len(), 1);
    {
        let mut state = env.sim.state();
        let user = state.graph.user_mut(&ana).expect("ana");
        user.mail = Some("ana.new@partner.example".into());
        user.other_mails = vec!["ana.new@partner.example".into()];
    }
    let found = client
        .find_by_email("ana.new@partner.example")
        .await
        .expect("lookup");
    assert_eq!(
        found.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(),
        [ana.as_str()]
    );
    // The old address still matches the guest UPN form only (Entra keeps the UPN).
    let old = client
        .find_by_email("ana@partner.example")
        .await
        .expect("lookup");
    assert_eq!(old.len(), 1, "by the guest UPN ana_partner.example#EXT#");
    let invited = client
        .invite(&invitation("someone.else@partner.example"))
        .await
        .expect("invite");
    let found = client
        .find_by_email("someone.else@partner.example")
        .await
        .expect("lookup");
    assert_eq!(
        found.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(),
        [invited.user_id.as_str()]
    );
}

// Issue 8 (sovereign clouds): with the authority and the Graph endpoint overridden (here: the
// simulator), the token scope is still the configured cloud's Graph resource, and a simulator
// standing for that cloud issues tokens for nothing else.
#[tokio::test]
async fn each_cloud_asks_for_its_own_graph_resource_whatever_the_endpoints() {
    use guestops::config::Cloud;
    use guestops::sim::graph::SimCloud;
    let pairs = [
        (Cloud::Global, SimCloud::Global),
        (Cloud::UsGov, SimCloud::UsGov),
        (Cloud::UsGovDod, SimCloud::UsGovDod),
        (Cloud::China, SimCloud::China),
    ];
    for (cloud, sim_cloud) in pairs {
        let env = start().await;
        env.sim
            .state()
            .graph
            .add_guest("ana@partner.example", "Ana");
        let mut config = tenant(&env.base);
        config.cloud = cloud;
        for (other_cloud, other) in pairs {
            env.sim.state().graph.set_credentials(SimCredentials {
                cloud: other,
                ..SimCredentials::default()
            });
            let result = env
                .client_with(&config, SIM_CLIENT_SECRET)
                .list_guests()
                .await;
            if other == sim_cloud {
                assert_eq!(result.expect("its own cloud's token").len(), 1, "{cloud}");
            } else {
                let err = result.expect_err("another cloud's resource");
                let text = guestops::error::chain(&err);
                assert!(
                    text.contains("AADSTS500011"),
                    "{cloud} against {other_cloud}: {text}"
                );
                assert!(
                    text.contains(sim_cloud.graph_resource()),
                    "the message names the resource asked for: {text}"
                );
            }
        }
    }
}

// Issue 9 item 4: deleted items through `$batch`, and the restore.
#[tokio::test]
async fn deleted_guests_are_found_in_batches_and_restored_with_their_id() {
    let env = start().await;
    let ana = env
        .sim
        .state()
        .graph
        .add_guest("Ana@Partner.example", "Ana");
    let bo = env
        .sim
        .state()
        .graph
        .add_guest("o'bo@partner.example", "Bo");
    let live = env
        .sim
        .state()
        .graph
        .add_guest("live@partner.example", "Live");
    assert!(env.sim.state().graph.delete_user(&ana));
    assert!(env.sim.state().graph.delete_user(&bo));
    let client = env.client();
    let emails: Vec<String> = (0..21)
        .map(|i| format!("nobody{i}@partner.example"))
        .chain(["ana@partner.example".into(), "o'bo@partner.example".into()])
        .chain(["live@partner.example".into()])
        .collect();
    let before = env.sim.state().counters.clone();
    let found = client
        .find_deleted_by_emails(&emails)
        .await
        .expect("the look-up");
    let ids: BTreeSet<&str> = found.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(ids, [ana.as_str(), bo.as_str()].into_iter().collect());
    let after = env.sim.state().counters.clone();
    assert_eq!(after.graph_batches - before.graph_batches, 2, "20 + 4");
    assert_eq!(
        after.graph_batch_inner_requests - before.graph_batch_inner_requests,
        24
    );

    let restored = client.restore_user(&ana).await.expect("restored");
    assert_eq!(restored.user_id, ana);
    assert!(env.sim.state().graph.user(&ana).is_some());
    assert!(env.sim.state().graph.user(&live).is_some());

    // Without the permission: Graph's 403, for the caller to explain.
    env.sim
        .state()
        .graph
        .revoke_permission("User.DeleteRestore.All");
    let narrow = env.client();
    let err = narrow.restore_user(&bo).await.expect_err("refused");
    assert_eq!(err.status(), Some(403), "{err}");
    assert_eq!(err.code(), Some("Authorization_RequestDenied"));
}

/// The pages a progress hook saw, as `(pages, items, done)`.
type SeenPages = Arc<std::sync::Mutex<Vec<(usize, usize, bool)>>>;

/// A progress hook recording every page it sees.
fn recording_progress() -> (guestops::remote::ReadProgress, SeenPages) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let progress = guestops::remote::ReadProgress::new(move |page| {
        sink.lock()
            .expect("not poisoned")
            .push((page.pages, page.items, page.done));
    });
    (progress, seen)
}

#[tokio::test]
async fn a_progress_hook_sees_every_page_of_a_listing_and_of_a_delta_round() {
    let env = start().await;
    {
        let mut state = env.sim.state();
        for i in 0..250 {
            state.graph.add_guest(&format!("g{i}@partner.example"), "G");
        }
        state.graph.set_page_size_cap(Some(100));
    }
    let (progress, seen) = recording_progress();
    let client = env.client().with_progress(progress);
    client.list_guests().await.expect("listing");
    assert_eq!(
        *seen.lock().expect("not poisoned"),
        vec![(1, 100, false), (2, 200, false), (3, 250, true)]
    );
    seen.lock().expect("not poisoned").clear();
    let round = client.delta(None).await.expect("a delta round");
    let seen = seen.lock().expect("not poisoned").clone();
    assert_eq!(seen.last().map(|s| s.2), Some(true), "{seen:?}");
    assert_eq!(seen.len(), round.pages, "{seen:?}");
    assert!(seen[..seen.len() - 1].iter().all(|s| !s.2), "{seen:?}");
}
