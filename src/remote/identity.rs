//! Which account holds which address: the one definition used by the Graph client (the
//! lookup filter and the exact re-match of its results), the in-memory Graph fake and the
//! plan (`GuestIndex`, and the filter of relevant users).
//!
//! Owns: normalising an address ([`normalize_email`]: trimmed, lower-cased — Unicode, not only
//! ASCII — the key of `users.yaml` and of state), the guest UPN form
//! `local_domain#EXT#@tenant` ([`guest_upn`], [`guest_upn_local_part`]) and the addresses an
//! account holds ([`keys`], [`holds_address`]): `mail`, every `otherMails`, every
//! `identities[].issuerAssignedId`, and the UPN — as a guest UPN (`…#EXT#@…`, matched by its
//! `local_domain` part) or, without that form, as an address.
//!
//! Must not: do I/O, or be used by the simulator (`crate::sim` keeps its own matching,
//! written from the spec, so that the two can disagree and a test can notice).

use std::borrow::Cow;

use super::graph::DirectoryUser;

/// The identity key of an address: trimmed and lower-cased.
pub fn normalize_email(address: &str) -> String {
    normalized(address).into_owned()
}

/// [`normalize_email`], borrowing when `address` already is normalized.
pub fn normalized(address: &str) -> Cow<'_, str> {
    let trimmed = address.trim();
    if trimmed.chars().any(char::is_uppercase) {
        Cow::Owned(trimmed.to_lowercase())
    } else {
        Cow::Borrowed(trimmed)
    }
}

/// Calls `f` with `s` normalized ([`normalize_email`]), without a heap allocation for short
/// ASCII input.
pub fn with_normalized<R>(s: &str, f: impl FnOnce(&str) -> R) -> R {
    let t = s.trim();
    let mut buf = [0u8; 256];
    if t.is_ascii() && t.len() <= buf.len() {
        let out = &mut buf[..t.len()];
        out.copy_from_slice(t.as_bytes());
        out.make_ascii_lowercase();
        // Lower-casing ASCII keeps it ASCII, hence valid UTF-8.
        match std::str::from_utf8(out) {
            Ok(l) => f(l),
            Err(_) => f(&t.to_lowercase()),
        }
    } else {
        f(&t.to_lowercase())
    }
}

/// The `local_domain` part of the guest UPN of `email`: `@` replaced by `_`, trimmed, case
/// kept (normalize first for a key).
pub fn guest_upn_local_part(email: &str) -> String {
    email.trim().replace('@', "_")
}

/// The guest UPN of `email` in `tenant_domain`: `local_domain#EXT#@tenant_domain`.
pub fn guest_upn(email: &str, tenant_domain: &str) -> String {
    format!("{}#EXT#@{tenant_domain}", guest_upn_local_part(email))
}

/// The separator of the guest UPN form, lower-cased.
const EXT_MARKER: &str = "#ext#@";

/// One thing an account is found by, normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key<'a> {
    /// An address (`mail`, `otherMails`, an identity, a UPN without the guest form).
    Address(Cow<'a, str>),
    /// The `local_domain` part of a guest UPN `local_domain#EXT#@tenant`.
    GuestUpn(Cow<'a, str>),
}

/// The key of a UPN: its `local_domain` part when it has the guest form, else the UPN as an
/// address.
pub fn upn_key(upn: &str) -> Key<'_> {
    let upn = normalized(upn);
    match upn.find(EXT_MARKER) {
        Some(at) => Key::GuestUpn(match upn {
            Cow::Borrowed(s) => Cow::Borrowed(&s[..at]),
            Cow::Owned(s) => Cow::Owned(s[..at].to_owned()),
        }),
        None => Key::Address(upn),
    }
}

/// Every key `user` is found by; empty keys are left out.
pub fn keys(user: &DirectoryUser) -> impl Iterator<Item = Key<'_>> {
    let addresses = user
        .mail
        .iter()
        .chain(&user.other_mails)
        .chain(
            user.identities
                .iter()
                .filter_map(|i| i.issuer_assigned_id.as_ref()),
        )
        .map(|a| Key::Address(normalized(a)));
    addresses
        .chain(user.user_principal_name.as_deref().map(upn_key))
        .filter(|k| match k {
            Key::Address(a) | Key::GuestUpn(a) => !a.is_empty(),
        })
}

