use chrono::{TimeZone, Utc};

use super::*;
use crate::reconcile::plan::{Action, System};
use crate::remote::graph::fake::{FakeTenant, Fault, TenantOp};
use crate::remote::portal::fake::FakePortal;

fn portal_user(email: &str, name: &str, role: Option<Role>, code: Option<i64>) -> PortalUser {
    PortalUser {
        id: format!("id-{email}"),
        email: email.to_owned(),
        name: name.to_owned(),
        role_code: code,
        role,
    }
}

fn guest(id: &str, email: &str, name: &str) -> DirectoryUser {
    DirectoryUser {
        id: id.to_owned(),
        display_name: Some(name.to_owned()),
        mail: Some(email.to_owned()),
        user_type: Some("Guest".to_owned()),
        ..DirectoryUser::default()
    }
}

/// A portal with admins of every kind and a tenant holding some of them.
fn seeded() -> (FakeTenant, FakePortal) {
    let tenant = FakeTenant::new();
    let portal = FakePortal::new();
    tenant.add_guest("ana.silva@partner.example", "Ana Silva");
    tenant.add_guest("bob.stone@vendor.example", "Bob Stone");
    tenant.add_member("dana.ops@contoso.example", "Dana Ops");
    tenant.add_guest("victor@partner.example", "Victor Viewer");
    portal.add_user(
        "ana.silva@partner.example",
        "Ana Silva",
        Role::Administrator,
    );
    portal.add_user("Bob.Stone@vendor.example", "Bob Stone", Role::Contributor);
    portal.add_user("dana.ops@contoso.example", "Dana Ops", Role::Administrator);
    portal.add_user(
        "carl@vendor.example",
        "Carl Neves",
        Role::WorkspaceContributor,
    );
    portal.add_user("victor@partner.example", "Victor Viewer", Role::Viewer);
    (tenant, portal)
}

async fn import(tenant: &FakeTenant, portal: &FakePortal, options: &ImportOptions) -> Import {
    let observed = observe(tenant, portal, 4).await.expect("observe");
    build(&observed, options)
}

