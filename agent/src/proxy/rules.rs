//! Kill rules prepared once at start: normalised prefixes, the answer's headers and
//! bodies ready to clone.

use super::headers::json_string;
use super::paths::normalize_prefix;
use super::*;

pub(super) const X_OPSPLANE_KILLSWITCH: HeaderName =
    HeaderName::from_static("x-opsplane-killswitch");

/// A [`KillRule`] prepared once at start: normalised prefixes, ready headers and bodies.
pub(super) struct CompiledRule {
    pub(super) name: String,
    pub(super) blocks: Vec<CompiledBlock>,
    pub(super) status: StatusCode,
    pub(super) retry_after: Option<HeaderValue>,
    pub(super) name_header: Option<HeaderValue>,
    pub(super) text_body: Bytes,
    pub(super) json_body: Bytes,
}

pub(super) struct CompiledBlock {
    pub(super) method: Option<Method>,
    pub(super) prefix: Vec<u8>,
}

impl CompiledRule {
    pub(super) fn new(rule: &KillRule) -> Self {
        let status = if rule.status.as_u16() < 200 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            rule.status
        };
        let json_body = format!(
            "{{\"error\":{{\"code\":\"KILLED\",\"message\":{},\"killswitch\":{}}}}}",
            json_string(&rule.body),
            json_string(&rule.name)
        );
        CompiledRule {
            name: rule.name.clone(),
            blocks: rule
                .blocks
                .iter()
                .map(|b| CompiledBlock {
                    method: b.method.clone(),
                    prefix: normalize_prefix(&b.path_prefix),
                })
                .collect(),
            status,
            retry_after: rule.retry_after_secs.map(HeaderValue::from),
            name_header: HeaderValue::from_str(&rule.name).ok(),
            text_body: Bytes::from(rule.body.clone()),
            json_body: Bytes::from(json_body),
        }
    }

    pub(super) fn response(&self, json: bool) -> Response<ProxyBody> {
        let (content_type, body) = if json {
            ("application/json", self.json_body.clone())
        } else {
            ("text/plain; charset=utf-8", self.text_body.clone())
        };
        let mut resp = Response::new(Either::Right(Full::new(body)));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::VARY, HeaderValue::from_static("Accept"));
        if let Some(v) = &self.name_header {
            h.insert(X_OPSPLANE_KILLSWITCH, v.clone());
        }
        if let Some(v) = &self.retry_after {
            h.insert(header::RETRY_AFTER, v.clone());
        }
        resp
    }
}
