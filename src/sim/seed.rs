//! Seeding the emulators: unrelated bulk users (a realistic tenant size) and the demo scenario
//! that `examples/users.yaml` meets.

use serde_json::json;

use super::Sim;
use super::graph::{SIM_TENANT_DOMAIN, SimUser};

/// The tenant domain of the simulator.
pub const TENANT_DOMAIN: &str = SIM_TENANT_DOMAIN;
/// The client secret the simulator's token endpoint accepts.
pub const CLIENT_SECRET: &str = super::graph::SIM_CLIENT_SECRET;
/// The `X-API-Key` the simulated portal accepts.
pub const API_KEY: &str = super::portal::SIM_API_KEY;

/// `examples/users.yaml`: the desired state the demo applies.
pub const DEMO_USERS_YAML: &str = include_str!("../../examples/users.yaml");

/// Adds `guests` unrelated guests (every third one still pending) and `portal_users`
/// unrelated portal viewers.
pub fn unrelated(sim: &Sim, guests: usize, portal_users: usize) {
    let mut state = sim.state();
    for n in 0..guests {
        let email = format!("guest{n:05}@supplier{}.example", n % 17);
        let mut user = SimUser::guest(&email, &format!("Guest {n:05}"), TENANT_DOMAIN);
        if n % 3 != 0 {
            user.external_user_state = Some("Accepted".into());
        }
        state.graph.insert_user(user);
    }
    for n in 0..portal_users {
        state.portal.add_user(
            &format!("viewer{n:04}@customer{}.example", n % 5),
            &format!("Viewer {n:04}"),
            3,
        );
    }
}

/// The users that `examples/users.yaml` meets in the demo:
/// - Bob is already a guest (address in another letter case) and a portal **viewer** with
///   groups, reports and flags: guestops adopts him and changes only his role;
/// - Carla is a guest whose `mail` is another address: she is matched by `otherMails`;
/// - Dana is an internal **member** of the tenant: never invited, only registered;
/// - Ana and O'Brien do not exist anywhere yet.
pub fn demo_scenario(sim: &Sim) {
    let mut state = sim.state();
    let mut bob = SimUser::guest("bob.stone@vendor.example", "Bob Stone", TENANT_DOMAIN);
    bob.external_user_state = Some("Accepted".into());
    state.graph.insert_user(bob);

    let mut carla = SimUser::guest(
        "cmendes@partner-mail.example",
        "Carla Mendes",
        TENANT_DOMAIN,
    );
    carla.other_mails = vec![
        "cmendes@partner-mail.example".into(),
        "Carla.Mendes@partner.example".into(),
    ];
    carla.external_user_state = Some("Accepted".into());
    state.graph.insert_user(carla);

    state.graph.insert_user(SimUser::member(
        "dana.admin@contoso.example",
        Some("dana.admin@contoso.example"),
        "Dana Admin",
    ));

    let mut bob_portal = super::portal::default_user("bob.stone@VENDOR.example", "Bob Stone", 3);
    bob_portal.insert(
        "groups".into(),
        json!([
            "7d1f3a52-0c2b-4bfa-9a57-1f5e0c9b2a10",
            "b0b0b0b0-1111-4222-8333-944455556666"
        ]),
    );
    bob_portal.insert(
        "reports".into(),
        json!([
            "4e1c9f0a-8d2b-4c3e-9f1a-2b3c4d5e6f70",
            "5f2d0a1b-9e3c-4d4f-8a2b-3c4d5e6f7081",
            "6a3e1b2c-0f4d-4e5a-9b3c-4d5e6f708192"
        ]),
    );
    bob_portal.insert("department".into(), json!("BI "));
    bob_portal.insert("canExportReport".into(), json!(true));
    // The seed data is well-formed: insert_user only rejects objects without an email.
    let _ = state
        .portal
        .insert_user(serde_json::Value::Object(bob_portal));
}