/// Whether `user` holds `email` (in any case, with or without surrounding blanks).
pub fn holds_address(user: &DirectoryUser, email: &str) -> bool {
    let email = normalized(email);
    if email.is_empty() {
        return false;
    }
    let local = guest_upn_local_part(&email);
    keys(user).any(|key| match key {
        Key::Address(a) => a == email,
        Key::GuestUpn(l) => email.contains('@') && l == local,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::graph::ObjectIdentity;

    fn user() -> DirectoryUser {
        DirectoryUser {
            id: "1".into(),
            ..Default::default()
        }
    }

    // Moved from the Graph client's tests (same assertions).
    #[test]
    fn holds_email_is_case_insensitive_and_knows_the_guest_upn() {
        let user = DirectoryUser {
            id: "1".into(),
            user_principal_name: Some("Ana.Silva_Partner.example#EXT#@sim.onmicrosoft.com".into()),
            ..Default::default()
        };
        assert!(holds_address(&user, "ana.silva@partner.example"));
        assert!(!holds_address(&user, "ana@partner.example"));
        let member = DirectoryUser {
            id: "2".into(),
            other_mails: vec!["Bob@Vendor.example".into()],
            ..Default::default()
        };
        assert!(holds_address(&member, "bob@vendor.example"));
    }

    #[test]
    fn every_documented_property_holds_an_address() {
        let mut by_mail = user();
        by_mail.mail = Some("Ana@Partner.example".into());
        let mut by_other = user();
        by_other.other_mails = vec!["x@y.example".into(), "ana@partner.example".into()];
        let mut by_identity = user();
        by_identity.identities = vec![ObjectIdentity {
            sign_in_type: Some("emailAddress".into()),
            issuer: Some("partner.example".into()),
            issuer_assigned_id: Some("ANA@partner.example".into()),
        }];
        let mut by_upn = user();
        by_upn.user_principal_name = Some("ana@partner.example".into());
        for u in [&by_mail, &by_other, &by_identity, &by_upn] {
            assert!(holds_address(u, " ana@partner.example "), "{u:?}");
            assert!(!holds_address(u, "bob@partner.example"), "{u:?}");
        }
        assert!(!holds_address(&user(), ""));
    }

    // The fake compared with `eq_ignore_ascii_case`, so a non-ASCII capital did not match
    // its lower case; the spec says addresses are normalised by lower-casing.
    #[test]
    fn case_is_folded_beyond_ascii() {
        let mut u = user();
        u.mail = Some("Élodie@Partner.example".into());
        assert!(holds_address(&u, "élodie@partner.example"));
        assert_eq!(normalize_email(" ÉLODIE@X.example "), "élodie@x.example");
    }

    // The fake trimmed the address looked for but not the stored value.
    #[test]
    fn stored_values_are_trimmed_too() {
        let mut u = user();
        u.other_mails = vec![" ana@partner.example\n".into()];
        assert!(holds_address(&u, "ana@partner.example"));
    }

    // The client and the plan took any `#EXT#` as the guest form; the documented form is
    // `local_domain#EXT#@tenant` (the fake's reading). A UPN without `#EXT#@` is an address.
    #[test]
    fn the_guest_form_needs_ext_followed_by_the_tenant() {
        let mut u = user();
        u.user_principal_name = Some("ana_partner.example#EXT#".into());
        assert!(!holds_address(&u, "ana@partner.example"));
        assert_eq!(
            upn_key("Ana_Partner.example#ext#@T.onmicrosoft.com"),
            Key::GuestUpn(Cow::Borrowed("ana_partner.example"))
        );
        assert_eq!(
            upn_key("ana_partner.example#EXT#"),
            Key::Address(Cow::Borrowed("ana_partner.example#ext#"))
        );
    }

    #[test]
    fn guest_upn_form() {
        assert_eq!(
            guest_upn("o'brien@partner.example", "sim.onmicrosoft.com"),
            "o'brien_partner.example#EXT#@sim.onmicrosoft.com"
        );
        let mut u = user();
        u.user_principal_name = Some(guest_upn("Ana@Partner.example", "t.example"));
        assert!(holds_address(&u, "ana@partner.example"));
    }
}
