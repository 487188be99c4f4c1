//! Helpers that encode a request's body: JSON merge patch for `extra`,
//! floats as the decimals a person wrote, and the check for what only one
//! provider keeps.

use serde_json::{Map, Value};

use crate::chat::ChatRequest;
use crate::error::Error;

/// Applies `patch` to `target` as a JSON merge patch (RFC 7386): objects
/// merge key by key, `null` removes a key, anything else replaces.
pub(super) fn merge_patch(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (k, v) in patch {
        match v {
            Value::Null => {
                target.remove(k);
            }
            Value::Object(p) => match target.get_mut(k) {
                Some(Value::Object(t)) => merge_patch(t, p),
                _ => {
                    let mut fresh = Map::new();
                    merge_patch(&mut fresh, p);
                    target.insert(k.clone(), Value::Object(fresh));
                }
            },
            other => {
                target.insert(k.clone(), other.clone());
            }
        }
    }
}

/// `x` as the decimal a person wrote: `0.2f32` is sent as `0.2`, not as the
/// `0.20000000298023224` its widening to `f64` gives. Not a number: `null`.
pub(super) fn decimal(x: f32) -> Value {
    // f32's Display is the shortest text that reads back as the same f32.
    x.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// A request that continues a stored response fails on a provider that
/// keeps none: it would otherwise be answered without its history.
pub(super) fn no_previous_response(provider: &str, req: &ChatRequest) -> Result<(), Error> {
    match &req.previous_response_id {
        Some(_) => Err(Error::config(format!(
            "{provider}: keeps no responses to continue (previous_response_id is the Responses \
             API's); send the whole conversation"
        ))),
        None => Ok(()),
    }
}
