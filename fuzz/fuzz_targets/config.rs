//! `config::load_from` on arbitrary TOML text.
//!
//! Any text either loads or is refused with at least one problem, never a panic. A loaded
//! configuration, printed by `render` (what `sandwarden config check` shows) and loaded again,
//! means the same thing: secrets are printed masked, so they are carried over by hand.

#![no_main]

use figment::Figment;
use figment::providers::{Format, Toml};
use libfuzzer_sys::fuzz_target;
use sandwarden::config::{load_from, render};

fuzz_target!(|text: &str| {
    let settings = match load_from(Figment::from(Toml::string(text))) {
        Ok(s) => s,
        Err(e) => {
            assert!(
                !e.problems.is_empty(),
                "an error names at least one problem"
            );
            assert!(e.problems.iter().all(|p| !p.message.is_empty()), "{e}");
            return;
        }
    };
    let rendered = render(&settings);
    let mut again = load_from(Figment::from(Toml::string(&rendered)))
        .unwrap_or_else(|e| panic!("rendered settings do not load: {e}\n{rendered}"));
    again.client_keys = settings.client_keys.clone();
    again.admin_token = settings.admin_token.clone();
    again.sentry_dsn = settings.sentry_dsn.clone();
    again.notify.webhook_secret = settings.notify.webhook_secret.clone();
    again.e2b.api_key = settings.e2b.api_key.clone();
    assert_eq!(again, settings, "render round trip\n{rendered}");
});
