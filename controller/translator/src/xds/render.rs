//! `portcullis translate` output: xDS resources as proto3 JSON (decoded through the Envoy
//! descriptors compiled by build.rs) and statuses, in one deterministic document.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::{json, Map, Value};

use super::snapshot::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, SECRET_TYPE};
use crate::TranslateOutput;

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Json,
    Yaml,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("loading Envoy descriptors: {0}")]
    Descriptors(String),
    #[error("unknown resource type {0}")]
    UnknownType(String),
    #[error("decoding {type_url} {name}: {reason}")]
    Decode {
        type_url: String,
        name: String,
        reason: String,
    },
    #[error("serializing output: {0}")]
    Serialize(String),
}

pub(super) fn pool() -> Result<&'static DescriptorPool, RenderError> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(DESCRIPTORS).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| RenderError::Descriptors(e.clone()))
}

/// One resource as proto3 JSON (`@type` included, snake_case field names as in Envoy's docs).
pub fn resource_json(
    type_url: &str,
    name: &str,
    value: &prost_types::Any,
) -> Result<Value, RenderError> {
    let pool = pool()?;
    let full = type_url.rsplit('/').next().unwrap_or(type_url);
    let desc = pool
        .get_message_by_name(full)
        .ok_or_else(|| RenderError::UnknownType(type_url.to_string()))?;
    let decode_err = |e: String| RenderError::Decode {
        type_url: type_url.into(),
        name: name.into(),
        reason: e,
    };
    let (bytes, enablers) = if type_url == ROUTE_TYPE {
        strip_empty_filter_configs(&value.value).map_err(decode_err)?
    } else {
        (value.value.clone(), vec![])
    };
    let mut v = message_json(desc, &bytes).map_err(decode_err)?;
    for (vh, r, key) in enablers {
        enable_filter(&mut v, &format!("/virtual_hosts/{vh}/routes/{r}"), &key);
    }
    if let Value::Object(o) = &mut v {
        o.insert("@type".into(), json!(type_url));
    }
    Ok(v)
}

/// `bytes` decoded as the message `desc`, as proto3 JSON with Envoy's field names, redacted.
fn message_json(desc: prost_reflect::MessageDescriptor, bytes: &[u8]) -> Result<Value, String> {
    let msg = DynamicMessage::decode(desc, bytes).map_err(|e| e.to_string())?;
    let opts = SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false);
    let mut v = msg
        .serialize_with_options(serde_json::value::Serializer, &opts)
        .map_err(|e| e.to_string())?;
    redact(&mut v);
    Ok(v)
}

/// Prints the filter enabler `key` of the route at JSON pointer `route` as `config: {}`.
fn enable_filter(v: &mut Value, route: &str, key: &str) {
    if let Some(Value::Object(fc)) = v.pointer_mut(&format!(
        "{route}/typed_per_filter_config/{}",
        key.replace('~', "~0").replace('/', "~1")
    )) {
        fc.insert("config".into(), json!({}));
    }
}

/// Proto3 JSON cannot express an `Any` without a type, yet a route-level FilterConfig whose
/// `config` is an empty Any is how a disabled-by-default filter is turned on (as Envoy Gateway
/// does). Drop those before decoding and return where they were, to print them as `config: {}`.
/// `(virtual host index, route index, filter name)` of a route-level filter enabler.
type Enabler = (usize, usize, String);

fn strip_empty_filter_configs(bytes: &[u8]) -> Result<(Vec<u8>, Vec<Enabler>), String> {
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    use prost::Message;
    let mut rc = RouteConfiguration::decode(bytes).map_err(|e| e.to_string())?;
    let mut found = Vec::new();
    for (vi, vh) in rc.virtual_hosts.iter_mut().enumerate() {
        for (ri, key) in strip_virtual_host(vh)? {
            found.push((vi, ri, key));
        }
    }
    Ok((rc.encode_to_vec(), found))
}

