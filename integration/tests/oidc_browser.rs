//! oidc filter in a real headless chromium: login through the provider's page, stay logged in
//! on reload, log out and be sent back to login. Screenshots of every step go to
//! `target/test-artifacts/oidc/`.

use portcullis_integration::browser::{self, Browser};
use portcullis_integration::oidc_env::{EnvOptions, OidcEnv};

#[test]
fn browser_login_reload_logout() {
    assert!(
        browser::available(),
        "chromium/chromedriver missing: run `bash scripts/setup.sh browser`"
    );
    let env = OidcEnv::start(EnvOptions {
        clients: vec!["browser-app".into()],
        ..EnvOptions::default()
    })
    .expect("environment");
    let issuer = env.provider.issuer();
    let mut b = Browser::start().expect("chromium");
    let shots = "oidc";

    // 1. A protected URL sends the browser to the provider's login page.
    let protected = env.url(0, "/dashboard?from=browser");
    b.goto(&protected).unwrap();
    let url = b
        .wait_url("provider login page", |u| {
            u.starts_with(&issuer) && u.contains("/interaction/")
        })
        .unwrap();
    b.find("input[name=login]").unwrap();
    b.screenshot(shots, "01-login-page").unwrap();
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
    b.screenshot(shots, "02-logged-in").unwrap();
    let cookies = b.cookie_names().unwrap();
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("portcullis-") && c.ends_with("-0")),
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
    b.screenshot(shots, "03-reloaded").unwrap();

    // 4. Log out: the provider confirms, then we are back at its login page.
    b.goto(&env.url(0, "/logout")).unwrap();
    b.wait_url("provider logout page", |u| u.starts_with(&issuer))
        .unwrap();
    b.find("#logout-yes").unwrap();
    b.screenshot(shots, "04-logout-confirm").unwrap();
    b.click("#logout-yes").unwrap();
    b.wait_url("back at the provider login", |u| {
        u.starts_with(&issuer) && u.contains("/interaction/")
    })
    .unwrap();
    b.find("input[name=login]").unwrap();
    b.screenshot(shots, "05-logged-out-login-page").unwrap();
    let cookies = b.cookie_names().unwrap();
    assert!(
        !cookies
            .iter()
            .any(|c| c.starts_with("portcullis-") && !c.ends_with("-flow")),
        "session gone: {cookies:?}"
    );
}
