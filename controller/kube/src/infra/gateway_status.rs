//! What only the fleet knows, added to the translator's status records: the Gateway's addresses
//! (from its fleet Service) and the GatewayClass condition for unsupported EnvoyProxy fields.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{fleet_name, UnsupportedParams, UNSUPPORTED_CONDITION};
use crate::snapshot::{ObjectKey, Snapshot};
use crate::status::{RecordMeta, StatusRecord};

/// Add a condition for unsupported EnvoyProxy fields to the GatewayClass records (creating the
/// record if the translator produced none). The same field manager owns GatewayClass
/// `status.conditions`, so this must go into the same record: a separate apply would drop the
/// translator's conditions.
pub fn add_param_conditions(records: &mut Vec<StatusRecord>, unsupported: &[UnsupportedParams]) {
    let mut by_class: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for u in unsupported {
        let e = by_class.entry(u.gateway_class.as_str()).or_default();
        for f in &u.fields {
            let item = format!("{}: {f}", u.envoy_proxy);
            if !e.contains(&item) {
                e.push(item);
            }
        }
    }
    for (class, fields) in by_class {
        let cond = json!({
            "type": UNSUPPORTED_CONDITION,
            "status": "True",
            "reason": "UnsupportedField",
            "message": format!("EnvoyProxy fields not supported by portcullis (ignored): {}", fields.join(", "))
        });
        let existing = records
            .iter_mut()
            .find(|r| r.kind == "GatewayClass" && r.metadata.name == class);
        match existing {
            Some(r) => {
                if !r.status.is_object() {
                    r.status = json!({});
                }
                match r.status.get_mut("conditions").and_then(Value::as_array_mut) {
                    Some(c) => {
                        c.retain(|x| {
                            x.get("type").and_then(Value::as_str) != Some(UNSUPPORTED_CONDITION)
                        });
                        c.push(cond);
                    }
                    None => r.status["conditions"] = json!([cond]),
                }
            }
            None => records.push(StatusRecord {
                api_version: "gateway.networking.k8s.io/v1".into(),
                kind: "GatewayClass".into(),
                metadata: RecordMeta {
                    namespace: None,
                    name: class.to_string(),
                },
                status: json!({"conditions": [cond]}),
            }),
        }
    }
}

/// Set each Gateway record's `status.addresses` from its fleet Service as the watch shows it:
/// LoadBalancer ingress IPs/hostnames, else the cluster IP of a ClusterIP Service. While there is
/// none (Service not created yet, LoadBalancer pending), a `Programmed=True` Gateway condition
/// becomes `False` with reason `AddressNotAssigned`, as Gateway API specifies, so
/// `kubectl wait --for=condition=Programmed` waits for a reachable Gateway.
pub fn add_gateway_addresses(records: &mut [StatusRecord], snapshot: &Snapshot) {
    for r in records.iter_mut().filter(|r| r.kind == "Gateway") {
        let Some(ns) = r.metadata.namespace.as_deref() else {
            continue;
        };
        let fleet = fleet_name(&r.metadata.name);
        let key = ObjectKey::new("", "Service", Some(ns), &fleet);
        let addrs = snapshot
            .get(&key)
            .map(service_addresses)
            .unwrap_or_default();
        if addrs.is_empty() {
            let why = match snapshot.get(&key) {
                None => format!("Waiting for the fleet Service {ns}/{fleet} to be created."),
                Some(_) => format!(
                    "The fleet Service {ns}/{fleet} has no address yet (LoadBalancer pending)."
                ),
            };
            address_not_assigned(&mut r.status, &why);
            continue;
        }
        if !r.status.is_object() {
            r.status = json!({});
        }
        r.status["addresses"] = Value::Array(addrs);
    }
}

/// Turn a `Programmed=True` Gateway condition into `False`/`AddressNotAssigned`.
fn address_not_assigned(status: &mut Value, message: &str) {
    let Some(conds) = status.get_mut("conditions").and_then(Value::as_array_mut) else {
        return;
    };
    for c in conds.iter_mut() {
        if c.get("type").and_then(Value::as_str) == Some("Programmed")
            && c.get("status").and_then(Value::as_str) == Some("True")
        {
            c["status"] = json!("False");
            c["reason"] = json!("AddressNotAssigned");
            c["message"] = json!(message);
        }
    }
}

fn service_addresses(svc: &Value) -> Vec<Value> {
    let mut addrs = Vec::new();
    for ing in svc
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(ip) = ing.get("ip").and_then(Value::as_str) {
            addrs.push(json!({"type": "IPAddress", "value": ip}));
        } else if let Some(h) = ing.get("hostname").and_then(Value::as_str) {
            addrs.push(json!({"type": "Hostname", "value": h}));
        }
    }
    if addrs.is_empty() && svc.pointer("/spec/type").and_then(Value::as_str) == Some("ClusterIP") {
        if let Some(ip) = svc
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .filter(|ip| *ip != "None")
        {
            addrs.push(json!({"type": "IPAddress", "value": ip}));
        }
    }
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gw_record() -> StatusRecord {
        StatusRecord {
            api_version: "gateway.networking.k8s.io/v1".into(),
            kind: "Gateway".into(),
            metadata: RecordMeta {
                namespace: Some("infra".into()),
                name: "web".into(),
            },
            status: json!({"conditions": [
                {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "ok"},
                {"type": "Programmed", "status": "True", "reason": "Programmed", "message": "Gateway is programmed."}
            ]}),
        }
    }

    fn programmed(r: &StatusRecord) -> (String, String) {
        let c = r.status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Programmed"))
            .expect("Programmed condition");
        (
            c["status"].as_str().unwrap_or_default().to_string(),
            c["reason"].as_str().unwrap_or_default().to_string(),
        )
    }

    fn svc(spec_type: &str, status: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "portcullis-web", "namespace": "infra"},
               "spec": {"type": spec_type, "clusterIP": "10.96.0.7"}, "status": status})
    }

    #[test]
    fn addresses_come_from_the_fleet_service() {
        let mut recs = vec![gw_record()];
        let pending = Snapshot::from_objects([svc("LoadBalancer", json!({"loadBalancer": {}}))]);
        add_gateway_addresses(&mut recs, &pending);
        assert!(
            recs[0].status.get("addresses").is_none(),
            "pending LoadBalancer: no address"
        );
        assert_eq!(
            programmed(&recs[0]),
            ("False".into(), "AddressNotAssigned".into())
        );
        let mut none_yet = vec![gw_record()];
        add_gateway_addresses(&mut none_yet, &Snapshot::from_objects([]));
        assert_eq!(
            programmed(&none_yet[0]),
            ("False".into(), "AddressNotAssigned".into())
        );

        let mut recs = vec![gw_record()];
        let ready = Snapshot::from_objects([svc(
            "LoadBalancer",
            json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}, {"hostname": "lb.example.com"}]}}),
        )]);
        add_gateway_addresses(&mut recs, &ready);
        assert_eq!(
            recs[0].status["addresses"],
            json!([{"type": "IPAddress", "value": "192.0.2.10"}, {"type": "Hostname", "value": "lb.example.com"}])
        );
        assert_eq!(programmed(&recs[0]), ("True".into(), "Programmed".into()));

        let mut recs = vec![gw_record()];
        add_gateway_addresses(
            &mut recs,
            &Snapshot::from_objects([svc("ClusterIP", json!({}))]),
        );
        assert_eq!(
            recs[0].status["addresses"],
            json!([{"type": "IPAddress", "value": "10.96.0.7"}])
        );
    }
}
