//! TLS towards a backend: a Gateway API `BackendTLSPolicy` targeting it, else an Envoy Gateway
//! `Backend`'s own `spec.tls`. Both name the CA the backend's certificate must chain to and the
//! host it must name; verification is never skipped.

use super::validate::backend_refs::RefError;
use crate::egress::EgressPolicy;
use crate::ir::TrustedCa;
use crate::resources::{
    BackendTlsPolicySpec, Object, ObjectRef, Resources, SecretKeyError, EG_GROUP,
};

/// What the upstream TLS context carries: SNI (also the SAN the certificate must name) and the
/// trusted CA.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UpstreamTls {
    pub sni: String,
    pub ca: TrustedCa,
}

/// The backend a TLS setting may target.
pub(crate) struct Target<'a> {
    /// `""` for a Service, [`EG_GROUP`] for a Backend.
    pub group: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    /// The Service port's name (`sectionName` of a BackendTLSPolicy), when there is one.
    pub port_name: Option<&'a str>,
}

/// TLS for `target`, or `None` when nothing asks for it. `Err` when a policy applies but cannot
/// be honoured: the backend is then unusable (fail closed), never reached in plaintext.
pub(crate) fn for_backend(
    res: &Resources,
    egress: &EgressPolicy,
    target: &Target<'_>,
) -> Result<Option<UpstreamTls>, RefError> {
    if let Some(p) = policy_for(res, target) {
        return from_policy(res, egress, p).map(Some);
    }
    if target.group == EG_GROUP && target.kind == "Backend" {
        let key = (target.namespace.to_string(), target.name.to_string());
        let backend = res.backends.get(&key);
        if let Some((backend, tls)) = backend.and_then(|b| Some((b, b.spec.tls.as_ref()?))) {
            let what = format!("Backend {}/{} tls", target.namespace, target.name);
            let unknown: Vec<&str> = backend
                .unsupported
                .iter()
                .filter(|f| f.starts_with("tls."))
                .map(String::as_str)
                .collect();
            if !unknown.is_empty() {
                return Err((
                    "InvalidBackendTLS",
                    format!("{what}: unsupported fields {}", unknown.join(", ")),
                ));
            }
            if tls.insecure_skip_verify == Some(true) {
                return Err((
                    "InvalidBackendTLS",
                    format!("{what}: insecureSkipVerify is refused (the backend's certificate is always verified)"),
                ));
            }
            let ca = trusted_ca(
                res,
                egress,
                target.namespace,
                &what,
                &tls.ca_certificate_refs,
                tls.well_known_ca_certificates.as_deref(),
            )?;
            let Some(ca) = ca else {
                // `tls` with neither CA option: Envoy Gateway's default is the system bundle.
                return Ok(tls.sni.clone().map(|sni| UpstreamTls {
                    sni,
                    ca: egress.system_trust(),
                }));
            };
            let sni = tls.sni.clone().ok_or_else(|| {
                (
                    "InvalidBackendTLS",
                    format!("{what}: sni is required to verify the certificate's name"),
                )
            })?;
            return Ok(Some(UpstreamTls { sni, ca }));
        }
    }
    Ok(None)
}

/// The BackendTLSPolicy for `target`: one naming its port (`sectionName`) wins over one naming
/// the whole backend; among equals the oldest, then the first by name (Gateway API's conflict
/// rule for policies).
fn policy_for<'a>(
    res: &'a Resources,
    target: &Target<'_>,
) -> Option<&'a Object<BackendTlsPolicySpec>> {
    let mut best: Option<(bool, &Object<BackendTlsPolicySpec>)> = None;
    for ((ns, _), p) in &res.backend_tls_policies {
        if ns != target.namespace {
            continue;
        }
        let mut specific = None;
        for t in &p.spec.target_refs {
            if t.group != target.group || t.kind != target.kind || t.name != target.name {
                continue;
            }
            match (&t.section_name, target.port_name) {
                (None, _) => specific = Some(specific.unwrap_or(false)),
                (Some(s), Some(port)) if s == port => specific = Some(true),
                _ => {}
            }
        }
        let Some(specific) = specific else { continue };
        let better = match best {
            None => true,
            Some((bs, bp)) => (specific && !bs) || (specific == bs && older(p, bp)),
        };
        if better {
            best = Some((specific, p));
        }
    }
    best.map(|(_, p)| p)
}

fn older(a: &Object<BackendTlsPolicySpec>, b: &Object<BackendTlsPolicySpec>) -> bool {
    let ka = (
        a.meta.creation_timestamp.as_deref().unwrap_or("~"),
        &a.meta.name,
    );
    let kb = (
        b.meta.creation_timestamp.as_deref().unwrap_or("~"),
        &b.meta.name,
    );
    ka < kb
}

