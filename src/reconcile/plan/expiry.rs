//! Access that ends soon: the desired users whose `expires` day ends within
//! `policy.expiryNoticeBefore` (the plan's notice `expiring`, a `status` column, the gauge
//! `guestops_access_expiring`, the notification `expiring`). Pure: `now` is passed in.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};

use crate::desired::spec::DesiredState;

/// A desired user whose access ends within the notice window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiringAccess {
    /// Normalized address.
    pub key: String,
    /// The address as written in `users.yaml`.
    pub email: String,
    /// The `expires` day: access ends at the end of it (UTC).
    pub expires: NaiveDate,
    /// When access ends: the next midnight UTC after `expires`.
    pub ends_at: DateTime<Utc>,
}

impl ExpiringAccess {
    /// Whole days left (rounded down; 0 on the last day).
    pub fn days_left(&self, now: DateTime<Utc>) -> i64 {
        self.ends_at.signed_duration_since(now).num_days().max(0)
    }

    /// The notice's stable text, e.g. "the access of bob@vendor.example ends with 2026-12-05
    /// (UTC), in 3 days: …".
    pub fn message(&self, now: DateTime<Utc>) -> String {
        let when = match self.days_left(now) {
            0 => "today".to_owned(),
            1 => "in 1 day".to_owned(),
            n => format!("in {n} days"),
        };
        format!(
            "the access of {} ends with {} (UTC), {when}: extend its `expires` in users.yaml to keep it, or let it lapse",
            self.email, self.expires
        )
    }
}

/// When access with `expires` ends: the midnight (UTC) after that day.
pub fn access_ends_at(expires: NaiveDate) -> DateTime<Utc> {
    let next = expires.succ_opt().unwrap_or(expires);
    next.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc()
}

/// The desired users whose access ends within `window` of `now` and has not ended yet, by
/// normalized address. `None` (`policy.expiryNoticeBefore: 0`): none.
pub fn expiring_access(
    desired: &DesiredState,
    now: DateTime<Utc>,
    window: Option<Duration>,
) -> Vec<ExpiringAccess> {
    let Some(window) = window else {
        return Vec::new();
    };
    let window = TimeDelta::from_std(window).unwrap_or(TimeDelta::MAX);
    desired
        .users
        .iter()
        .filter_map(|(key, user)| {
            let expires = user.expires?;
            let ends_at = access_ends_at(expires);
            let left = ends_at.signed_duration_since(now);
            (left > TimeDelta::zero() && left <= window).then(|| ExpiringAccess {
                key: key.clone(),
                email: user.email.as_str().to_owned(),
                expires,
                ends_at,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::spec::{self, SpecPolicy};

    fn desired() -> DesiredState {
        let text = "apiVersion: guestops/v1\nusers:\n  - email: a@x.example\n    name: A\n    expires: 2026-12-05\n  - email: b@x.example\n    name: B\n    expires: 2026-12-31\n  - email: c@x.example\n    name: C\n    expires: 2026-11-30\n  - email: d@x.example\n    name: D\n";
        spec::parse(text.as_bytes(), &SpecPolicy::default())
            .desired
            .expect("valid")
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn only_access_ending_within_the_window_and_not_ended_yet() {
        let now = at("2026-12-01T10:00:00Z");
        let week = Some(Duration::from_secs(7 * 86_400));
        let found = expiring_access(&desired(), now, week);
        let keys: Vec<&str> = found.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            ["a@x.example"],
            "b is too far, c has ended, d never ends"
        );
        assert_eq!(found[0].ends_at, at("2026-12-06T00:00:00Z"));
        assert_eq!(found[0].days_left(now), 4);
        assert!(
            found[0]
                .message(now)
                .contains("ends with 2026-12-05 (UTC), in 4 days")
        );
        assert!(expiring_access(&desired(), now, None).is_empty());
        // The last day counts; the next midnight does not.
        let last_day = at("2026-12-05T23:59:59Z");
        assert_eq!(
            expiring_access(&desired(), last_day, week)[0].days_left(last_day),
            0
        );
        assert!(
            expiring_access(&desired(), at("2026-12-06T00:00:00Z"), week)
                .iter()
                .all(|e| e.key != "a@x.example")
        );
    }
}
