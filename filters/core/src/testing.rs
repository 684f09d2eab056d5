//! An in-memory [`Host`] for native unit tests.

use crate::host::{Direction, Host, LogLevel, SharedDataError, SharedValue};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A local response sent by the filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct MemoryHost {
    pub request: Vec<(String, String)>,
    pub response: Vec<(String, String)>,
    pub local_response: Option<LocalResponse>,
    pub now: Option<SystemTime>,
    pub shared: HashMap<String, SharedValue>,
    pub counters: BTreeMap<String, u64>,
    pub logs: RefCell<Vec<(LogLevel, String)>>,
    /// Header-map calls made (reads and writes), to check what a filter costs a host.
    pub header_calls: std::cell::Cell<usize>,
}

impl MemoryHost {
    pub fn new() -> Self {
        Self::default()
    }

    /// A host with these request headers.
    pub fn with_request(headers: &[(&str, &str)]) -> Self {
        Self {
            request: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Self::default()
        }
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    /// Every value of a header, in order.
    pub fn values(&self, dir: Direction, name: &str) -> Vec<String> {
        self.map(dir)
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn map(&self, dir: Direction) -> &Vec<(String, String)> {
        match dir {
            Direction::Request => &self.request,
            Direction::Response => &self.response,
        }
    }

    fn map_mut(&mut self, dir: Direction) -> &mut Vec<(String, String)> {
        match dir {
            Direction::Request => &mut self.request,
            Direction::Response => &mut self.response,
        }
    }
}

impl Host for MemoryHost {
    fn header(&self, dir: Direction, name: &str) -> Option<String> {
        self.header_calls.set(self.header_calls.get() + 1);
        self.map(dir)
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    fn headers(&self, dir: Direction) -> Vec<(String, String)> {
        self.header_calls.set(self.header_calls.get() + 1);
        self.map(dir).clone()
    }

    fn set_header(&mut self, dir: Direction, name: &str, value: &str) {
        self.header_calls.set(self.header_calls.get() + 1);
        self.map_mut(dir).retain(|(k, _)| k != name);
        self.map_mut(dir)
            .push((name.to_string(), value.to_string()));
    }

    fn add_header(&mut self, dir: Direction, name: &str, value: &str) {
        self.header_calls.set(self.header_calls.get() + 1);
        self.map_mut(dir)
            .push((name.to_string(), value.to_string()));
    }

    fn remove_header(&mut self, dir: Direction, name: &str) {
        self.header_calls.set(self.header_calls.get() + 1);
        self.map_mut(dir).retain(|(k, _)| k != name);
    }

    fn send_local_response(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        self.local_response = Some(LocalResponse {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.to_vec(),
        });
    }

    fn now(&self) -> SystemTime {
        self.now
            .unwrap_or(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
    }

    fn shared_get(&self, key: &str) -> Option<SharedValue> {
        self.shared.get(key).cloned()
    }

    fn shared_set(
        &mut self,
        key: &str,
        data: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedDataError> {
        let current = self.shared.get(key).map(|v| v.cas).unwrap_or(0);
        if let Some(expected) = cas {
            if expected != 0 && expected != current {
                return Err(SharedDataError::CasMismatch);
            }
        }
        self.shared.insert(
            key.to_string(),
            SharedValue {
                data: data.to_vec(),
                cas: current + 1,
            },
        );
        Ok(())
    }

    fn counter_add(&mut self, name: &str, by: u64) {
        *self.counters.entry(name.to_string()).or_insert(0) += by;
    }

    fn log(&self, level: LogLevel, msg: &str) {
        self.logs.borrow_mut().push((level, msg.to_string()));
    }
}