/// [`strip_empty_filter_configs`] for one virtual host: `(route index, filter name)` of each
/// enabler removed.
fn strip_virtual_host(
    vh: &mut envoy_types::pb::envoy::config::route::v3::VirtualHost,
) -> Result<Vec<(usize, String)>, String> {
    use envoy_types::pb::envoy::config::route::v3::FilterConfig;
    use prost::{Message, Name};
    let mut found = Vec::new();
    for (ri, r) in vh.routes.iter_mut().enumerate() {
        for (key, any) in r.typed_per_filter_config.iter_mut() {
            if any.type_url != FilterConfig::type_url() {
                continue;
            }
            let mut fc = FilterConfig::decode(any.value.as_slice()).map_err(|e| e.to_string())?;
            if fc.config.as_ref().is_some_and(|c| c.type_url.is_empty()) {
                fc.config = None;
                any.value = fc.encode_to_vec();
                found.push((ri, key.clone()));
            }
        }
    }
    Ok(found)
}

/// A RouteConfiguration written one virtual host at a time: at 10,000 routes one Gateway's
/// route table decoded whole (DynamicMessage and JSON tree) was most of `translate`'s peak.
/// The same JSON as [`resource_json`], keys in the same (sorted) order.
fn route_error(name: &str, reason: String) -> RenderError {
    RenderError::Decode {
        type_url: ROUTE_TYPE.into(),
        name: name.into(),
        reason,
    }
}

struct RouteConfigJson<'a> {
    name: &'a str,
    any: &'a prost_types::Any,
}

impl serde::Serialize for RouteConfigJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
        use prost::Message;
        use serde::ser::{Error, SerializeMap};
        let err = |e: String| S::Error::custom(route_error(self.name, e));
        let pool = pool().map_err(S::Error::custom)?;
        let desc = |full: &str| {
            pool.get_message_by_name(full)
                .ok_or_else(|| S::Error::custom(RenderError::UnknownType(full.to_string())))
        };
        let rc_desc = desc("envoy.config.route.v3.RouteConfiguration")?;
        let vh_desc = desc("envoy.config.route.v3.VirtualHost")?;
        let mut rc = RouteConfiguration::decode(self.any.value.as_slice())
            .map_err(|e| err(e.to_string()))?;
        let mut vhosts = std::mem::take(&mut rc.virtual_hosts);
        let enablers = vhosts
            .iter_mut()
            .map(strip_virtual_host)
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        let mut head = message_json(rc_desc, &rc.encode_to_vec()).map_err(err)?;
        if let Value::Object(o) = &mut head {
            o.insert("@type".into(), json!(ROUTE_TYPE));
        }
        let Value::Object(head) = head else {
            return Err(err("not a message".into()));
        };
        let mut m = s.serialize_map(Some(head.len() + usize::from(!vhosts.is_empty())))?;
        let mut vhosts_written = vhosts.is_empty();
        let write_vhosts = |m: &mut S::SerializeMap| {
            m.serialize_entry(
                "virtual_hosts",
                &VirtualHostsJson {
                    vhosts: &vhosts,
                    enablers: &enablers,
                    desc: &vh_desc,
                    name: self.name,
                },
            )
        };
        for (k, v) in &head {
            if !vhosts_written && k.as_str() > "virtual_hosts" {
                write_vhosts(&mut m)?;
                vhosts_written = true;
            }
            m.serialize_entry(k, v)?;
        }
        if !vhosts_written {
            write_vhosts(&mut m)?;
        }
        m.end()
    }
}

struct VirtualHostsJson<'a> {
    /// Already stripped of their filter enablers ([`strip_virtual_host`]), which are
    /// `enablers[i]` for `vhosts[i]`.
    vhosts: &'a [envoy_types::pb::envoy::config::route::v3::VirtualHost],
    enablers: &'a [Vec<(usize, String)>],
    desc: &'a prost_reflect::MessageDescriptor,
    name: &'a str,
}