fn from_policy(
    res: &Resources,
    egress: &EgressPolicy,
    p: &Object<BackendTlsPolicySpec>,
) -> Result<UpstreamTls, RefError> {
    let ns = p.meta.namespace.as_deref().unwrap_or("default");
    let what = format!("BackendTLSPolicy {ns}/{}", p.meta.name);
    let v = &p.spec.validation;
    if !p.unsupported.is_empty() || !p.spec.options.is_empty() {
        let mut fields = p.unsupported.clone();
        fields.extend(p.spec.options.keys().map(|k| format!("options.{k}")));
        return Err((
            "InvalidBackendTLS",
            format!("{what}: unsupported fields {}", fields.join(", ")),
        ));
    }
    if !v.subject_alt_names.is_empty() {
        return Err((
            "InvalidBackendTLS",
            format!("{what}: validation.subjectAltNames is not supported (the certificate must name validation.hostname)"),
        ));
    }
    if v.hostname.is_empty() {
        return Err((
            "InvalidBackendTLS",
            format!("{what}: validation.hostname is required"),
        ));
    }
    let ca = trusted_ca(
        res,
        egress,
        ns,
        &what,
        &v.ca_certificate_refs,
        v.well_known_ca_certificates.as_deref(),
    )?
    .ok_or_else(|| {
        (
            "InvalidBackendTLS",
            format!("{what}: validation needs caCertificateRefs or wellKnownCACertificates"),
        )
    })?;
    Ok(UpstreamTls {
        sni: v.hostname.clone(),
        ca,
    })
}

/// `caCertificateRefs` (ConfigMaps or Secrets with `ca.crt`, in `ns`) or
/// `wellKnownCACertificates: System`; `None` when neither is set.
fn trusted_ca(
    res: &Resources,
    egress: &EgressPolicy,
    ns: &str,
    what: &str,
    refs: &[ObjectRef],
    well_known: Option<&str>,
) -> Result<Option<TrustedCa>, RefError> {
    match (refs.is_empty(), well_known) {
        (false, Some(_)) => Err((
            "InvalidBackendTLS",
            format!("{what}: caCertificateRefs and wellKnownCACertificates are mutually exclusive"),
        )),
        (true, Some("System")) => Ok(Some(egress.system_trust())),
        (true, Some(other)) => Err((
            "InvalidBackendTLS",
            format!("{what}: wellKnownCACertificates {other:?} is not supported (only System)"),
        )),
        (true, None) => Ok(None),
        (false, None) => {
            let mut pem = String::new();
            for r in refs {
                pem.push_str(&ca_bundle(res, ns, what, r)?);
                if !pem.ends_with('\n') {
                    pem.push('\n');
                }
            }
            Ok(Some(TrustedCa::Pem(pem)))
        }
    }
}

