//! The portal HTTP client against the emulated Power Embedded API on loopback.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use guestops::config::{PortalConfig, SecretSource};
use guestops::desired::spec::Role;
use guestops::remote::Credential;
use guestops::remote::http::RetryPolicy;
use guestops::remote::pace::WriteRate;
use guestops::remote::portal::{
    NewPortalUser, Portal, PortalClient, PortalError, RoleCodes, WriteOnlyFlags,
};
use guestops::sim::portal::SIM_API_KEY;
use guestops::sim::{FailRule, Sim};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Short waits so that retries do not slow the suite down.
fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_retries: 4,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(10),
        max_total_wait: Duration::from_secs(5),
        timeout: Duration::from_secs(20),
    }
}

/// A portal write rate that does not slow the suite down (pacing has tests of its own).
fn fast_writes() -> WriteRate {
    WriteRate::per_second(1000.0, 1).expect("a valid rate")
}

/// An API key as if read from the environment variable `GUESTOPS_PORTAL_API_KEY`.
fn env_key(key: &str) -> Credential {
    Credential::new(
        SecretString::from(key),
        "the environment variable GUESTOPS_PORTAL_API_KEY",
    )
}

struct Harness {
    sim: Sim,
    base: url::Url,
    _shutdown: tokio_util::sync::DropGuard,
}

impl Harness {
    async fn start() -> Harness {
        let sim = Sim::new();
        let shutdown = CancellationToken::new();
        let base = sim
            .spawn("127.0.0.1:0".parse().expect("addr"), shutdown.clone())
            .await
            .expect("the simulator binds a loopback port");
        Harness {
            sim,
            base,
            _shutdown: shutdown.drop_guard(),
        }
    }

    fn config(&self) -> PortalConfig {
        PortalConfig {
            base_url: self.base.clone(),
            api_key: SecretSource::Env("UNUSED".to_owned()),
            concurrency: 2,
            // Fast enough not to slow the suite; pacing has tests of its own.
            max_writes_per_second: 1000.0,
            role_codes: RoleCodes::default(),
            known_admin: None,
            write_only_flags: WriteOnlyFlags::default(),
        }
    }

    fn client_with_key(&self, key: &str) -> PortalClient {
        PortalClient::new(&self.config().portal_settings(), env_key(key), fast_retry())
            .expect("a loopback client")
    }

    fn client(&self) -> PortalClient {
        self.client_with_key(SIM_API_KEY)
    }

    /// A client that states `flags` (`portal.writeOnlyFlags`).
    fn client_with_flags(&self, flags: WriteOnlyFlags) -> PortalClient {
        let mut config = self.config();
        config.write_only_flags = flags;
        PortalClient::new(
            &config.portal_settings(),
            env_key(SIM_API_KEY),
            fast_retry(),
        )
        .expect("a loopback client")
    }

    fn requests(&self) -> Vec<String> {
        self.sim.state().portal.requests().to_vec()
    }
}

fn new_user(email: &str, name: &str, role: Role) -> NewPortalUser {
    NewPortalUser {
        email: email.to_owned(),
        name: name.to_owned(),
        role,
    }
}

#[tokio::test]
async fn lists_hundreds_of_users_over_many_pages() {
    let h = Harness::start().await;
    {
        let mut state = h.sim.state();
        for i in 0..260 {
            state.portal.add_user(
                &format!("user{i:03}@partner.example"),
                &format!("User {i:03}"),
                if i % 2 == 0 { 1 } else { 3 },
            );
        }
    }
    let users = h.client().list_users().await.expect("a complete listing");
    assert_eq!(users.len(), 260);
    let emails: BTreeSet<&str> = users.iter().map(|u| u.email.as_str()).collect();
    assert_eq!(emails.len(), 260, "every user once");
    let admin = users
        .iter()
        .find(|u| u.email == "user000@partner.example")
        .expect("listed");
    assert_eq!(admin.role, Some(Role::Administrator));
    assert_eq!(admin.role_code, Some(1));
    let viewer = users
        .iter()
        .find(|u| u.email == "user001@partner.example")
        .expect("listed");
    assert_eq!(viewer.role, Some(Role::Viewer));
    let requests = h.requests();
    assert_eq!(
        requests.len(),
        11,
        "25 per page: 11 pages, got {requests:?}"
    );
    assert_eq!(requests[0], "GET /api/user?pageNumber=1");
    assert_eq!(requests[10], "GET /api/user?pageNumber=11");
}

#[tokio::test]
async fn a_user_shifting_between_pages_is_listed_once() {
    let h = Harness::start().await;
    {
        let mut state = h.sim.state();
        state.portal.set_page_size(10);
        for i in 10..40 {
            state
                .portal
                .add_user(&format!("u{i}@partner.example"), &format!("User {i}"), 1);
        }
        // Someone adds a user sorted first while we read: everything shifts by one.
        state
            .portal
            .insert_during_scan(
                1,
                json!({"email": "aaa@partner.example", "name": "Aaa", "role": 3}),
            )
            .expect("an object");
    }
    let users = h.client().list_users().await.expect("a complete listing");
    let ids: BTreeSet<&str> = users.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(ids.len(), users.len(), "no id twice: {users:?}");
    for i in 10..40 {
        let email = format!("u{i}@partner.example");
        assert!(
            users.iter().any(|u| u.email == email),
            "{email} missing from the listing"
        );
    }
    // The shift really happened: a fourth page was served and page 2 repeated a user.
    assert!(
        h.requests()
            .iter()
            .any(|r| r == "GET /api/user?pageNumber=4"),
        "the insertion added a page"
    );
}

