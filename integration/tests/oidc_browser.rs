//! oidc filter in a real headless chromium, on both runtimes (the proxy-wasm module and the
//! dynamic module): login through the provider's page, stay logged in on reload, log out and be
//! sent back to login. Screenshots of every step go to `target/test-artifacts/oidc/`
//! (`wasm-…` and `dynamic-…`).

use portcullis_integration::browser::{self, Browser};
use portcullis_integration::oidc_env::{EnvOptions, OidcEnv};
use portcullis_integration::on_both_runtimes;
use portcullis_integration::runtime::Runtime;

on_both_runtimes!(browser_login_reload_logout);

fn browser_login_reload_logout(rt: Runtime) {
    assert!(
        browser::available(),
        "chromium/chromedriver missing: run `bash scripts/setup.sh browser`"
    );
    let env = OidcEnv::start(EnvOptions {
        runtime: rt,
        clients: vec!["browser-app".into()],
        ..EnvOptions::default()
    })
    .expect("environment");
    let issuer = env.provider.issuer();
    let mut b = Browser::start().expect("chromium");
    // One folder for both runtimes, file names prefixed with the runtime.
    let shot = |b: &Browser, step: &str| {
        b.screenshot("oidc", &format!("{}-{step}", rt.name()))
            .unwrap()
    };

    // 1. A protected URL sends the browser to the provider's login page.
    let protected = env.url(0, "/dashboard?from=browser");
    b.goto(&protected).unwrap();
    let url = b
        .wait_url("provider login page", |u| {
            u.starts_with(&issuer) && u.contains("/interaction/")
        })
        .unwrap();
    b.find("input[name=login]").unwrap();
    shot(&b, "01-login-page");
    assert!(url.starts_with(&issuer));

    // 2. Log in and land back on the original URL; the upstream saw x-user-email.
    b.type_into("input[name=login]", "alice").unwrap();
    b.type_into("input[name=password]", "secret").unwrap();
    b.click("button[type=submit]").unwrap();
    let url = b
        .wait_url("back on the protected URL", |u| u == protected)
        .unwrap();
    assert_eq!(url, protected);
    let text = b.text().unwrap();
    assert!(
        text.contains("alice@example.com"),
        "upstream should see x-user-email: {text}"
    );
    assert!(text.contains("x-user-email"));
    shot(&b, "02-logged-in");
    let cookies = b.cookie_names().unwrap();
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("__Host-portcullis-") && c.ends_with("-0")),
        "session cookie: {cookies:?}"
    );

    // 3. Reload: still logged in, no trip to the provider.
    let logins = env.counter("portcullis_oidc_logins_total");
    b.goto(&protected).unwrap();
    assert_eq!(b.current_url().unwrap(), protected);
    assert!(b.text().unwrap().contains("alice@example.com"));
    assert_eq!(
        env.counter("portcullis_oidc_logins_total"),
        logins,
        "no new login on reload"
    );
    shot(&b, "03-reloaded");

    // 4. Log out: typed in the address bar it is refused (no same-origin proof), and the
    // page's button POSTs it; the provider confirms, then we are back at its login page.
    b.goto(&env.url(0, "/logout")).unwrap();
    b.click("button[type=submit]").unwrap();
    b.wait_url("provider logout page", |u| u.starts_with(&issuer))
        .unwrap();
    b.find("#logout-yes").unwrap();
    shot(&b, "04-logout-confirm");
    b.click("#logout-yes").unwrap();
    b.wait_url("back at the provider login", |u| {
        u.starts_with(&issuer) && u.contains("/interaction/")
    })
    .unwrap();
    b.find("input[name=login]").unwrap();
    shot(&b, "05-logged-out-login-page");
    let cookies = b.cookie_names().unwrap();
    assert!(
        !cookies
            .iter()
            .any(|c| c.starts_with("portcullis-") && !c.ends_with("-flow")),
        "session gone: {cookies:?}"
    );
}
