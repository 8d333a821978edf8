//! Seeding the emulators with a realistic tenant and portal (placeholder).
