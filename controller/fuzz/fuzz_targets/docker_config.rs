//! Docker `config.json` / `.dockerconfigjson` parsing (`auths`, legacy `.dockercfg`, `auth`
//! base64, tokens) for a few registry hosts: no panic, and no credential helper is run.
#![no_main]

use portcullis_oci::RegistryAuth;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for host in ["ghcr.io", "docker.io", "127.0.0.1:5000", "registry.example.com"] {
        if let Ok(RegistryAuth::Basic { username, .. }) =
            RegistryAuth::from_docker_config_json(data, host)
        {
            // Debug output never shows the password.
            let shown = format!("{:?}", RegistryAuth::basic(username, "hunter2-secret"));
            assert!(!shown.contains("hunter2-secret"), "{shown}");
        }
    }
});
