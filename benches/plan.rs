//! Planning cost (design §11: "100k desired × 1M observed plans in well under a second").
//!
//! `cargo bench --bench plan` builds a tenant of 1,000,000 guests and a portal of 200,000
//! users, a users.yaml of 100,000 admins (half of them already present, a quarter with another
//! role) and times `plan::plan` a few times. Prints the timings; asserts nothing about speed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use guestops::desired::spec::{DesiredState, DesiredUser, Email, InvitationDefaults, Role};
use guestops::reconcile::plan::{Observed, Policy, plan};
use guestops::reconcile::state::State;
use guestops::remote::graph::DirectoryUser;
use guestops::remote::portal::PortalUser;

const DESIRED: usize = 100_000;
const GUESTS: usize = 1_000_000;
const PORTAL: usize = 200_000;

/// The system allocator, counting the bytes in use and their peak, so that the plan's own
/// memory (peak during `plan` minus what was in use before) is measured apart from its input.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` with the same arguments; the counters only
// observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let now = IN_USE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) };
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MIB: f64 = 1024.0 * 1024.0;

fn main() {
    let desired = DesiredState {
        users: (0..DESIRED)
            .map(|n| {
                let email = Email::new(&format!("admin{n:06}@partner{}.example", n % 13));
                let user = DesiredUser {
                    email: email.clone(),
                    name: format!("Admin {n:06}"),
                    role: Role::Administrator,
                    expires: None,
                    reason: None,
                    line: 0,
                };
                (email.normalized().to_owned(), user)
            })
            .collect::<BTreeMap<_, _>>(),
        invitation: InvitationDefaults::default(),
    };
    // Every other desired admin already has a guest; the rest of the tenant is unrelated.
    let guests: Vec<DirectoryUser> = (0..GUESTS)
        .map(|n| {
            let mail = if n < DESIRED && n % 2 == 0 {
                format!("admin{n:06}@partner{}.example", n % 13)
            } else {
                format!("guest{n:07}@supplier{}.example", n % 17)
            };
            DirectoryUser {
                id: format!("{n:08x}-0000-4000-8000-000000000000"),
                mail: Some(mail.clone()),
                other_mails: vec![mail.clone()],
                user_principal_name: Some(format!(
                    "{}#EXT#@tenant.onmicrosoft.com",
                    mail.replace('@', "_")
                )),
                user_type: Some("Guest".into()),
                external_user_state: Some("Accepted".into()),
                ..DirectoryUser::default()
            }
        })
        .collect();
    let portal_users: Vec<PortalUser> = (0..PORTAL)
        .map(|n| {
            let (email, role) = if n < DESIRED && n % 2 == 0 {
                let role = if n % 4 == 0 {
                    Role::Viewer
                } else {
                    Role::Administrator
                };
                (format!("admin{n:06}@partner{}.example", n % 13), role)
            } else {
                (format!("viewer{n:07}@customer.example"), Role::Viewer)
            };
            PortalUser {
                id: format!("p{n:08}"),
                name: format!("Admin {n:06}"),
                email,
                role_code: Some(1),
                role: Some(role),
            }
        })
        .collect();
    let observed = Observed {
        guests,
        lookups: Vec::new(),
        deleted: Vec::new(),
        portal_users,
    };
    let state = State::default();
    let policy = Policy::default();
    let now = chrono::Utc::now();

    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "plan: {DESIRED} desired × {GUESTS} guests × {PORTAL} portal users"
    );
    let _ = writeln!(
        out,
        "  input in memory: {:.0} MiB",
        IN_USE.load(Ordering::Relaxed) as f64 / MIB
    );
    for round in 1..=3 {
        let before = IN_USE.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let start = Instant::now();
        let result = plan(&desired, &observed, &state, &policy, now);
        let elapsed = start.elapsed();
        let peak = PEAK.load(Ordering::Relaxed) - before;
        let _ = writeln!(
            out,
            "  round {round}: {:>8.1} ms, {} changes, plan's peak memory {:.0} MiB (the plan returned included)",
            elapsed.as_secs_f64() * 1000.0,
            result.changes.len(),
            peak as f64 / MIB
        );
    }
}