#[tokio::test]
async fn admins_with_a_tenant_account_are_written_and_viewers_are_not() {
    let (tenant, portal) = seeded();
    let import = import(&tenant, &portal, &ImportOptions::default()).await;
    let yaml = import.to_yaml();
    insta::assert_snapshot!(yaml, @r"
    # Written by `guestops import` from the portal's admins and the tenant's accounts.
    # Every entry is an admin of the portal: review each one before committing.
    apiVersion: guestops/v1
    defaults:
      role: administrator
    users:
      - email: ana.silva@partner.example
        name: Ana Silva
      - email: Bob.Stone@vendor.example
        name: Bob Stone
        role: contributor
      # No account in the tenant: uncommenting this entry sends an invitation.
      # - email: carl@vendor.example
      #   name: Carl Neves
      #   role: workspace-contributor
      # An internal member of the tenant: no invitation needed.
      - email: dana.ops@contoso.example
        name: Dana Ops
    ");
    assert_eq!(import.viewers, 1);
    assert_eq!(import.written(), 3);
    assert_eq!(import.commented(), 1);
    assert!(!yaml.contains("victor"), "viewers are not admins");

    let parsed = spec::parse(yaml.as_bytes(), &SpecPolicy::default());
    assert!(!parsed.has_errors(), "{:?}", parsed.diagnostics);
    let desired = parsed.desired.expect("valid");
    assert_eq!(desired, {
        let mut expected = import.desired();
        for (key, user) in &mut expected.users {
            user.line = desired.users[key].line;
        }
        expected
    });
}

#[tokio::test]
async fn applying_the_imported_file_invites_and_registers_nobody() {
    let (tenant, portal) = seeded();
    let import = import(&tenant, &portal, &ImportOptions::default()).await;
    let parsed = spec::parse(import.to_yaml().as_bytes(), &SpecPolicy::default());
    let desired = parsed.desired.expect("valid");
    let settings = crate::reconcile::Settings {
        clock: || Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap(),
        ..crate::reconcile::Settings::default()
    };
    let ctx = crate::reconcile::Context {
        tenant: &tenant,
        portal: &portal,
        settings: &settings,
    };
    let desired = crate::reconcile::Desired {
        state: desired,
        revision: crate::desired::source::Revision {
            id: "imported".into(),
            short: "imported".into(),
            author: String::new(),
            time: Utc::now(),
            subject: String::new(),
        },
        branch: None,
    };
    let mode = crate::reconcile::Mode::DryRun(State::default());
    let plan = crate::reconcile::run_once(&ctx, &desired, mode, &Default::default())
        .await
        .expect("plan")
        .plan;
    assert!(!plan.is_refused(), "{:?}", plan.refusals);
    let remote: Vec<&Action> = plan
        .changes
        .iter()
        .map(|c| &c.action)
        .filter(|a| a.system() != System::State)
        .collect();
    assert!(remote.is_empty(), "only adoptions expected: {remote:?}");
    assert!(
        plan.changes
            .iter()
            .any(|c| matches!(c.action, Action::AdoptGuest { .. })),
        "the guests are adopted: {:?}",
        plan.changes
    );
}

#[tokio::test]
async fn uninvited_admins_can_be_included_or_left_out() {
    let (tenant, portal) = seeded();
    let include = ImportOptions {
        uninvited: Uninvited::Include,
        ..ImportOptions::default()
    };
    let yaml = import(&tenant, &portal, &include).await.to_yaml();
    assert!(
        yaml.contains("\n  - email: carl@vendor.example\n"),
        "{yaml}"
    );
    assert!(!yaml.contains("uncommenting"), "{yaml}");

    let skip = ImportOptions {
        uninvited: Uninvited::Skip,
        ..ImportOptions::default()
    };
    let skipped = import(&tenant, &portal, &skip).await;
    assert!(!skipped.to_yaml().contains("carl"));
    assert_eq!(skipped.uninvited_skipped, 1);
    assert!(
        skipped
            .summary()
            .contains("1 without a tenant account left out")
    );
}

#[tokio::test]
async fn an_incomplete_read_fails_instead_of_writing_a_short_file() {
    let (tenant, portal) = seeded();
    tenant.inject(Fault::new(TenantOp::ListGuests, 500).times(10));
    let err = observe(&tenant, &portal, 4)
        .await
        .expect_err("a failed guest listing fails the import");
    assert!(err.to_string().contains("tenant"), "{err}");
}

#[test]
fn entries_validation_would_reject_are_listed_with_why() {
    let observed = Observed {
        guests: vec![
            guest("g1", "ok@partner.example", "Ok"),
            guest("g2", "eve@elsewhere.example", "Eve"),
            guest("g3", "nameless@partner.example", ""),
            guest("g4", "dup@partner.example", "Dup"),
        ],
        lookups: Vec::new(),
        deleted: Vec::new(),
        portal_users: vec![
            portal_user(
                "ok@partner.example",
                "Ok",
                Some(Role::Administrator),
                Some(1),
            ),
            portal_user(
                "eve@elsewhere.example",
                "Eve",
                Some(Role::Administrator),
                Some(1),
            ),
            portal_user(
                "nameless@partner.example",
                " ",
                Some(Role::Contributor),
                Some(2),
            ),
            portal_user("odd@partner.example", "Odd", None, Some(9)),
            portal_user(
                "dup@partner.example",
                "Dup",
                Some(Role::Administrator),
                Some(1),
            ),
            PortalUser {
                id: "zz".to_owned(),
                ..portal_user(
                    "DUP@partner.example",
                    "Dup 2",
                    Some(Role::Contributor),
                    Some(2),
                )
            },
        ],
    };
    let options = ImportOptions {
        allowed_domains: vec!["partner.example".to_owned()],
        ..ImportOptions::default()
    };
    let import = build(&observed, &options);
    let written: Vec<&str> = import.users.iter().map(|u| u.email.as_str()).collect();
    assert_eq!(written, ["dup@partner.example", "ok@partner.example"]);
    let reasons: BTreeMap<&str, String> = import
        .skipped
        .iter()
        .map(|s| (s.email.as_str(), s.reason.to_string()))
        .collect();
    assert!(
        reasons["eve@elsewhere.example"].contains("elsewhere.example"),
        "{reasons:?}"
    );
    assert!(
        reasons["nameless@partner.example"].contains("name"),
        "{reasons:?}"
    );
    assert!(
        reasons["odd@partner.example"].contains("role code 9"),
        "{reasons:?}"
    );
    assert!(reasons["DUP@partner.example"].contains("second portal registration"));
    let yaml = import.to_yaml();
    assert!(
        yaml.contains("# - odd@partner.example (Odd): portal role code 9"),
        "{yaml}"
    );
    let parsed = spec::parse(
        yaml.as_bytes(),
        &SpecPolicy {
            allowed_domains: options.allowed_domains.clone(),
        },
    );
    assert!(!parsed.has_errors(), "{:?}\n{yaml}", parsed.diagnostics);
}

#[test]
fn names_that_look_like_yaml_syntax_survive_the_round_trip() {
    let names = [
        "O'Brien, Seán",
        "- dash first",
        "true",
        "42",
        "Key: value",
        "with # hash",
        "\"quoted\"",
        "back\\slash",
        "@handle",
        "null",
        "trailing:",
        "tab\there",
    ];
    let observed = Observed {
        guests: names
            .iter()
            .enumerate()
            .map(|(i, _)| guest(&format!("g{i}"), &format!("u{i}@p.example"), "x"))
            .collect(),
        lookups: Vec::new(),
        deleted: Vec::new(),
        portal_users: names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                portal_user(
                    &format!("u{i}@p.example"),
                    n,
                    Some(Role::Administrator),
                    Some(1),
                )
            })
            .chain([portal_user(
                "o'brien@p.example",
                "Pat",
                Some(Role::Administrator),
                Some(1),
            )])
            .collect(),
    };
    let include = ImportOptions {
        uninvited: Uninvited::Include,
        ..ImportOptions::default()
    };
    let import = build(&observed, &include);
    let yaml = import.to_yaml();
    let parsed = spec::parse(yaml.as_bytes(), &SpecPolicy::default());
    let desired = parsed
        .desired
        .unwrap_or_else(|| panic!("{:?}\n{yaml}", parsed.diagnostics));
    for (i, name) in names.iter().enumerate() {
        let written = import
            .users
            .iter()
            .find(|u| u.email == format!("u{i}@p.example"));
        match written {
            Some(user) => assert_eq!(desired.users[&format!("u{i}@p.example")].name, user.name),
            None => {
                // Only a name validation rejects may be left out, and then it is listed.
                let skipped = import
                    .skipped
                    .iter()
                    .find(|s| s.email == format!("u{i}@p.example"))
                    .unwrap_or_else(|| panic!("{name:?} neither written nor listed"));
                assert!(matches!(skipped.reason, SkipReason::Invalid(_)), "{name:?}");
            }
        }
    }
    assert!(desired.users.contains_key("o'brien@p.example"), "{yaml}");
}

#[test]
fn the_order_of_the_listings_does_not_change_the_file() {
    let (a, b) = (
        portal_user("a@p.example", "A", Some(Role::Administrator), Some(1)),
        portal_user("b@p.example", "B", Some(Role::Contributor), Some(2)),
    );
    let forward = Observed {
        portal_users: vec![a.clone(), b.clone()],
        ..Observed::default()
    };
    let backward = Observed {
        portal_users: vec![b, a],
        ..Observed::default()
    };
    let options = ImportOptions::default();
    assert_eq!(
        build(&forward, &options).to_yaml(),
        build(&backward, &options).to_yaml()
    );
}

#[test]
fn an_empty_portal_gives_a_valid_empty_file() {
    let import = build(&Observed::default(), &ImportOptions::default());
    let yaml = import.to_yaml();
    let parsed = spec::parse(yaml.as_bytes(), &SpecPolicy::default());
    assert!(!parsed.has_errors(), "{:?}\n{yaml}", parsed.diagnostics);
    assert_eq!(import.summary(), "0 admin(s) written");
}