/// `ca.crt` of a ConfigMap or Secret in the policy's own namespace (the spec allows no other).
fn ca_bundle(res: &Resources, ns: &str, what: &str, r: &ObjectRef) -> Result<String, RefError> {
    let group = r.group.as_deref().unwrap_or("");
    let kind = r.kind.as_deref().unwrap_or("ConfigMap");
    let name = &r.name;
    if r.namespace.as_deref().is_some_and(|n| n != ns) {
        return Err((
            "InvalidCACertificateRef",
            format!("{what}: caCertificateRef {kind} {name} must be in namespace {ns}"),
        ));
    }
    let key = (ns.to_string(), name.clone());
    let pem = match (group, kind) {
        ("", "ConfigMap") => res
            .config_maps
            .get(&key)
            .ok_or_else(|| {
                (
                    "InvalidCACertificateRef",
                    format!("{what}: ConfigMap {ns}/{name} not found"),
                )
            })?
            .spec
            .data
            .get("ca.crt")
            .cloned()
            .ok_or_else(|| {
                (
                    "InvalidCACertificateRef",
                    format!("{what}: ConfigMap {ns}/{name} has no key ca.crt"),
                )
            })?,
        ("", "Secret") => {
            let s = res.secrets.get(&key).ok_or_else(|| {
                (
                    "InvalidCACertificateRef",
                    format!("{what}: Secret {ns}/{name} not found"),
                )
            })?;
            s.spec.text("ca.crt").map_err(|e| {
                let why = match e {
                    SecretKeyError::Missing => "has no key ca.crt",
                    _ => "ca.crt is not base64 PEM text",
                };
                (
                    "InvalidCACertificateRef",
                    format!("{what}: Secret {ns}/{name} {why}"),
                )
            })?
        }
        _ => {
            return Err((
                "InvalidKind",
                format!("{what}: caCertificateRef kind {group}/{kind} is not supported; use ConfigMap or Secret"),
            ))
        }
    };
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err((
            "InvalidCACertificateRef",
            format!("{what}: {kind} {ns}/{name} ca.crt holds no PEM certificate"),
        ));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::parse_documents;

    fn res(yaml: &str) -> Resources {
        let (parsed, errs) = parse_documents("t.yaml", yaml);
        assert!(errs.is_empty(), "{errs:?}");
        Resources::from_parsed(parsed)
    }

    const CA: &str = "-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----\\n";

    fn svc<'a>(port_name: Option<&'a str>) -> Target<'a> {
        Target {
            group: "",
            kind: "Service",
            namespace: "team",
            name: "idp",
            port_name,
        }
    }

    #[test]
    fn a_policy_on_the_port_wins_and_names_sni_and_ca() {
        let r = res(&format!(
            r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: ca, namespace: team}}
data: {{ca.crt: "{CA}"}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {{name: a-whole, namespace: team}}
spec:
  targetRefs: [{{group: "", kind: Service, name: idp}}]
  validation: {{wellKnownCACertificates: System, hostname: whole.example}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {{name: b-port, namespace: team}}
spec:
  targetRefs: [{{group: "", kind: Service, name: idp, sectionName: https}}]
  validation:
    caCertificateRefs: [{{group: "", kind: ConfigMap, name: ca}}]
    hostname: idp.example
"#
        ));
        let eg = EgressPolicy::permissive();
        let got = for_backend(&r, &eg, &svc(Some("https"))).expect("ok");
        assert_eq!(
            got,
            Some(UpstreamTls {
                sni: "idp.example".into(),
                ca: TrustedCa::Pem(CA.replace("\\n", "\n")),
            })
        );
        let other_port = for_backend(&r, &eg, &svc(Some("admin"))).expect("ok");
        assert_eq!(other_port.map(|t| t.sni).as_deref(), Some("whole.example"));
        // Another namespace's Service of the same name is not targeted.
        let mut elsewhere = svc(None);
        elsewhere.namespace = "other";
        assert_eq!(for_backend(&r, &eg, &elsewhere).expect("ok"), None);
    }

    #[test]
    fn unusable_settings_fail_closed_with_the_spec_reason() {
        let cases = [
            ("caCertificateRefs: [{group: \"\", kind: ConfigMap, name: missing}]\n    hostname: a.example", "InvalidCACertificateRef", "not found"),
            ("caCertificateRefs: [{group: example.com, kind: Bundle, name: x}]\n    hostname: a.example", "InvalidKind", "not supported"),
            ("wellKnownCACertificates: Custom\n    hostname: a.example", "InvalidBackendTLS", "only System"),
            ("hostname: a.example", "InvalidBackendTLS", "needs caCertificateRefs"),
            ("wellKnownCACertificates: System\n    hostname: a.example\n    subjectAltNames: [{type: Hostname, hostname: b.example}]", "InvalidBackendTLS", "subjectAltNames"),
        ];
        for (validation, reason, msg) in cases {
            let r = res(&format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {{name: p, namespace: team}}\nspec:\n  targetRefs: [{{group: \"\", kind: Service, name: idp}}]\n  validation:\n    {validation}\n"
            ));
            let err =
                for_backend(&r, &EgressPolicy::permissive(), &svc(None)).expect_err(validation);
            assert_eq!(err.0, reason, "{validation}: {}", err.1);
            assert!(err.1.contains(msg), "{validation}: {}", err.1);
            assert!(err.1.contains("BackendTLSPolicy team/p"), "{}", err.1);
        }
    }

    #[test]
    fn a_backend_tls_is_verified_and_never_skipped() {
        let r = res(&format!(
            r#"
apiVersion: v1
kind: Secret
metadata: {{name: ca, namespace: team}}
stringData: {{ca.crt: "{CA}"}}
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: Backend
metadata: {{name: good, namespace: team}}
spec:
  endpoints: [{{fqdn: {{hostname: idp.example, port: 443}}}}]
  tls: {{caCertificateRefs: [{{group: "", kind: Secret, name: ca}}], sni: idp.example}}
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: Backend
metadata: {{name: skip, namespace: team}}
spec:
  endpoints: [{{fqdn: {{hostname: idp.example, port: 443}}}}]
  tls: {{insecureSkipVerify: true}}
"#
        ));
        let be = |name| Target {
            group: EG_GROUP,
            kind: "Backend",
            namespace: "team",
            name,
            port_name: None,
        };
        let eg = EgressPolicy::permissive();
        let good = for_backend(&r, &eg, &be("good")).expect("ok").expect("tls");
        assert_eq!(good.sni, "idp.example");
        assert!(matches!(good.ca, TrustedCa::Pem(ref p) if p.contains("BEGIN CERTIFICATE")));
        let skip = for_backend(&r, &eg, &be("skip")).expect_err("refused");
        assert!(skip.1.contains("insecureSkipVerify"), "{}", skip.1);
    }
}