impl serde::Serialize for VirtualHostsJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use prost::Message;
        use serde::ser::{Error, SerializeSeq};
        let mut seq = s.serialize_seq(Some(self.vhosts.len()))?;
        for (vh, enablers) in self.vhosts.iter().zip(self.enablers) {
            let mut v = message_json(self.desc.clone(), &vh.encode_to_vec())
                .map_err(|e| S::Error::custom(route_error(self.name, e)))?;
            for (ri, key) in enablers {
                enable_filter(&mut v, &format!("/routes/{ri}"), key);
            }
            seq.serialize_element(&v)?;
        }
        seq.end()
    }
}

/// Private keys never appear in printed output. A key given as a file path (read by Envoy
/// itself) is no secret and is printed as is.
fn redact(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for (k, val) in o.iter_mut() {
                if k == "private_key" {
                    let path_only = val
                        .as_object()
                        .is_some_and(|p| p.len() == 1 && p.contains_key("filename"));
                    if !path_only {
                        *val = json!({ "inline_string": "[redacted]" });
                    }
                } else if k == "configuration" || k == "filter_config" {
                    // Wasm plugin `configuration` and dynamic-module `filter_config` carry the
                    // same filter JSON.
                    redact_plugin_config(val);
                } else {
                    redact(val);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(redact),
        _ => {}
    }
}

/// OIDC client and cookie secrets inside a filter's JSON configuration (wasm or dynamic module).
fn redact_plugin_config(v: &mut Value) {
    let Some(Value::String(text)) = v.get_mut("value") else {
        return;
    };
    let Ok(Value::Object(mut cfg)) = serde_json::from_str::<Value>(text) else {
        return;
    };
    let mut changed = false;
    if let Some(s) = cfg.get_mut("client_secret") {
        *s = json!("[redacted]");
        changed = true;
    }
    if let Some(Value::Object(c)) = cfg.get_mut("cookie") {
        if let Some(s) = c.get_mut("secret") {
            *s = json!("[redacted]");
            changed = true;
        }
    }
    if changed {
        *text = Value::Object(cfg).to_string();
    }
}

fn section(type_url: &str) -> String {
    match type_url {
        LISTENER_TYPE => "listeners".into(),
        ROUTE_TYPE => "routes".into(),
        CLUSTER_TYPE => "clusters".into(),
        ENDPOINT_TYPE => "endpoints".into(),
        SECRET_TYPE => "secrets".into(),
        other => other.to_string(),
    }
}

/// The whole output document: `{"xds": {node: {listeners, routes, clusters, endpoints}}, "resources": [...]}`.
pub fn output_value(out: &TranslateOutput) -> Result<Value, RenderError> {
    let mut xds = Map::new();
    for (node, res) in &out.xds {
        let mut per = Map::new();
        for (type_url, items) in &res.by_type {
            let list: Result<Vec<Value>, RenderError> = items
                .iter()
                .map(|(name, any)| resource_json(type_url, name, any))
                .collect();
            per.insert(section(type_url), Value::Array(list?));
        }
        xds.insert(node.clone(), Value::Object(per));
    }
    let resources =
        serde_json::to_value(&out.statuses).map_err(|e| RenderError::Serialize(e.to_string()))?;
    Ok(json!({ "xds": xds, "resources": resources }))
}

/// [`output_value`] as a lazy `Serialize`: one resource is turned into JSON at a time and written
/// out, so the whole document never exists in memory (at 10,000 routes the document was 80% of
/// `translate`'s peak). Same keys, same order (sorted, as `serde_json::Map` sorts them).
struct OutputDoc<'a>(&'a TranslateOutput);
struct XdsSection<'a>(&'a TranslateOutput);
struct NodeSections<'a>(&'a super::snapshot::XdsResources);
struct ResourceList<'a> {
    type_url: &'a str,
    items: &'a BTreeMap<String, std::sync::Arc<prost_types::Any>>,
}
struct Statuses<'a>(&'a [crate::status::ResourceStatus]);