#[tokio::test]
async fn find_user_matches_exactly_despite_the_contains_filter() {
    let h = Harness::start().await;
    {
        let mut state = h.sim.state();
        state.portal.set_page_size(1);
        state.portal.add_user("banana@x.example", "Banana", 3);
        state.portal.add_user("ANA@X.example", "Zed Ana", 1);
        state.portal.add_user("ana@x.example.org", "Ana Org", 1);
    }
    let client = h.client();
    let found = client
        .find_user(" Ana@x.Example ")
        .await
        .expect("a lookup")
        .expect("ANA@X.example matches case-insensitively");
    assert_eq!(found.email, "ANA@X.example");
    assert_eq!(found.name, "Zed Ana");
    assert_eq!(found.role, Some(Role::Administrator));
    // The server returned all three, one per page: the match was on the last page.
    let requests = h.requests();
    assert!(
        requests.contains(&"GET /api/user?email=Ana%40x.Example&pageNumber=3".to_owned()),
        "{requests:?}"
    );
    assert_eq!(
        client.find_user("na@x.example").await.expect("a lookup"),
        None,
        "a contains match is not a match"
    );
    assert_eq!(
        client
            .find_user("nobody@x.example")
            .await
            .expect("a lookup"),
        None
    );
}

#[tokio::test]
async fn created_user_is_listed_with_its_role_and_created_once() {
    let h = Harness::start().await;
    let client = h.client();
    client
        .create_user(&new_user(
            "Ana.Silva@partner.example",
            "Ana Silva",
            Role::Contributor,
        ))
        .await
        .expect("created");
    let users = client.list_users().await.expect("a listing");
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].email, "Ana.Silva@partner.example");
    assert_eq!(users[0].name, "Ana Silva");
    assert_eq!(users[0].role, Some(Role::Contributor));
    assert_eq!(users[0].role_code, Some(2));
    let state = h.sim.state();
    assert_eq!(state.portal.creates_for("ana.silva@partner.example"), 1);
    let stored = state
        .portal
        .find("ana.silva@partner.example")
        .expect("stored");
    assert_eq!(stored["groups"], json!([]));
}

#[tokio::test]
async fn duplicate_create_is_an_error_and_creates_nothing() {
    let h = Harness::start().await;
    let client = h.client();
    client
        .create_user(&new_user("bob@vendor.example", "Bob", Role::Administrator))
        .await
        .expect("created");
    let err = client
        .create_user(&new_user("BOB@vendor.example", "Bob", Role::Administrator))
        .await
        .expect_err("a duplicate is refused");
    assert_eq!(err.status(), Some(400));
    assert!(!err.is_ambiguous());
    let text = err.to_string();
    assert!(text.contains("BOB@vendor.example"), "{text}");
    assert!(text.contains("already exists"), "{text}");
    let state = h.sim.state();
    assert_eq!(state.portal.len(), 1);
    assert_eq!(state.portal.creates_for("bob@vendor.example"), 1);
}

#[tokio::test]
async fn create_with_an_invalid_address_reports_the_field_errors() {
    let h = Harness::start().await;
    let err = h
        .client()
        .create_user(&new_user("not-an-address", "Nobody", Role::Viewer))
        .await
        .expect_err("refused");
    let text = err.to_string();
    assert!(text.contains("400"), "{text}");
    assert!(text.contains("Email"), "the field errors are kept: {text}");
    assert!(h.sim.state().portal.is_empty());
}

fn rich_user(email: &str) -> Value {
    json!({
        "id": "3f2c7a10-1111-4c1e-9d2a-0123456789ab",
        "email": email,
        "name": "Carla Dias",
        "role": 3,
        "reports": ["9b1d7e52-0000-4000-8000-000000000001"],
        "groups": ["6a0e2f11-0000-4000-8000-000000000002", "6a0e2f11-0000-4000-8000-000000000003"],
        "companies": ["c0c0c0c0-0000-4000-8000-000000000004"],
        "reportNames": ["Sales"],
        "reportLandingPage": "9b1d7e52-0000-4000-8000-000000000001",
        "department": "BI ",
        "expirationDate": "2027-03-31T00:00:00Z",
        "windowsAdUser": "CONTOSO\\carla",
        "canEditReport": true,
        "canDownloadPbix": true,
        "hideFolders": true,
        "canCreateNewUsers": true,
        "accessReportAnyTime": true,
        "someFutureField": {"nested": [1, 2]},
        "phone": "+55 11 5555-0000",
    })
}

#[tokio::test]
async fn update_changes_only_name_and_role_and_keeps_everything_else() {
    let h = Harness::start().await;
    let email = "carla@partner.example";
    let before = rich_user(email);
    h.sim
        .state()
        .portal
        .insert_user(before.clone())
        .expect("an object");
    h.client()
        .update_user(email, "Carla M. Dias", Role::Administrator)
        .await
        .expect("updated");

    let state = h.sim.state();
    let after = Value::Object(state.portal.find(email).expect("still there").clone());
    let mut expected = before;
    // The emulator completed the seeded object with the defaults of the fields it lacked.
    for (key, value) in after.as_object().expect("object") {
        if expected.get(key).is_none() {
            expected[key] = value.clone();
        }
    }
    expected["name"] = json!("Carla M. Dias");
    expected["role"] = json!(1);
    assert_eq!(after, expected);
    assert_eq!(state.portal.writes().updates, 1);
    assert_eq!(
        state.portal.writes().creates,
        0,
        "no churn: never re-created"
    );
}

