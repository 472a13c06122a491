//! The one request and response every protocol decodes to and encodes from, and the names the
//! request path labels them with (protocol, traffic variant).

use serde::Serialize;

use crate::tensor::Tensor;

/// A decoded inference request, whatever protocol it came in on.
#[derive(Debug, Default)]
pub struct InferRequest {
    pub model: String,
    /// Explicit version from the URL or request; bypasses the traffic policy.
    pub version: Option<String>,
    /// Client's request id, echoed back.
    pub id: Option<String>,
    pub inputs: Vec<Tensor>,
    /// `inputs[i]`'s data as the client's own JSON text, where it came as a flat array of
    /// numbers on one line (v2 JSON): the prediction log copies it instead of formatting every
    /// value again. Empty, or `None` for an input, where there is no such text.
    pub inputs_json: Vec<Option<Box<str>>>,
    /// Outputs the client asked for; `None` means all of them.
    pub outputs: Option<Vec<String>>,
    /// The wire protocol, for metrics.
    pub protocol: Protocol,
    /// Where a sticky traffic split finds its key.
    pub keys: RequestKeys,
}

/// Headers and string request parameters, looked up by the policy's sticky key name.
#[derive(Debug, Default)]
pub struct RequestKeys {
    pub headers: http::HeaderMap,
    pub parameters: Vec<(String, String)>,
}

impl RequestKeys {
    /// The string-valued entries of a v2 `parameters` object.
    pub fn from_json_parameters(
        parameters: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> RequestKeys {
        RequestKeys {
            headers: http::HeaderMap::new(),
            parameters: parameters
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect(),
        }
    }

    /// The header of that name, else the request parameter of that name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .or_else(|| {
                self.parameters
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.as_str())
            })
    }
}

/// The answer, ready for a protocol to encode.
#[derive(Debug)]
pub struct InferResponse {
    pub model: String,
    pub version: u64,
    /// Which side of the traffic split answered.
    pub variant: Variant,
    pub id: Option<String>,
    pub outputs: Vec<Tensor>,
}

/// Which wire protocol a request came in on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    #[default]
    V2Json,
    V2Binary,
    V1,
    Grpc,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::V2Json => "v2_json",
            Protocol::V2Binary => "v2_binary",
            Protocol::V1 => "v1",
            Protocol::Grpc => "grpc",
        }
    }
}

/// Which side of the split answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    Primary,
    Canary,
    /// The request named its version; the split was bypassed.
    Direct,
    Shadow,
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Primary => "primary",
            Variant::Canary => "canary",
            Variant::Direct => "direct",
            Variant::Shadow => "shadow",
        }
    }
}

/// FNV-1a then a SplitMix64 finaliser: fixed across processes and releases (replicas must agree
/// on where a key lands), and well spread in the low digits the split uses.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}