impl serde::Serialize for OutputDoc<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("resources", &Statuses(&self.0.statuses))?;
        m.serialize_entry("xds", &XdsSection(self.0))?;
        m.end()
    }
}

impl serde::Serialize for Statuses<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeSeq};
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for status in self.0 {
            // Through a Value, per status: its keys come out sorted, as in the whole document.
            let v = serde_json::to_value(status).map_err(S::Error::custom)?;
            seq.serialize_element(&v)?;
        }
        seq.end()
    }
}

impl serde::Serialize for XdsSection<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut nodes: Vec<(&String, &super::snapshot::XdsResources)> =
            self.0.xds.iter().map(|(n, r)| (n, &**r)).collect();
        nodes.sort_by(|a, b| a.0.cmp(b.0));
        let mut m = s.serialize_map(Some(nodes.len()))?;
        for (node, res) in nodes {
            m.serialize_entry(node, &NodeSections(res))?;
        }
        m.end()
    }
}

impl serde::Serialize for NodeSections<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut sections: Vec<(String, ResourceList)> = self
            .0
            .by_type
            .iter()
            .map(|(type_url, items)| (section(type_url), ResourceList { type_url, items }))
            .collect();
        sections.sort_by(|a, b| a.0.cmp(&b.0));
        let mut m = s.serialize_map(Some(sections.len()))?;
        for (name, list) in &sections {
            m.serialize_entry(name, list)?;
        }
        m.end()
    }
}

impl serde::Serialize for ResourceList<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeSeq};
        let mut seq = s.serialize_seq(Some(self.items.len()))?;
        for (name, any) in self.items {
            if self.type_url == ROUTE_TYPE {
                seq.serialize_element(&RouteConfigJson { name, any })?;
                continue;
            }
            let v = resource_json(self.type_url, name, any).map_err(S::Error::custom)?;
            seq.serialize_element(&v)?;
        }
        seq.end()
    }
}

/// Writes the output document to `w` as pretty JSON (with a final newline) or YAML, resource by
/// resource. Byte-identical to [`try_render_output`].
pub fn write_output(
    out: &TranslateOutput,
    format: OutputFormat,
    w: &mut impl std::io::Write,
) -> Result<(), RenderError> {
    // Descriptor problems surface as the typed error, not as a serializer message.
    pool()?;
    let err = |e: String| RenderError::Serialize(e);
    match format {
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut *w, &OutputDoc(out))
                .map_err(|e| err(e.to_string()))?;
            w.write_all(b"\n").map_err(|e| err(e.to_string()))
        }
        OutputFormat::Yaml => {
            serde_yaml::to_writer(&mut *w, &OutputDoc(out)).map_err(|e| err(e.to_string()))
        }
    }
}

/// Renders [`output_value`] as pretty JSON or YAML. Byte-identical for the same input. A
/// rendering failure (a bug: our own protos failed to decode) yields an `{"error": ...}` document.
pub fn render_output(out: &TranslateOutput, format: OutputFormat) -> String {
    try_render_output(out, format).unwrap_or_else(|e| {
        let v = json!({ "error": e.to_string() });
        match format {
            OutputFormat::Json => format!("{v}\n"),
            OutputFormat::Yaml => {
                serde_yaml::to_string(&v).unwrap_or_else(|_| format!("error: {e}\n"))
            }
        }
    })
}

/// Like [`render_output`], with the error.
pub fn try_render_output(
    out: &TranslateOutput,
    format: OutputFormat,
) -> Result<String, RenderError> {
    let mut buf = Vec::new();
    write_output(out, format, &mut buf)?;
    String::from_utf8(buf).map_err(|e| RenderError::Serialize(e.to_string()))
}