/// The emulator's PUT is the worst case of the spec (§4): this is why the client sends back
/// every field. If this ever stops clearing, the test above proves nothing.
#[tokio::test]
async fn a_partial_put_clears_what_it_leaves_out() {
    let h = Harness::start().await;
    let email = "carla@partner.example";
    h.sim
        .state()
        .portal
        .insert_user(rich_user(email))
        .expect("an object");
    let response = reqwest::Client::new()
        .put(h.base.join("api/user").expect("url"))
        .header("X-API-Key", SIM_API_KEY)
        .json(&json!({
            "id": "3f2c7a10-1111-4c1e-9d2a-0123456789ab",
            "email": email,
            "name": "Carla",
            "role": 1,
        }))
        .send()
        .await
        .expect("an answer");
    assert_eq!(response.status().as_u16(), 200);
    let state = h.sim.state();
    let stored = state.portal.find(email).expect("still there");
    assert_eq!(stored["groups"], json!([]));
    assert_eq!(stored["canCreateNewUsers"], json!(false));
    assert_eq!(stored["department"], Value::Null);
    assert_eq!(stored["someFutureField"], Value::Null);
    assert!(
        stored.get("bypassFirewall").is_none(),
        "write-only: never listed"
    );
}

/// The write-only flags: stored from a POST, never in a GET, reset by a PUT that omits them.
#[tokio::test]
async fn emulator_write_only_flags_are_never_listed_and_reset_by_an_omitting_put() {
    let h = Harness::start().await;
    let key = Some(SIM_API_KEY);
    let email = "ivo@partner.example";
    let (status, _) = raw(
        &h,
        reqwest::Method::POST,
        "api/user",
        key,
        Some(json!({"email": email, "name": "Ivo", "role": 3, "bypassFirewall": true, "canExportReportOtherPages": true})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(stored_flags(&h, email), (true, true));
    let (_, listed) = raw(&h, reqwest::Method::GET, "api/user?email=ivo", key, None).await;
    assert!(
        listed.contains(email)
            && !listed.contains("bypassFirewall")
            && !listed.contains("canExportReportOtherPages"),
        "{listed}"
    );
    let id = h.sim.state().portal.find(email).expect("created")["id"].clone();
    let put = |body: Value| raw(&h, reqwest::Method::PUT, "api/user", key, Some(body));
    let (status, _) =
        put(json!({"id": id, "email": email, "name": "Ivo", "role": 3, "bypassFirewall": true}))
            .await;
    assert_eq!(status, 200);
    assert_eq!(
        stored_flags(&h, email),
        (true, false),
        "the omitted flag is reset"
    );
}

/// The write-only flags as the emulator stores them (never listed) for `email`.
fn stored_flags(h: &Harness, email: &str) -> (bool, bool) {
    let flags = h
        .sim
        .state()
        .portal
        .write_only_flags(email)
        .expect("registered");
    (flags["bypassFirewall"], flags["canExportReportOtherPages"])
}

#[tokio::test]
async fn stated_write_only_flags_are_sent_on_create_and_update_and_unstated_ones_never() {
    let h = Harness::start().await;
    let email = "flo@partner.example";
    let client = h.client_with_flags(WriteOnlyFlags {
        bypass_firewall: Some(true),
        can_export_report_other_pages: None,
    });
    client
        .create_user(&new_user(email, "Flo", Role::Viewer))
        .await
        .expect("created");
    assert_eq!(
        stored_flags(&h, email),
        (true, false),
        "the stated flag is sent"
    );

    // Set by hand in the portal; a PUT that keeps what it is not sent must keep it.
    {
        let mut state = h.sim.state();
        state.portal.put_keeps_missing = true;
        state
            .portal
            .set_write_only_flag(email, "canExportReportOtherPages", true);
        state
            .portal
            .set_write_only_flag(email, "bypassFirewall", false);
    }
    client
        .update_user(email, "Flo", Role::Contributor)
        .await
        .expect("updated");
    assert_eq!(
        stored_flags(&h, email),
        (true, true),
        "the stated flag is sent again, the unstated one is not sent at all"
    );

    // The strict emulator (the worst case of §4): an omitted write-only flag is reset.
    h.sim.state().portal.put_keeps_missing = false;
    client
        .update_user(email, "Flo", Role::Administrator)
        .await
        .expect("updated");
    assert_eq!(stored_flags(&h, email), (true, false));
}

#[tokio::test]
async fn without_stated_flags_nothing_write_only_is_sent() {
    let h = Harness::start().await;
    let email = "gil@partner.example";
    h.sim.state().portal.put_keeps_missing = true;
    h.client()
        .create_user(&new_user(email, "Gil", Role::Viewer))
        .await
        .expect("created");
    h.sim
        .state()
        .portal
        .set_write_only_flag(email, "bypassFirewall", true);
    h.client()
        .update_user(email, "Gil", Role::Administrator)
        .await
        .expect("updated");
    assert_eq!(stored_flags(&h, email), (true, false), "not sent: kept");
}

#[tokio::test]
async fn an_update_is_read_back_once_and_a_lost_field_fails_it_naming_the_loss() {
    let h = Harness::start().await;
    let email = "carla@partner.example";
    {
        let mut state = h.sim.state();
        state
            .portal
            .insert_user(rich_user(email))
            .expect("an object");
        // A portal whose PUT does not take groups nor the department.
        state.portal.put_resets = ["groups", "department"]
            .into_iter()
            .map(str::to_owned)
            .collect();
    }
    let err = h
        .client()
        .update_user(email, "Carla Dias", Role::Administrator)
        .await
        .expect_err("fields were lost");
    let PortalError::FieldsLost { email: who, fields } = &err else {
        panic!("expected FieldsLost, got {err:?}");
    };
    assert_eq!(who, email);
    let lost: Vec<(&str, Value, Option<Value>)> = fields
        .iter()
        .map(|f| (f.field.as_str(), f.before.clone(), f.after.clone()))
        .collect();
    assert_eq!(
        lost,
        vec![
            ("department", json!("BI "), Some(Value::Null)),
            (
                "groups",
                json!([
                    "6a0e2f11-0000-4000-8000-000000000002",
                    "6a0e2f11-0000-4000-8000-000000000003"
                ]),
                Some(json!([]))
            ),
        ]
    );
    let text = err.to_string();
    assert!(
        text.contains("changed 2 field(s)")
            && text.contains("department: \"BI \" → null")
            && text.contains("groups: [\"6a0e2f11")
            && text.contains("→ []"),
        "{text}"
    );
    assert!(!err.is_ambiguous());
    // The write happened: the role is stored; one GET before the PUT, one after.
    assert_eq!(
        h.sim.state().portal.find(email).expect("kept")["role"],
        json!(1)
    );
    let requests = h.requests();
    let methods: Vec<&str> = requests
        .iter()
        .map(|r| r.split(' ').next().unwrap_or(""))
        .collect();
    assert_eq!(methods, ["GET", "PUT", "GET"], "{requests:?}");
}

#[tokio::test]
async fn update_without_change_writes_nothing_and_missing_user_is_typed() {
    let h = Harness::start().await;
    h.sim
        .state()
        .portal
        .add_user("dan@partner.example", "Dan", 1);
    let client = h.client();
    client
        .update_user("DAN@partner.example", "Dan", Role::Administrator)
        .await
        .expect("nothing to do");
    assert_eq!(h.sim.state().portal.writes().updates, 0);

    let err = client
        .update_user("gone@partner.example", "Gone", Role::Administrator)
        .await
        .expect_err("no such user");
    assert!(
        matches!(&err, PortalError::UserNotFound { email, .. } if email == "gone@partner.example"),
        "{err:?}"
    );
}

#[tokio::test]
async fn delete_twice_reports_deleted_then_already_gone() {
    let h = Harness::start().await;
    h.sim
        .state()
        .portal
        .add_user("Eve@partner.example", "Eve", 1);
    let client = h.client();
    assert!(
        client
            .delete_user("eve@partner.example")
            .await
            .expect("deleted")
    );
    assert!(
        !client
            .delete_user("eve@partner.example")
            .await
            .expect("already gone")
    );
    assert!(h.sim.state().portal.is_empty());
    assert!(
        h.requests()
            .contains(&"DELETE /api/user/eve%40partner.example".to_owned()),
        "the address is one percent-encoded path segment: {:?}",
        h.requests()
    );
}

#[tokio::test]
async fn an_apostrophe_address_goes_through_every_operation() {
    let h = Harness::start().await;
    let client = h.client();
    let email = "o'brien@partner.example";
    client
        .create_user(&new_user(email, "Pat O'Brien", Role::WorkspaceContributor))
        .await
        .expect("created");
    let found = client
        .find_user("O'Brien@partner.example")
        .await
        .expect("a lookup")
        .expect("found");
    assert_eq!(found.email, email);
    assert_eq!(found.role, Some(Role::WorkspaceContributor));
    client
        .update_user(email, "Pat O'Brien", Role::Contributor)
        .await
        .expect("updated");
    assert_eq!(
        h.sim.state().portal.find(email).expect("stored")["role"],
        json!(2)
    );
    assert!(client.delete_user(email).await.expect("deleted"));
    assert!(
        h.requests()
            .contains(&"DELETE /api/user/o%27brien%40partner.example".to_owned()),
        "{:?}",
        h.requests()
    );
    assert!(h.sim.state().portal.is_empty());
}

#[tokio::test]
async fn a_wrong_key_gets_the_helpful_message() {
    let h = Harness::start().await;
    let err = h
        .client_with_key("not-the-key")
        .list_users()
        .await
        .expect_err("refused");
    assert!(matches!(err, PortalError::Unauthorized { .. }), "{err:?}");
    let text = err.to_string();
    // The hint names where the key actually came from (here: the environment variable).
    assert!(
        text.contains(
            "check the environment variable GUESTOPS_PORTAL_API_KEY / regenerate the key"
        ),
        "{text}"
    );
    assert!(!text.contains("portal.apiKeyFile"), "{text}");
    assert!(
        !text.contains("not-the-key"),
        "the key is never shown: {text}"
    );
    assert!(!format!("{:?}", h.client_with_key("not-the-key")).contains("not-the-key"));
}

#[tokio::test]
async fn a_key_without_the_endpoint_gets_the_permission_message() {
    let h = Harness::start().await;
    {
        let mut state = h.sim.state();
        state
            .portal
            .add_limited_key("read-only-key", &["GET /api/user"]);
        state.portal.add_user("fay@partner.example", "Fay", 1);
    }
    let client = h.client_with_key("read-only-key");
    assert_eq!(client.list_users().await.expect("may read").len(), 1);
    let err = client
        .delete_user("fay@partner.example")
        .await
        .expect_err("may not delete");
    let text = err.to_string();
    assert!(
        text.contains(
            "the API key lacks permission for DELETE /api/user/{email} (403): grant the user endpoints to the key"
        ),
        "{text}"
    );
    assert_eq!(h.sim.state().portal.len(), 1);
}

#[tokio::test]
async fn throttling_storms_are_ridden_out() {
    let h = Harness::start().await;
    {
        let mut state = h.sim.state();
        state.portal.set_page_size(10);
        for i in 0..60 {
            state
                .portal
                .add_user(&format!("t{i:02}@partner.example"), &format!("T {i:02}"), 1);
        }
        state.portal_faults.throttle_every = Some(2);
        state.portal_faults.retry_after = Some("0".to_owned());
    }
    let client = h.client();
    assert_eq!(client.list_users().await.expect("complete").len(), 60);
    client
        .create_user(&new_user("new@partner.example", "New", Role::Administrator))
        .await
        .expect("a throttled POST is retried");
    client
        .update_user("new@partner.example", "Newer", Role::Viewer)
        .await
        .expect("updated");
    assert!(
        client
            .delete_user("new@partner.example")
            .await
            .expect("deleted")
    );
    let state = h.sim.state();
    assert!(state.counters.throttled >= 5, "{:?}", state.counters);
    assert_eq!(state.portal.creates_for("new@partner.example"), 1);
}

#[tokio::test]
async fn a_page_that_keeps_failing_fails_the_whole_listing() {
    let h = Harness::start().await;
    {
        let mut state = h.sim.state();
        state.portal.set_page_size(5);
        for i in 0..20 {
            state
                .portal
                .add_user(&format!("f{i:02}@partner.example"), &format!("F {i:02}"), 1);
        }
        state.portal_faults.fail.push(FailRule {
            method: Some("GET".to_owned()),
            path_prefix: "/api/user".to_owned(),
            query_contains: Some("pageNumber=3".to_owned()),
            status: 500,
            times: None,
            after_processing: false,
        });
    }
    let err = h.client().list_users().await.expect_err("incomplete");
    assert_eq!(err.status(), Some(500));
    assert!(err.to_string().contains("page 3"), "{err}");
    // GET is idempotent: retried (4 retries) before giving up.
    assert_eq!(h.sim.state().counters.injected_failures, 5);
}

#[tokio::test]
async fn a_listing_that_never_ends_hits_the_page_cap() {
    let h = Harness::start().await;
    {
        let mut state = h.sim.state();
        state.portal.set_page_size(1);
        for i in 0..5 {
            state
                .portal
                .add_user(&format!("c{i}@partner.example"), &format!("C {i}"), 1);
        }
    }
    let err = h
        .client()
        .with_max_pages(3)
        .list_users()
        .await
        .expect_err("refused as incomplete");
    assert!(
        matches!(err, PortalError::PageCapExceeded { max_pages: 3, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_create_that_may_have_happened_is_not_repeated() {
    let h = Harness::start().await;
    h.sim.state().portal_faults.fail.push(FailRule {
        method: Some("POST".to_owned()),
        path_prefix: "/api/user".to_owned(),
        query_contains: None,
        status: 503,
        times: Some(1),
        after_processing: true,
    });
    let err = h
        .client()
        .create_user(&new_user("gil@partner.example", "Gil", Role::Administrator))
        .await
        .expect_err("the answer was a 503");
    assert!(err.is_ambiguous(), "{err:?}");
    assert_eq!(h.sim.state().portal.creates_for("gil@partner.example"), 1);
}

#[tokio::test]
async fn a_malformed_user_fails_the_listing() {
    let h = Harness::start().await;
    h.sim
        .state()
        .portal
        .insert_user(json!({"email": "odd@partner.example", "name": "Odd", "role": "admin"}))
        .expect("an object");
    let err = h.client().list_users().await.expect_err("fail closed");
    let text = err.to_string();
    assert!(matches!(err, PortalError::Malformed { .. }), "{err:?}");
    assert!(text.contains("odd@partner.example"), "{text}");
    assert!(text.contains("role"), "{text}");
}

#[test]
fn plain_http_is_refused_off_loopback() {
    let config = PortalConfig {
        base_url: url::Url::parse("http://api.powerembedded.com.br").expect("url"),
        api_key: SecretSource::Env("UNUSED".to_owned()),
        concurrency: 2,
        max_writes_per_second: 2.0,
        role_codes: RoleCodes::default(),
        known_admin: None,
        write_only_flags: WriteOnlyFlags::default(),
    };
    let err = PortalClient::new(
        &config.portal_settings(),
        env_key("k"),
        RetryPolicy::default(),
    )
    .expect_err("refused");
    assert!(err.to_string().contains("https://"), "{err}");
}

#[tokio::test]
async fn no_answer_is_a_transport_error_that_names_the_operation() {
    // A port that was listening and is now closed.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let config = PortalConfig {
        base_url: url::Url::parse(&format!("http://{addr}/")).expect("url"),
        api_key: SecretSource::Env("UNUSED".to_owned()),
        concurrency: 1,
        max_writes_per_second: 1000.0,
        role_codes: RoleCodes::default(),
        known_admin: None,
        write_only_flags: WriteOnlyFlags::default(),
    };
    let client =
        PortalClient::new(&config.portal_settings(), env_key("k"), fast_retry()).expect("client");
    let err = client
        .delete_user("hal@partner.example")
        .await
        .expect_err("nobody listens");
    assert!(
        matches!(
            &err,
            PortalError::Transport {
                maybe_sent: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_ambiguous(), "a refused connection sent nothing");
    let text = err.to_string();
    assert!(text.contains("DELETE /api/user/{email}"), "{text}");
    assert!(text.contains("hal@partner.example"), "{text}");
}

// The emulator itself: other implementations will be checked against it, so its strictness
// is part of the contract.

async fn raw(
    h: &Harness,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, String) {
    let mut request = reqwest::Client::new().request(method, h.base.join(path).expect("url"));
    if let Some(key) = key {
        request = request.header("X-API-Key", key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("an answer");
    let status = response.status().as_u16();
    (status, response.text().await.expect("a body"))
}

#[tokio::test]
async fn emulator_requires_the_key() {
    let h = Harness::start().await;
    let (status, body) = raw(&h, reqwest::Method::GET, "api/user", None, None).await;
    assert_eq!(status, 401);
    assert!(body.contains("\"message\""), "{body}");
    let (status, _) = raw(&h, reqwest::Method::GET, "api/user", Some("wrong"), None).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn emulator_pages_and_filters_like_the_spec() {
    let h = Harness::start().await;
    {
        let mut state = h.sim.state();
        state.portal.set_page_size(2);
        state.portal.add_user("banana@x.example", "Banana Split", 3);
        state.portal.add_user("ana@x.example", "Ana", 1);
        state.portal.add_user("zoe@y.example", "Zoe", 1);
    }
    let key = Some(SIM_API_KEY);
    let (status, body) = raw(
        &h,
        reqwest::Method::GET,
        "api/user?EMAIL=ANA%40X&pageSize=100",
        key,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let page: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(page["pageIndex"], json!(1));
    assert_eq!(page["totalPages"], json!(1));
    assert_eq!(page["hasNextPage"], json!(false));
    assert_eq!(page["hasPreviousPage"], json!(false));
    let emails: Vec<&str> = page["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|u| u["email"].as_str())
        .collect();
    assert_eq!(
        emails,
        ["ana@x.example", "banana@x.example"],
        "contains match, pageSize ignored"
    );
    assert!(page["data"][0]["canDisplayVisualHeaders"].is_boolean());
    assert!(page["data"][0]["reportNames"].is_array());

    let (_, body) = raw(&h, reqwest::Method::GET, "api/user?pageNumber=2", key, None).await;
    let page: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(page["pageIndex"], json!(2));
    assert_eq!(page["totalPages"], json!(2));
    assert_eq!(page["hasNextPage"], json!(false));
    assert_eq!(page["hasPreviousPage"], json!(true));
    assert_eq!(page["data"][0]["email"], json!("zoe@y.example"));

    let (_, body) = raw(&h, reqwest::Method::GET, "api/user?name=split", key, None).await;
    let page: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(page["data"].as_array().map(Vec::len), Some(1));

    let (status, _) = raw(&h, reqwest::Method::GET, "api/user?pageNumber=0", key, None).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn emulator_validates_creates_and_answers_an_empty_body() {
    let h = Harness::start().await;
    let key = Some(SIM_API_KEY);
    let post = |body: Value| raw(&h, reqwest::Method::POST, "api/user", key, Some(body));
    let (status, body) = post(json!({"email": "ivy@partner.example", "name": "Ivy"})).await;
    assert_eq!(status, 400, "role is required");
    assert!(
        body.contains("\"errors\"") && body.contains("Role"),
        "{body}"
    );
    let (status, _) = post(json!({"email": "ivy@partner.example", "name": "Ivy", "role": 5})).await;
    assert_eq!(status, 400, "unknown role code");
    let (status, _) = post(json!({"email": "ivy@partner.example", "name": " ", "role": 1})).await;
    assert_eq!(status, 400, "name is required");
    let (status, body) = post(json!({
        "email": "ivy@partner.example", "name": "Ivy", "role": 1,
        "sendWelcomeEmail": false, "groups": ["g1"]
    }))
    .await;
    assert_eq!((status, body.as_str()), (200, ""));
    let state = h.sim.state();
    let stored = state.portal.find("ivy@partner.example").expect("created");
    assert_eq!(stored["groups"], json!(["g1"]));
    assert!(stored.get("sendWelcomeEmail").is_none(), "write-only");
    assert!(
        uuid::Uuid::parse_str(stored["id"].as_str().expect("id")).is_ok(),
        "a GUID id"
    );
    assert_eq!(state.portal.writes().creates, 1);
}

#[tokio::test]
async fn emulator_put_refuses_unknown_ids_and_email_changes() {
    let h = Harness::start().await;
    let id = h.sim.state().portal.add_user("jo@partner.example", "Jo", 1);
    let key = Some(SIM_API_KEY);
    let put = |body: Value| raw(&h, reqwest::Method::PUT, "api/user", key, Some(body));
    let (status, _) = put(json!({
        "id": uuid::Uuid::new_v4().to_string(), "email": "jo@partner.example", "name": "Jo", "role": 1
    }))
    .await;
    assert_eq!(status, 404);
    let (status, body) =
        put(json!({"id": id, "email": "joe@partner.example", "name": "Jo", "role": 1})).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = put(json!({"email": "jo@partner.example", "name": "Jo", "role": 1})).await;
    assert_eq!(status, 400, "id is required");
    let state = h.sim.state();
    assert_eq!(state.portal.writes().updates, 0);
    assert_eq!(
        state.portal.find("jo@partner.example").expect("kept")["email"],
        json!("jo@partner.example")
    );
}

#[tokio::test]
async fn emulator_delete_matches_the_whole_address() {
    let h = Harness::start().await;
    h.sim
        .state()
        .portal
        .add_user("banana@x.example", "Banana", 3);
    let key = Some(SIM_API_KEY);
    let (status, body) = raw(
        &h,
        reqwest::Method::DELETE,
        "api/user/ana%40x.example",
        key,
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body, r#"{"message":"User not found"}"#);
    let (status, _) = raw(
        &h,
        reqwest::Method::DELETE,
        "api/user/not-an-address",
        key,
        None,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = raw(
        &h,
        reqwest::Method::DELETE,
        "api/user/BANANA%40x.example",
        key,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(h.sim.state().portal.is_empty());
}

#[tokio::test]
async fn a_plus_address_is_not_mangled_into_a_space() {
    let h = Harness::start().await;
    h.sim
        .state()
        .portal
        .add_user("kim+admin@partner.example", "Kim", 1);
    let client = h.client();
    let found = client
        .find_user("kim+admin@partner.example")
        .await
        .expect("a lookup")
        .expect("found");
    assert_eq!(found.email, "kim+admin@partner.example");
    assert!(
        client
            .delete_user("kim+admin@partner.example")
            .await
            .expect("deleted")
    );
    assert!(h.sim.state().portal.is_empty());
}

#[tokio::test]
async fn a_redirect_to_another_origin_is_not_followed_and_the_key_stays_home() {
    // "The other origin": answers like a portal would, so that a followed redirect succeeds.
    let other = support::RawServer::start(|_| {
        let body = r#"{"pageIndex":1,"totalPages":1,"hasNextPage":false,"data":[]}"#;
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    })
    .await;
    let target = format!("http://{}/api/user?pageNumber=1", other.addr);
    let portal = support::RawServer::start(move |head| {
        let status = if head.starts_with("GET") {
            "302 Found"
        } else {
            "307 Temporary Redirect"
        };
        format!(
            "HTTP/1.1 {status}\r\nLocation: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
    })
    .await;
    let settings = guestops::remote::portal::PortalSettings {
        base_url: url::Url::parse(&format!("http://{}/", portal.addr)).expect("url"),
        concurrency: 1,
        write_rate: fast_writes(),
        role_codes: RoleCodes::default(),
        write_only_flags: WriteOnlyFlags::default(),
    };
    let client = PortalClient::new(&settings, env_key("the-secret-key"), fast_retry())
        .expect("a loopback client");

    let err = client
        .list_users()
        .await
        .expect_err("a redirect is not success");
    assert!(
        matches!(&err, PortalError::Redirected { status: 302, location, .. } if location.contains(&other.addr.to_string())),
        "{err:?}"
    );
    let text = guestops::error::chain(&err);
    assert!(text.contains("not followed"), "{text}");
    let err = client
        .create_user(&new_user("ana@partner.example", "Ana", Role::Viewer))
        .await
        .expect_err("a redirected POST is not success");
    assert!(
        matches!(&err, PortalError::Redirected { status: 307, .. }),
        "{err:?}"
    );

    // The portal got both requests, with the key; the other origin got nothing at all.
    let heads = portal.heads();
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert!(
        heads
            .iter()
            .all(|h| h.to_ascii_lowercase().contains("x-api-key: the-secret-key")),
        "{heads:?}"
    );
    assert!(other.heads().is_empty(), "{:?}", other.heads());
}

#[tokio::test]
async fn a_refused_connection_fails_at_once_naming_the_address() {
    // A port that was listening and is now closed.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let settings = guestops::remote::portal::PortalSettings {
        base_url: url::Url::parse(&format!("http://{addr}/")).expect("url"),
        concurrency: 1,
        write_rate: fast_writes(),
        role_codes: RoleCodes::default(),
        write_only_flags: WriteOnlyFlags::default(),
    };
    let client = PortalClient::new(&settings, env_key("k"), fast_retry()).expect("client");
    let err = client.list_users().await.expect_err("nobody listens");
    let PortalError::Transport { source, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(source.attempts, 1, "a refused connection is not retried");
    assert_eq!(
        source.kind,
        guestops::remote::http::TransportKind::ConnectionRefused
    );
    let text = guestops::error::chain(&err);
    assert!(text.contains(&addr.to_string()), "{text}");
    assert!(text.contains("connection refused"), "{text}");
    assert!(text.contains("GET /api/user"), "{text}");
    assert!(!err.is_ambiguous(), "nothing was sent");
}

#[tokio::test]
async fn a_throttle_beyond_the_budget_carries_the_portals_retry_after() {
    let h = Harness::start().await;
    {
        let mut state = h.sim.state();
        state.portal_faults.throttle_every = Some(1);
        // Longer than the whole retry budget of the client (5 s): not waited inside.
        state.portal_faults.retry_after = Some("120".to_owned());
    }
    let err = h.client().list_users().await.expect_err("throttled");
    assert!(matches!(err, PortalError::Throttled { .. }), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));
    assert!(err.to_string().contains("Retry-After 120"), "{err}");
    assert_eq!(
        h.sim.state().counters.portal_requests,
        1,
        "a Retry-After beyond the budget is handed up at once"
    );
}

// Paced writes (`portal.maxWritesPerSecond`), on tokio's paused clock: virtual time jumps from
// timer to timer, so these tests measure pacing in virtual seconds and take no wall time.

/// No retries, and attempt timeouts far beyond any pacing wait.
fn patient_retry() -> RetryPolicy {
    RetryPolicy {
        max_retries: 0,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(10),
        max_total_wait: Duration::from_secs(60),
        timeout: Duration::from_secs(3600),
    }
}

impl Harness {
    fn paced_client(&self, max_writes_per_second: f64) -> PortalClient {
        let config = PortalConfig {
            max_writes_per_second,
            concurrency: 4,
            ..self.config()
        };
        PortalClient::new(
            &config.portal_settings(),
            env_key(SIM_API_KEY),
            patient_retry(),
        )
        .expect("a loopback client")
    }
}

#[tokio::test(start_paused = true)]
async fn concurrent_registrations_are_spaced_by_max_writes_per_second() {
    let h = Harness::start().await;
    let client = h.paced_client(2.0);
    let start = tokio::time::Instant::now();
    let registrations: Vec<_> = (0..6)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let email = format!("paced{i}@partner.example");
                client
                    .create_user(&new_user(&email, "Paced", Role::Administrator))
                    .await
                    .expect("registered");
                start.elapsed()
            })
        })
        .collect();

    // 2 writes per second, one at a time: slots at 0, 0.5 s, 1 s, … Within the first 1.2 s
    // at most three registrations reach the portal, although four could be in flight.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let early = h.sim.state().counters.writes;
    assert!(
        (1..=3).contains(&early),
        "{early} writes in the first 1.2 s"
    );

    let mut done = Vec::new();
    for registration in registrations {
        done.push(registration.await.expect("a registration"));
    }
    done.sort();
    assert_eq!(h.sim.state().counters.writes, 6);
    assert!(
        done[5] >= Duration::from_millis(2500),
        "6 writes at 2 per second take at least 2.5 s: {done:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_on_a_read_pauses_the_writes() {
    let h = Harness::start().await;
    {
        let mut state = h.sim.state();
        state.portal_faults.retry_after = Some("30".to_owned());
        state.portal_faults.fail.push(FailRule {
            method: Some("GET".to_owned()),
            path_prefix: "/api/user".to_owned(),
            query_contains: None,
            status: 429,
            times: Some(1),
            after_processing: false,
        });
    }
    let client = h.paced_client(1000.0);
    let start = tokio::time::Instant::now();
    let err = client
        .find_user("ana@partner.example")
        .await
        .expect_err("throttled, no retries allowed");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)), "{err:?}");

    // Another writer of the same client (a clone shares the pacer) waits out the Retry-After.
    let writer = client.clone();
    let registration = tokio::spawn(async move {
        writer
            .create_user(&new_user("ana@partner.example", "Ana", Role::Administrator))
            .await
            .expect("registered after the pause");
        start.elapsed()
    });
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert_eq!(
        h.sim.state().portal.creates_for("ana@partner.example"),
        0,
        "no write during the pause"
    );
    let registered_at = registration.await.expect("the registration");
    assert!(
        registered_at >= Duration::from_secs(30),
        "{registered_at:?}"
    );
    assert_eq!(h.sim.state().portal.creates_for("ana@partner.example"), 1);
}

#[tokio::test]
async fn a_connection_dropped_after_a_registration_is_an_ambiguous_failure_the_listing_resolves() {
    let h = Harness::start().await;
    h.sim.state().portal_faults.drop_every = Some(1);
    let client = h.client();
    let err = client
        .create_user(&new_user("ana@partner.example", "Ana", Role::Viewer))
        .await
        .expect_err("the connection was dropped");
    assert!(err.is_ambiguous(), "{err}");
    {
        let state = h.sim.state();
        // The service did the work: the simulator logged what it wrote, and that it dropped.
        assert_eq!(state.portal.creates_for("ana@partner.example"), 1);
        let last = state.requests.back().expect("logged");
        assert!(last.dropped, "{last:?}");
        assert_eq!(
            last.wrote,
            Some(guestops::sim::Wrote {
                kind: guestops::sim::WriteKind::Register,
                address: "ana@partner.example".to_owned(),
            })
        );
        assert_eq!(state.counters.dropped, 1);
    }
    h.sim.state().portal_faults.drop_every = None;
    let users = client.list_users().await.expect("a listing");
    assert_eq!(users.len(), 1);
    // A whole listing page is marked as the first and the last of the portal's listing.
    let state = h.sim.state();
    let page = state.requests.back().and_then(|r| r.listing.clone());
    assert_eq!(
        page,
        Some(guestops::sim::ListingPage {
            listing: "portal users".to_owned(),
            first: true,
            last: true,
        })
    );
}

#[tokio::test]
async fn a_progress_hook_sees_every_page_of_the_listing_not_the_lookups() {
    let h = Harness::start().await;
    {
        let mut state = h.sim.state();
        state.portal.set_page_size(10);
        for i in 0..25 {
            state
                .portal
                .add_user(&format!("u{i}@partner.example"), "U", 3);
        }
    }
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let client = h
        .client()
        .with_progress(guestops::remote::ReadProgress::new(move |page| {
            sink.lock()
                .expect("not poisoned")
                .push((page.pages, page.items, page.done));
        }));
    assert_eq!(client.list_users().await.expect("a listing").len(), 25);
    client
        .find_user("u3@partner.example")
        .await
        .expect("a look-up");
    assert_eq!(
        *seen.lock().expect("not poisoned"),
        vec![(1, 10, false), (2, 20, false), (3, 25, true)]
    );
}
